//! The API server side: CRDs from `crds/`, namespaces, the credentials Secret, writing many
//! objects with server-side apply, watching their Ready condition, and the apiserver's own
//! /metrics.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher;
use kube::{Api, Client, Config};
use serde_json::{Value, json};

/// Field manager of the benchmark's writes: what `kubectl apply --server-side` uses.
pub const MANAGER: &str = "kubectl";

pub async fn client_from(path: &Path) -> Result<Client, String> {
    let kubeconfig =
        Kubeconfig::read_from(path).map_err(|e| format!("cannot read kubeconfig {}: {e}", path.display()))?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("bad kubeconfig {}: {e}", path.display()))?;
    Client::try_from(config).map_err(|e| format!("kube client: {e}"))
}

/// Server-side applies every CRD of `crds/` and waits until each is Established.
pub async fn install_crds(client: &Client) -> Result<(), String> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let crd: CustomResourceDefinition =
            serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let name = crd.metadata.name.clone().ok_or("a CRD without a name")?;
        api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&crd))
            .await
            .map_err(|e| format!("applying {}: {e}", path.display()))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let established =
                api.get(&name).await.ok().and_then(|c| c.status).and_then(|s| s.conditions).is_some_and(|conditions| {
                    conditions.iter().any(|c| c.type_ == "Established" && c.status == "True")
                });
            if established {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!("CRD {name} did not become Established"));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

pub async fn create_namespace(client: &Client, name: &str) -> Result<(), String> {
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    Api::<Namespace>::all(client.clone())
        .patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&ns))
        .await
        .map_err(|e| format!("namespace {name}: {e}"))?;
    Ok(())
}

/// The API-key Secret, labelled the way the operator watches credentials Secrets.
pub async fn create_credentials_secret(
    client: &Client,
    namespace: &str,
    name: &str,
    public_key: &str,
    private_key: &str,
) -> Result<(), String> {
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": {"atlas.mongodb.com/type": "credentials"}},
        "stringData": {"publicApiKey": public_key, "privateApiKey": private_key},
    });
    Api::<Secret>::namespaced(client.clone(), namespace)
        .patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&secret))
        .await
        .map_err(|e| format!("Secret {namespace}/{name}: {e}"))?;
    Ok(())
}

/// The API of one of the operator's kinds in `namespace`, untyped: only CRD fields are read.
pub fn dynamic_api(client: &Client, namespace: &str, kind: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("atlas-access.dev", "v1alpha1", kind);
    let plural = format!("{}s", kind.to_lowercase());
    let resource = ApiResource::from_gvk_with_plural(&gvk, &plural);
    Api::namespaced_with(client.clone(), namespace, &resource)
}

/// Server-side applies every manifest with `writers` requests in flight.
pub async fn apply_all(client: &Client, manifests: &[Value], writers: usize) -> Result<(), String> {
    futures::stream::iter(manifests.iter().map(Ok::<_, String>))
        .try_for_each_concurrent(writers, |m| async move {
            let kind = m["kind"].as_str().unwrap_or_default();
            let ns = m["metadata"]["namespace"].as_str().unwrap_or_default();
            let name = m["metadata"]["name"].as_str().unwrap_or_default();
            let api = dynamic_api(client, ns, kind);
            let mut attempt = 0;
            loop {
                attempt += 1;
                match api.patch(name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(m)).await {
                    Ok(_) => return Ok(()),
                    // The apiserver under load (429, timeouts): try again a few times.
                    Err(e) if attempt < 5 => {
                        eprintln!("applying {kind} {ns}/{name} (attempt {attempt}): {e}; retrying");
                        tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
                    }
                    Err(e) => return Err(format!("applying {kind} {ns}/{name}: {e}")),
                }
            }
        })
        .await
}

/// Whether the object is Ready for its current generation, and if not, why (the Ready
/// condition's reason and message).
pub fn readiness(obj: &Value) -> Result<(), String> {
    let generation = obj["metadata"]["generation"].as_i64();
    let status = &obj["status"];
    let ready = status["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == "Ready"));
    let Some(ready) = ready else { return Err("no Ready condition yet".into()) };
    let observed = status["observedGeneration"].as_i64().or_else(|| ready["observedGeneration"].as_i64());
    if ready["status"] == "True" && observed == generation {
        return Ok(());
    }
    Err(format!(
        "Ready={} (observedGeneration {observed:?} of {generation:?}) {}: {}",
        ready["status"].as_str().unwrap_or("?"),
        ready["reason"].as_str().unwrap_or(""),
        ready["message"].as_str().unwrap_or("")
    ))
}

/// Every object of one kind in one namespace and whether it is Ready, from a watch (no
/// polling lists); stops with the task (drop it before measuring the idle API server).
pub struct ReadyWatch {
    state: Arc<Mutex<WatchState>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct WatchState {
    synced: bool,
    objects: HashMap<String, Result<(), String>>,
    error: Option<String>,
}

impl ReadyWatch {
    pub fn start(api: Api<DynamicObject>) -> Self {
        let state = Arc::new(Mutex::new(WatchState::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            let mut init: HashMap<String, Result<(), String>> = HashMap::new();
            let mut stream = watcher(api, watcher::Config::default()).boxed();
            while let Some(event) = stream.next().await {
                let entry = |o: &DynamicObject| {
                    let name = o.metadata.name.clone().unwrap_or_default();
                    let value = serde_json::to_value(o).unwrap_or(Value::Null);
                    (name, readiness(&value))
                };
                match event {
                    Ok(watcher::Event::Init) => init.clear(),
                    Ok(watcher::Event::InitApply(o)) => {
                        let (k, v) = entry(&o);
                        init.insert(k, v);
                    }
                    Ok(watcher::Event::InitDone) => {
                        let mut s = shared.lock().unwrap();
                        s.objects = std::mem::take(&mut init);
                        s.synced = true;
                    }
                    Ok(watcher::Event::Apply(o)) => {
                        let (k, v) = entry(&o);
                        shared.lock().unwrap().objects.insert(k, v);
                    }
                    Ok(watcher::Event::Delete(o)) => {
                        shared.lock().unwrap().objects.remove(&o.metadata.name.clone().unwrap_or_default());
                    }
                    Err(e) => shared.lock().unwrap().error = Some(e.to_string()),
                }
            }
        });
        Self { state, task }
    }

    /// (objects seen, Ready), once the first listing is in.
    pub fn counts(&self) -> Option<(usize, usize)> {
        let s = self.state.lock().unwrap();
        s.synced.then(|| (s.objects.len(), s.objects.values().filter(|r| r.is_ok()).count()))
    }

    /// Up to `max` objects that are not Ready, with why; and the watch's last error.
    pub fn stuck(&self, max: usize) -> Vec<String> {
        let s = self.state.lock().unwrap();
        let mut out: Vec<String> =
            s.objects.iter().filter_map(|(k, v)| v.as_ref().err().map(|why| format!("{k}: {why}"))).collect();
        out.sort();
        out.truncate(max);
        if let Some(e) = &s.error {
            out.push(format!("(watch error: {e})"));
        }
        out
    }
}

impl Drop for ReadyWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The kube-apiserver's own /metrics, parsed.
pub async fn apiserver_metrics(client: &Client) -> Result<Vec<super::prom::Sample>, String> {
    let request = http::Request::get("/metrics").body(Vec::new()).map_err(|e| e.to_string())?;
    let text = client.request_text(request).await.map_err(|e| format!("GET /metrics of the apiserver: {e}"))?;
    let samples = super::prom::parse(&text);
    super::prom::require(&samples, "apiserver_request_total", "the kube-apiserver's /metrics")?;
    Ok(samples)
}
