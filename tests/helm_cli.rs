//! The chart under the Helm CLI users run: Helm v3 built from `tests/tools/helm/go.mod` (cached;
//! its default Kubernetes version is the client-go minor it is built with, so `kubeVersion`
//! constraints are checked as a real `helm template` would).
//!
//! Without a cluster: `lint --strict` and `template` of every values set in `tests/helm/values/`
//! (the objects equal the committed renders in `tests/helm/rendered/`, the standard labels on
//! each), refusal of bad values naming the field, and the kubeVersion constraint.
//! Against the API server `KUBECONFIG` names (envtest in `tests/run-all.sh`): install, upgrade
//! from cluster-wide to one namespace with leader election, and uninstall, which leaves the
//! CRDs and the objects in place.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use atlas_access_operator::api::AtlasOrgUser;
use common::cluster::{self, TEST_MANAGER, TestNamespace, wait_for};
use common::tools::go_tool;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde::Deserialize;
use serde_json::{Value, json};

const CHART: &str = "deploy/helm/atlas-access-operator";
const RELEASE_NAMESPACE: &str = "atlas-access-operator";

fn helm(args: &[&str]) -> Output {
    let helm = go_tool("helm");
    // A cache and config of the test's own: nothing from the developer's Helm set-up.
    let home = std::env::temp_dir().join(format!("aao-helm-{}", std::process::id()));
    Command::new(&helm)
        .args(args)
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", helm.display()))
}

fn ok(args: &[&str]) -> String {
    let out = helm(args);
    assert!(
        out.status.success(),
        "helm {}: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn values_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir("tests/helm/values")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    files
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text).map(|d| Value::deserialize(d).unwrap()).filter(|v| !v.is_null()).collect()
}

fn sorted_json(docs: Vec<Value>) -> Vec<String> {
    let mut out: Vec<String> = docs.iter().map(|d| serde_json::to_string(d).unwrap()).collect();
    out.sort();
    out
}

#[test]
fn lint_strict_and_template_every_values_set() {
    let version = ok(&["version", "--short"]);
    assert!(version.starts_with("v3."), "{version}");
    for file in values_files() {
        let f = file.to_str().unwrap();
        let case = file.file_stem().unwrap().to_str().unwrap();
        let lint = ok(&["lint", "--strict", CHART, "-f", f, "--namespace", RELEASE_NAMESPACE]);
        assert!(!lint.contains("[WARNING]") && !lint.contains("[ERROR]"), "{case}: {lint}");

        let rendered = ok(&["template", RELEASE_NAMESPACE, CHART, "-f", f, "--namespace", RELEASE_NAMESPACE]);
        let docs = documents(&rendered);
        assert!(docs.iter().any(|d| d["kind"] == "Deployment"), "{case}");
        for doc in &docs {
            let labels = &doc["metadata"]["labels"];
            let what = format!("{case}: {} {}", doc["kind"], doc["metadata"]["name"]);
            assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm", "{what}");
            assert_eq!(labels["helm.sh/chart"], "atlas-access-operator-0.1.0", "{what}");
            assert_eq!(labels["app.kubernetes.io/instance"], RELEASE_NAMESPACE, "{what}");
        }
        // The renders tests/deploy.rs checks are what the Helm CLI renders, object for object.
        let committed = std::fs::read_to_string(format!("tests/helm/rendered/{case}.yaml")).unwrap();
        assert_eq!(
            sorted_json(docs),
            sorted_json(documents(&committed)),
            "{case}: tests/helm/rendered/{case}.yaml differs from `helm template`: run deploy/render-manifests.sh"
        );
    }
}

#[test]
fn bad_values_are_refused_naming_the_field() {
    let cases: &[(&[&str], &str)] = &[
        (&["--set", "watch.namespace=Team_A"], "at '/watch/namespace': 'Team_A' does not match pattern"),
        (&["--set", "credentials.secretNamespace=a.b"], "at '/credentials/secretNamespace'"),
        (&["--set", "credentials.secretName=Bad_Name"], "at '/credentials/secretName'"),
        (
            &["--set", "atlasUrl=http://atlas-sim:8080"],
            "at '/atlasUrl': 'http://atlas-sim:8080' does not match pattern '^https://'",
        ),
        (&["--set", "atlasUrl=cloud.mongodb.com"], "at '/atlasUrl'"),
        (&["--set", "logFormat=text"], "at '/logFormat'"),
        (&["--set", "resyncInterval=5 minutes"], "at '/resyncInterval'"),
        (&["--set", "reconcileTimeout=0s"], "at '/reconcileTimeout'"),
        (&["--set", "indexRefreshInterval=1 minute"], "at '/indexRefreshInterval'"),
        (&["--set", "invitationWarning=7"], "at '/invitationWarning'"),
        (&["--set", "invitationsPerMinute=-1"], "at '/invitationsPerMinute'"),
        (&["--set", "unknownKey=true"], "unknownKey"),
        (
            &["--set", "credentials.create=true", "--set", "credentials.publicApiKey=k"],
            "credentials.secretName is required",
        ),
        (
            &["--set", "credentials.create=true", "--set", "credentials.secretName=s"],
            "needs publicApiKey/privateApiKey or clientId/clientSecret",
        ),
        (&["--set", "serviceAccount.create=false"], "serviceAccount.name is required"),
        (&["--set", "tenancy.tenantNamespaces[0]=Team_A"], "tenantNamespaces"),
        (&["--set-json", r#"tenancy.admissionPolicy.enabled="yes""#], "enabled"),
    ];
    for (args, message) in cases {
        let mut all = vec!["template", "x", CHART];
        all.extend_from_slice(args);
        let out = helm(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(message), "{args:?}: {stderr:?} lacks {message:?}");
    }
    // Plain http with the explicit insecure value (the simulator) is accepted.
    let rendered =
        ok(&["template", "x", CHART, "--set", "atlasUrl=http://atlas-sim:8080", "--set", "atlasInsecureHttp=true"]);
    assert!(rendered.contains("- --atlas-insecure-http"), "{rendered}");
}

#[test]
fn kube_version_constraint_is_checked() {
    let out = helm(&["template", "x", CHART, "--kube-version", "1.29.0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("chart requires kubeVersion: >=1.30.0-0"), "{stderr}");
    // The built-in default version (the client-go minor Helm is built with) satisfies it.
    ok(&["template", "x", CHART]);
}

#[test]
fn argo_cd_health_script_ships_in_the_chart_and_in_deploy() {
    let script = std::fs::read_to_string("deploy/argocd/health.lua").unwrap();
    assert_eq!(std::fs::read_to_string(format!("{CHART}/argocd/health.lua")).unwrap(), script);
    let cm: Value = serde_yaml::from_str(&std::fs::read_to_string("deploy/argocd/argocd-cm.yaml").unwrap()).unwrap();
    assert_eq!(cm["metadata"]["name"], "argocd-cm");
    for kind in ["AtlasOrgUser", "AtlasTeamMembership"] {
        let key = format!("resource.customizations.health.atlas-access.dev_{kind}");
        assert_eq!(cm["data"][&key].as_str(), Some(script.as_str()), "{key}");
    }
    // Packaged with the chart (not left out by .helmignore).
    let dir = std::env::temp_dir().join(format!("aao-helm-package-{}", std::process::id()));
    ok(&["package", CHART, "--destination", dir.to_str().unwrap()]);
    let archive = dir.join("atlas-access-operator-0.1.0.tgz");
    let list = Command::new("tar").arg("tzf").arg(&archive).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.lines().any(|l| l == "atlas-access-operator/argocd/health.lua"), "{list}");
    let _ = std::fs::remove_dir_all(dir);
}

fn args_of(deployment: &Deployment) -> Vec<String> {
    deployment.spec.template.spec.as_ref().unwrap().containers[0].args.clone().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_upgrade_and_uninstall_against_the_cluster() {
    let admin = cluster::admin_client().await;
    let kubeconfig = std::env::var("KUBECONFIG").unwrap();
    let ns = TestNamespace::new(&admin, "helm").await;
    let release = format!("aao-{}", ns.name.rsplit('-').next().unwrap());
    let base = ["--namespace", ns.name.as_str(), "--kubeconfig", kubeconfig.as_str()];
    let with =
        |extra: &[&str]| -> Vec<String> { extra.iter().chain(base.iter()).map(|s| s.to_string()).collect::<Vec<_>>() };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(&refs)
    };

    // Install, cluster-wide (the CRDs come from the chart's crds/ unless already there).
    let notes = run(with(&["install", &release, CHART, "--set", "credentials.secretName=atlas-credentials"]));
    assert!(notes.contains("Next: create the default credentials Secret"), "{notes}");
    assert!(notes.contains(&format!("kubectl -n {} create secret generic atlas-credentials", ns.name)), "{notes}");
    let crds: Api<CustomResourceDefinition> = Api::all(admin.clone());
    for name in ["atlasorgusers.atlas-access.dev", "atlasteammemberships.atlas-access.dev"] {
        assert!(crds.get_opt(name).await.unwrap().is_some(), "{name} missing after install");
    }
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns.name);
    let full_name = format!("{release}-atlas-access-operator");
    let deployment = deployments.get(&full_name).await.unwrap();
    let labels = deployment.metadata.labels.clone().unwrap();
    assert_eq!(labels.get("app.kubernetes.io/managed-by").map(String::as_str), Some("Helm"));
    assert!(!args_of(&deployment).iter().any(|a| a.starts_with("--namespace=")));
    let cluster_roles: Api<ClusterRole> = Api::all(admin.clone());
    assert!(cluster_roles.get_opt(&full_name).await.unwrap().is_some(), "cluster-wide: a ClusterRole");

    // Upgrade: one namespace, leader election on.
    run(with(&[
        "upgrade",
        &release,
        CHART,
        "--reuse-values",
        "--set",
        &format!("watch.namespace={}", ns.name),
        "--set",
        "leaderElection.enabled=true",
    ]));
    let deployment = deployments.get(&full_name).await.unwrap();
    let args = args_of(&deployment);
    assert!(args.contains(&format!("--namespace={}", ns.name)), "{args:?}");
    assert!(args.iter().any(|a| a == "--leader-election"), "{args:?}");
    assert!(args.contains(&format!("--default-credentials-secret={}/atlas-credentials", ns.name)), "{args:?}");
    assert_eq!(deployment.spec.strategy.as_ref().unwrap().type_.as_deref(), Some("RollingUpdate"));
    let gone = wait_for(Duration::from_secs(20), || async {
        cluster_roles.get_opt(&full_name).await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(gone.is_some(), "namespace-scoped: the ClusterRole is removed");
    let roles: Api<Role> = Api::namespaced(admin.clone(), &ns.name);
    let role_names: BTreeSet<String> =
        roles.list(&Default::default()).await.unwrap().items.into_iter().filter_map(|r| r.metadata.name).collect();
    assert!(role_names.contains(&full_name), "{role_names:?}");
    assert!(role_names.iter().any(|n| n.contains("leader")), "a lease Role: {role_names:?}");

    // An object of the operator's kinds, then uninstall: the CRDs and the object stay.
    let users: Api<AtlasOrgUser> = Api::namespaced(admin.clone(), &ns.name);
    let alice: AtlasOrgUser = serde_json::from_value(json!({
        "apiVersion": "atlas-access.dev/v1alpha1", "kind": "AtlasOrgUser",
        "metadata": {"name": "alice", "namespace": ns.name},
        "spec": {"orgId": "5f1b2c3d4e5f60718293a4b5", "username": "alice@example.com", "orgRoles": ["ORG_MEMBER"]}
    }))
    .unwrap();
    users.patch("alice", &PatchParams::apply(TEST_MANAGER), &Patch::Apply(&alice)).await.unwrap();
    run(with(&["uninstall", &release]));
    let removed = wait_for(Duration::from_secs(20), || async {
        deployments.get_opt(&full_name).await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(removed.is_some(), "the Deployment is removed on uninstall");
    for name in ["atlasorgusers.atlas-access.dev", "atlasteammemberships.atlas-access.dev"] {
        assert!(crds.get_opt(name).await.unwrap().is_some(), "{name} must stay after uninstall");
    }
    assert!(users.get_opt("alice").await.unwrap().is_some(), "objects stay after uninstall");
    let listed = run(with(&["list", "--all"]));
    assert!(!listed.contains(&release), "{listed}");
    ns.cleanup().await;
}
