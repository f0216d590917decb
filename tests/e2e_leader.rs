//! Leader election against a real API server: two `run` processes share one Lease; only
//! the holder reconciles, and the other takes over within the lease time when the holder
//! is killed. The operators run with the shipped RBAC (including the chart's lease Role).

mod common;

use std::time::{Duration, Instant};

use atlas_access_operator::api::AtlasOrgUser;
use atlas_access_operator::controller::leader::LEASE_DURATION_SECS;
use atlas_access_operator::sim::{SimConfig, Simulator};
use common::cluster::{self, TEST_MANAGER, TestNamespace, wait_for};
use common::operator::{Operator, grant_shipped_rbac, operator_kubeconfig, unprivileged_user};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

const ORG: &str = "5f1b2c3d4e5f60718293a4b5";
const LEASE: &str = "atlas-access-operator";

async fn holder(client: &Client, ns: &str) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), ns).get_opt(LEASE).await.ok()??.spec?.holder_identity
}

async fn create_user(client: &Client, ns: &str, name: &str) {
    let user: AtlasOrgUser = serde_json::from_value(json!({
        "apiVersion": "atlas-access.dev/v1alpha1", "kind": "AtlasOrgUser",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"orgId": ORG, "username": format!("{name}@example.com"), "orgRoles": ["ORG_MEMBER"],
                 "credentialsSecretRef": {"name": "atlas-credentials"}}
    }))
    .unwrap();
    Api::<AtlasOrgUser>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::apply(TEST_MANAGER), &Patch::Apply(&user))
        .await
        .unwrap();
}

async fn wait_ready(client: &Client, ns: &str, name: &str, timeout: Duration) -> bool {
    let api: Api<AtlasOrgUser> = Api::namespaced(client.clone(), ns);
    wait_for(timeout, || async {
        let u = api.get(name).await.ok()?;
        u.status?.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True").then_some(())
    })
    .await
    .is_some()
}

fn reconciles(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("atlas_access_reconciles_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_writes_and_a_follower_takes_over() {
    let admin = cluster::admin_client().await;
    cluster::install_crds(&admin).await;
    let ns = TestNamespace::new(&admin, "e2e-leader").await;
    let grant = grant_shipped_rbac(&admin, &ns.name, &unprivileged_user(), true).await;
    let sim =
        Simulator::start(SimConfig::default().with_api_key("leader-pub", "leader-priv").without_limits()).unwrap();
    sim.state().add_org_with_id(ORG, "leader");
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "atlas-credentials", "namespace": ns.name, "labels": {"atlas.mongodb.com/type": "credentials"}},
        "stringData": {"publicApiKey": "leader-pub", "privateApiKey": "leader-priv"}
    });
    Api::<Secret>::namespaced(admin.clone(), &ns.name)
        .patch("atlas-credentials", &PatchParams::apply(TEST_MANAGER), &Patch::Apply(&secret))
        .await
        .unwrap();

    let args = vec![
        format!("--namespace={}", ns.name),
        format!("--atlas-url={}", sim.base_url()),
        format!("--operator-namespace={}", ns.name),
        format!("--tenant-secrets-cluster-role={}", grant.tenant_role),
        "--atlas-insecure-http".into(),
        "--invitations-per-minute=0".into(),
        "--resync-interval=2s".into(),
        "--leader-election".into(),
        format!("--lease-namespace={}", ns.name),
    ];
    let kubeconfig = operator_kubeconfig();
    let mut first = Operator::start(&kubeconfig, &args, &[("POD_NAME", "operator-a")]);
    let led = wait_for(Duration::from_secs(30), || async {
        (holder(&admin, &ns.name).await.as_deref() == Some("operator-a")).then_some(())
    })
    .await;
    assert!(led.is_some(), "operator-a never took the Lease:\n{}", first.logs());
    let mut second = Operator::start(&kubeconfig, &args, &[("POD_NAME", "operator-b")]);
    // A follower is alive and ready (rolling updates wait on readiness), but does not reconcile.
    let follower_ready =
        wait_for(Duration::from_secs(30), || async { second.get("/readyz").await.filter(|(code, _)| *code == 200) })
            .await;
    assert!(follower_ready.is_some(), "follower not ready:\n{}", second.logs());

    create_user(&admin, &ns.name, "first").await;
    assert!(
        wait_ready(&admin, &ns.name, "first", Duration::from_secs(60)).await,
        "leader did not reconcile:\n{}",
        first.logs()
    );
    tokio::time::sleep(Duration::from_secs(3)).await; // a few drift checks on the leader
    let (_, leader_metrics) = first.get("/metrics").await.unwrap();
    let (_, follower_metrics) = second.get("/metrics").await.unwrap();
    assert!(reconciles(&leader_metrics) > 0, "{leader_metrics}");
    assert_eq!(reconciles(&follower_metrics), 0, "the follower reconciled:\n{follower_metrics}");
    assert!(leader_metrics.contains("\natlas_access_leader 1\n"), "{leader_metrics}");
    assert!(follower_metrics.contains("\natlas_access_leader 0\n"), "{follower_metrics}");
    assert_eq!(holder(&admin, &ns.name).await.as_deref(), Some("operator-a"));

    // The leader dies without releasing: the follower takes over within the lease time.
    first.kill();
    let killed = Instant::now();
    let took_over = wait_for(Duration::from_secs(LEASE_DURATION_SECS + 15), || async {
        (holder(&admin, &ns.name).await.as_deref() == Some("operator-b")).then_some(())
    })
    .await;
    let takeover = killed.elapsed();
    assert!(took_over.is_some(), "operator-b never took over:\n{}", second.logs());
    assert!(
        takeover <= Duration::from_secs(LEASE_DURATION_SECS + 5),
        "takeover took {takeover:?}, lease is {LEASE_DURATION_SECS}s"
    );
    eprintln!("leader takeover after SIGKILL: {takeover:?}");
    create_user(&admin, &ns.name, "second").await;
    assert!(
        wait_ready(&admin, &ns.name, "second", Duration::from_secs(60)).await,
        "new leader did not reconcile:\n{}",
        second.logs()
    );
    assert_eq!(sim.state().org_users(ORG).iter().filter(|u| u.username == "first@example.com").count(), 1);
    let (_, new_leader_metrics) = second.get("/metrics").await.unwrap();
    assert!(new_leader_metrics.contains("\natlas_access_leader 1\n"), "{new_leader_metrics}");

    second.kill();
    grant.revoke().await;
    ns.cleanup().await;
}
