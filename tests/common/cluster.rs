//! A real Kubernetes API server for tests: the one `KUBECONFIG` names (envtest started by
//! `tests/envtest/envtest.sh up`, kind, or any cluster). Without one, tests refuse loudly
//! instead of skipping.

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

/// Field manager of the test harness's own writes.
pub const TEST_MANAGER: &str = "atlas-access-operator-tests";

fn refuse() -> ! {
    panic!(
        "this test needs a Kubernetes API server: set KUBECONFIG (for the built-in one: \
         `tests/envtest/envtest.sh install && eval \"$(tests/envtest/envtest.sh up)\"`, \
         or run `bash tests/run-all.sh`, which does that)"
    )
}

/// Admin client from `KUBECONFIG`.
pub async fn admin_client() -> Client {
    super::init_crypto();
    let path = std::env::var("KUBECONFIG").unwrap_or_else(|_| refuse());
    client_from(&path).await
}

/// Client for the unprivileged user envtest creates (`ENVTEST_UNPRIVILEGED_KUBECONFIG`), if any.
pub async fn unprivileged_client() -> Option<Client> {
    super::init_crypto();
    let path = std::env::var("ENVTEST_UNPRIVILEGED_KUBECONFIG").ok()?;
    Some(client_from(&path).await)
}

pub async fn client_from(path: &str) -> Client {
    let kubeconfig = Kubeconfig::read_from(path).unwrap_or_else(|e| panic!("cannot read kubeconfig {path}: {e}"));
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("bad kubeconfig {path}: {e}"));
    Client::try_from(config).expect("kube client")
}

/// Apply the CRDs from `crds/` (server-side apply) and wait until they are Established.
pub async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in atlas_access_operator::api::crds() {
        let name = crd.metadata.name.clone().unwrap();
        let path = std::path::Path::new("crds").join(atlas_access_operator::api::crd_file_name(&crd));
        let on_disk: CustomResourceDefinition =
            serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).expect("crds/ parses");
        api.patch(&name, &PatchParams::apply(TEST_MANAGER).force(), &Patch::Apply(&on_disk))
            .await
            .unwrap_or_else(|e| panic!("applying {}: {e}", path.display()));
        wait_for(Duration::from_secs(30), || {
            let api = api.clone();
            let name = name.clone();
            async move {
                let crd = api.get(&name).await.ok()?;
                let established =
                    crd.status?.conditions?.iter().any(|c| c.type_ == "Established" && c.status == "True");
                established.then_some(())
            }
        })
        .await
        .unwrap_or_else(|| panic!("CRD {name} did not become Established"));
    }
}

/// A namespace of its own for one test; deleted (best effort) on `cleanup`.
pub struct TestNamespace {
    pub name: String,
    pub client: Client,
}

impl TestNamespace {
    pub async fn new(client: &Client, prefix: &str) -> Self {
        let suffix: u32 = rand::random::<u32>() % 1_000_000;
        let name = format!("{prefix}-{suffix:06}");
        let api: Api<Namespace> = Api::all(client.clone());
        let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        api.create(&PostParams::default(), &ns).await.expect("create test namespace");
        Self { name, client: client.clone() }
    }

    /// Delete the namespace. Without a namespace controller (envtest has none) it stays
    /// Terminating, which is harmless: each test uses a fresh one.
    pub async fn cleanup(self) {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let _ = api.delete(&self.name, &DeleteParams::default()).await;
    }
}

/// Poll `check` until it returns Some or `timeout` passes.
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
