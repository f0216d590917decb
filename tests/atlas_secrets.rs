//! A canary secret (API private key, service account secret) never shows up in an error's
//! text or Debug output, in any Debug of the client and its configuration, or in any log
//! line the client or the simulator writes during a run that succeeds, fails, retries and
//! is refused. Alone in its test binary: it installs the process-wide log subscriber.

mod common;

use atlas_access_operator::atlas::models::{OrgUserRequest, OrgUserRoles};
use atlas_access_operator::atlas::{AtlasClient, AtlasError, ClientConfig, Credentials, RetryPolicy};
use atlas_access_operator::sim::{FaultConfig, FaultSpec, SimConfig};
use common::atlas::{LogCapture, config};
use common::sim::{self, PRIVATE_KEY};
use secrecy::SecretString;

fn invite(username: &str, roles: &[&str]) -> OrgUserRequest {
    OrgUserRequest {
        username: username.into(),
        roles: OrgUserRoles {
            org_roles: roles.iter().map(|r| r.to_string()).collect(),
            group_role_assignments: vec![],
        },
        team_ids: vec![],
    }
}

#[tokio::test]
async fn canary_secrets_never_appear_in_errors_debug_or_logs() {
    const KEY_CANARY: &str = "CANARY-private-key-7f3a9c";
    const SA_CANARY: &str = "CANARY-client-secret-41be02";
    let logs = LogCapture::install_global();
    let sim = sim::start(
        SimConfig::default()
            .with_api_key("canary-public", KEY_CANARY)
            .with_service_account("canary-client", SA_CANARY)
            .without_limits(),
    );
    let key = Credentials::ApiKey { public_key: "canary-public".into(), private_key: SecretString::from(KEY_CANARY) };
    let sa =
        Credentials::ServiceAccount { client_id: "canary-client".into(), client_secret: SecretString::from(SA_CANARY) };
    let mut seen: Vec<String> = Vec::new();
    for credentials in [key.clone(), sa.clone()] {
        let cfg = config(&sim, credentials);
        seen.push(format!("{cfg:?}"));
        let atlas = AtlasClient::new(cfg.clone()).unwrap();
        seen.push(format!("{atlas:?}"));
        atlas.get_org(&sim.org).await.unwrap();
        atlas.create_org_user(&sim.org, &invite("dora@example.com", &["ORG_MEMBER"])).await.unwrap();
        let mut errors: Vec<AtlasError> = Vec::new();
        errors.push(atlas.get_org_user(&sim.org, "6a1b2c3d4e5f60718293a4b5").await.unwrap_err());
        errors.push(atlas.remove_org_role(&sim.org, &sim.owner, "ORG_OWNER").await.unwrap_err());
        sim.state.set_faults(FaultConfig::global(FaultSpec::errors(100)));
        let once = AtlasClient::new(ClientConfig { retry: RetryPolicy::none(), ..cfg.clone() }).unwrap();
        errors.push(once.get_org(&sim.org).await.unwrap_err());
        sim.state.set_faults(FaultConfig::global(FaultSpec::drops(100)));
        errors.push(once.get_org(&sim.org).await.unwrap_err());
        sim.state.clear_faults();
        // The same credentials with one character changed: refused.
        let wrong = match &cfg.credentials {
            Credentials::ApiKey { public_key, .. } => Credentials::ApiKey {
                public_key: public_key.clone(),
                private_key: SecretString::from(format!("{KEY_CANARY}x")),
            },
            Credentials::ServiceAccount { client_id, .. } => Credentials::ServiceAccount {
                client_id: client_id.clone(),
                client_secret: SecretString::from(format!("{SA_CANARY}x")),
            },
        };
        let refused = AtlasClient::new(ClientConfig { credentials: wrong, ..cfg }).unwrap();
        errors.push(refused.get_org(&sim.org).await.unwrap_err());
        for err in errors {
            seen.push(err.to_string());
            seen.push(format!("{err:?}"));
            seen.push(format!("{:?}", err.class()));
        }
    }
    seen.push(format!("{key:?} {sa:?}"));
    let logs = logs.text();
    assert!(logs.contains("Atlas answered"), "the capture saw the client's debug events:\n{logs}");
    for text in seen.iter().chain([&logs]) {
        for canary in [KEY_CANARY, SA_CANARY, "CANARY"] {
            assert!(!text.contains(canary), "{canary} leaked into: {text}");
        }
    }
    assert!(seen.len() > 20);
    // The private key of the default fixture is not in the logs either.
    assert!(!logs.contains(PRIVATE_KEY));
}
