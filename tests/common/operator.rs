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

/// Grants `user` exactly the ClusterRole of `deploy/manifests` (and, for leader election,
/// the chart's lease Role, in `namespace`). Names are unique per test namespace.
pub async fn grant_shipped_rbac(admin: &Client, namespace: &str, user: &str, leader_election: bool) -> RbacGrant {
    let name = format!("aao-e2e-{namespace}");
    let params = PatchParams::apply(TEST_MANAGER).force();
    let rbac = docs("deploy/manifests/03-rbac.yaml");
    let mut role: ClusterRole =
        serde_json::from_value(rbac.iter().find(|d| d["kind"] == "ClusterRole").expect("a ClusterRole").clone())
            .unwrap();
    role.metadata = kube::api::ObjectMeta { name: Some(name.clone()), ..Default::default() };
    let roles: Api<ClusterRole> = Api::all(admin.clone());
    roles.patch(&name, &params, &Patch::Apply(&role)).await.expect("apply ClusterRole");
    let binding = ClusterRoleBinding {
        metadata: kube::api::ObjectMeta { name: Some(name.clone()), ..Default::default() },
        role_ref: k8s_openapi::api::rbac::v1::RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: name.clone(),
        },
        subjects: Some(vec![user_subject(user)]),
    };
    let bindings: Api<ClusterRoleBinding> = Api::all(admin.clone());
    bindings.patch(&name, &params, &Patch::Apply(&binding)).await.expect("apply ClusterRoleBinding");
    if leader_election {
        let rendered = docs("tests/helm/rendered/leader-election.yaml");
        let mut role: Role =
            serde_json::from_value(rendered.iter().find(|d| d["kind"] == "Role").expect("lease Role").clone()).unwrap();
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
    RbacGrant { name, client: admin.clone() }
}

/// Cluster-scoped RBAC objects of one test; namespaced ones go with the namespace.
pub struct RbacGrant {
    name: String,
    client: Client,
}

impl RbacGrant {
    pub async fn revoke(self) {
        let _ = Api::<ClusterRoleBinding>::all(self.client.clone()).delete(&self.name, &DeleteParams::default()).await;
        let _ = Api::<ClusterRole>::all(self.client.clone()).delete(&self.name, &DeleteParams::default()).await;
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
        let mut command = Command::new(env!("CARGO_BIN_EXE_atlas-access-operator"));
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
