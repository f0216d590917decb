//! The operator as a child process (`atlas-access-operator run`), with the RBAC that
//! `deploy/` ships bound to an unprivileged user, so a missing permission fails a test.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding, Subject};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use serde::Deserialize;
use serde_json::Value;

use super::cluster::TEST_MANAGER;

/// The unprivileged user in the kubeconfig `ENVTEST_UNPRIVILEGED_KUBECONFIG` names.
pub fn unprivileged_user() -> String {
    std::env::var("ENVTEST_UNPRIVILEGED_USER").unwrap_or_else(|_| "operator-test".into())
}

/// The kubeconfig the operator runs with: the unprivileged one when there is one.
pub fn operator_kubeconfig() -> String {
    match std::env::var("ENVTEST_UNPRIVILEGED_KUBECONFIG") {
        Ok(path) => path,
        Err(_) => {
            eprintln!(
                "warning: ENVTEST_UNPRIVILEGED_KUBECONFIG is not set; the operator runs with KUBECONFIG's \
                 credentials, so missing RBAC rules are not detected"
            );
            std::env::var("KUBECONFIG").expect("KUBECONFIG")
        }
    }
}

fn docs(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml::Deserializer::from_str(&text).map(|d| Value::deserialize(d).unwrap()).filter(|v| !v.is_null()).collect()
}

fn user_subject(user: &str) -> Subject {
    Subject {
        kind: "User".into(),
        name: user.into(),
        api_group: Some("rbac.authorization.k8s.io".into()),
        namespace: None,
    }
}

/// Grants `user` exactly the RBAC of `deploy/manifests/03-rbac.yaml`, with the release namespace
/// replaced by `namespace` (the operator's namespace in the test): the ClusterRoles and their
/// bindings (renamed per test), the Role for Secrets there, and the tenant Secrets ClusterRole,
/// bound nowhere until [`RbacGrant::grant_tenant`]. With leader election also the chart's lease
/// Role, in `namespace`.
pub async fn grant_shipped_rbac(admin: &Client, namespace: &str, user: &str, leader_election: bool) -> RbacGrant {
    let params = PatchParams::apply(TEST_MANAGER).force();
    let renamed = |name: &str| format!("{name}-{namespace}");
    let mut grant = RbacGrant {
        cluster_names: Vec::new(),
        tenant_role: String::new(),
        user: user.to_string(),
        client: admin.clone(),
    };
    for doc in docs("deploy/manifests/03-rbac.yaml") {
        let name = doc["metadata"]["name"].as_str().unwrap().to_string();
        match doc["kind"].as_str().unwrap() {
            "ClusterRole" => {
                let mut role: ClusterRole = serde_json::from_value(doc.clone()).unwrap();
                role.metadata = kube::api::ObjectMeta { name: Some(renamed(&name)), ..Default::default() };
                Api::<ClusterRole>::all(admin.clone())
                    .patch(&renamed(&name), &params, &Patch::Apply(&role))
                    .await
                    .expect("apply ClusterRole");
                if doc["metadata"]["labels"]["atlas-access.dev/bind-per-namespace"] == "true" {
                    grant.tenant_role = renamed(&name);
                }
                grant.cluster_names.push(renamed(&name));
            }
            "ClusterRoleBinding" => {
                let binding = ClusterRoleBinding {
                    metadata: kube::api::ObjectMeta { name: Some(renamed(&name)), ..Default::default() },
                    role_ref: k8s_openapi::api::rbac::v1::RoleRef {
                        api_group: Some("rbac.authorization.k8s.io".into()),
                        kind: "ClusterRole".into(),
                        name: renamed(doc["roleRef"]["name"].as_str().unwrap()),
                    },
                    subjects: Some(vec![user_subject(user)]),
                };
                Api::<ClusterRoleBinding>::all(admin.clone())
                    .patch(&renamed(&name), &params, &Patch::Apply(&binding))
                    .await
                    .expect("apply ClusterRoleBinding");
            }
            "Role" => {
                let mut role: Role = serde_json::from_value(doc.clone()).unwrap();
                role.metadata = kube::api::ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(namespace.into()),
                    ..Default::default()
                };
                Api::<Role>::namespaced(admin.clone(), namespace)
                    .patch(&name, &params, &Patch::Apply(&role))
                    .await
                    .expect("apply Role");
            }
            "RoleBinding" => {
                let role_ref: k8s_openapi::api::rbac::v1::RoleRef =
                    serde_json::from_value(doc["roleRef"].clone()).unwrap();
                assert_eq!(role_ref.kind, "Role", "the default render binds no tenant namespace");
                let binding = RoleBinding {
                    metadata: kube::api::ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(namespace.into()),
                        ..Default::default()
                    },
                    role_ref,
                    subjects: Some(vec![user_subject(user)]),
                };
                Api::<RoleBinding>::namespaced(admin.clone(), namespace)
                    .patch(&name, &params, &Patch::Apply(&binding))
                    .await
                    .expect("apply RoleBinding");
            }
            other => panic!("03-rbac.yaml: unexpected {other}"),
        }
    }
    assert!(!grant.tenant_role.is_empty(), "03-rbac.yaml has the tenant Secrets ClusterRole");
    if leader_election {
        let rendered = docs("tests/helm/rendered/leader-election.yaml");
        let mut role: Role = serde_json::from_value(
            rendered
                .iter()
                .find(|d| d["kind"] == "Role" && d["metadata"]["name"].as_str().unwrap().ends_with("-leader-election"))
                .expect("lease Role")
                .clone(),
        )
        .unwrap();
        let role_name = role.metadata.name.clone().unwrap();
        role.metadata = kube::api::ObjectMeta {
            name: Some(role_name.clone()),
            namespace: Some(namespace.into()),
            ..Default::default()
        };
        Api::<Role>::namespaced(admin.clone(), namespace)
            .patch(&role_name, &params, &Patch::Apply(&role))
            .await
            .expect("apply lease Role");
        let binding = RoleBinding {
            metadata: kube::api::ObjectMeta {
                name: Some(role_name.clone()),
                namespace: Some(namespace.into()),
                ..Default::default()
            },
            role_ref: k8s_openapi::api::rbac::v1::RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "Role".into(),
                name: role_name.clone(),
            },
            subjects: Some(vec![user_subject(user)]),
        };
        Api::<RoleBinding>::namespaced(admin.clone(), namespace)
            .patch(&role_name, &params, &Patch::Apply(&binding))
            .await
            .expect("apply lease RoleBinding");
    }
    grant
}

/// Cluster-scoped RBAC objects of one test; namespaced ones go with the namespace.
pub struct RbacGrant {
    cluster_names: Vec<String>,
    /// The tenant Secrets ClusterRole of this test (`--tenant-secrets-cluster-role`).
    pub tenant_role: String,
    user: String,
    client: Client,
}

impl RbacGrant {
    /// What a tenant does to let the operator read its own Secret: a RoleBinding in its
    /// namespace to the tenant Secrets ClusterRole.
    pub async fn grant_tenant(&self, tenant_namespace: &str) {
        let binding = RoleBinding {
            metadata: kube::api::ObjectMeta {
                name: Some("atlas-access-operator-tenant-secrets".into()),
                namespace: Some(tenant_namespace.into()),
                ..Default::default()
            },
            role_ref: k8s_openapi::api::rbac::v1::RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "ClusterRole".into(),
                name: self.tenant_role.clone(),
            },
            subjects: Some(vec![user_subject(&self.user)]),
        };
        Api::<RoleBinding>::namespaced(self.client.clone(), tenant_namespace)
            .patch(
                "atlas-access-operator-tenant-secrets",
                &PatchParams::apply(TEST_MANAGER).force(),
                &Patch::Apply(&binding),
            )
            .await
            .expect("apply tenant RoleBinding");
    }

    pub async fn revoke(self) {
        for name in &self.cluster_names {
            let _ = Api::<ClusterRoleBinding>::all(self.client.clone()).delete(name, &DeleteParams::default()).await;
            let _ = Api::<ClusterRole>::all(self.client.clone()).delete(name, &DeleteParams::default()).await;
        }
    }
}

/// A free loopback port (bound and released; fine for tests on one machine).
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// `atlas-access-operator run` as a child process; killed on drop.
pub struct Operator {
    child: Option<Child>,
    pub http: SocketAddr,
    pub log: PathBuf,
}

impl Operator {
    pub fn start(kubeconfig: &str, args: &[String], env: &[(&str, &str)]) -> Self {
        let http = free_port();
        let log = std::env::temp_dir().join(format!("aao-operator-{}-{}.log", std::process::id(), http.port()));
        let file = std::fs::File::create(&log).unwrap();
        // AAO_OPERATOR_BIN: another build of the operator (e.g. to compare figures).
        let binary =
            std::env::var("AAO_OPERATOR_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_atlas-access-operator").into());
        let mut command = Command::new(binary);
        command.arg("run").arg(format!("--http-bind={http}"));
        // Plain text unless the test asks for another format.
        if !args.iter().any(|a| a.starts_with("--log-format")) {
            command.arg("--log-format=plain");
        }
        command
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,atlas_access_operator=debug,kube_lease_manager=info")
            .env_remove("POD_NAMESPACE")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("start the operator");
        Self { child: Some(child), http, log }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The process id (for reading its memory in /proc).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// GET one of the operator's HTTP endpoints (plain HTTP on loopback).
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().ok()?;
        let resp = client.get(format!("http://{}{path}", self.http)).send().await.ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.text().await.ok()?))
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits up to a minute for the object `name` to satisfy `check`; on time-out panics with the
/// object as it stands and the operator's log.
pub async fn wait_object<K>(api: &Api<K>, name: &str, operator: &Operator, what: &str, check: impl Fn(&K) -> bool) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let found =
        super::cluster::wait_for(Duration::from_secs(60), || async { api.get(name).await.ok().filter(|o| check(o)) })
            .await;
    found.unwrap_or_else(|| {
        let now = futures::executor::block_on(api.get_opt(name)).ok().flatten();
        panic!("{name}: timed out waiting for {what}; object: {now:#?}\n--- operator log ---\n{}", operator.logs())
    })
}
