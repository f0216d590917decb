//! Atlas credentials from Secrets, and one Atlas client per Secret.
//!
//! A Secret holds `publicApiKey` + `privateApiKey` (API key, HTTP Digest) or `clientId` +
//! `clientSecret` (service account) — the keys the official Atlas operator uses. Clients
//! are cached per Secret and rebuilt when the Secret's `resourceVersion` changes, so a
//! service-account token or digest session is reused across reconciles, and a deletion can
//! still finish with the last good client after the Secret itself is gone.
//!
//! No API-server request per reconcile: a labelled Secret in the operator's namespace is
//! watched (metadata only), so its cached client is used as long as the watched
//! `resourceVersion` matches, and read once (one GET) when it changes. Any other Secret (a
//! tenant's own, in a namespace where the operator may read one Secret through a RoleBinding
//! but may not list or watch) is read at most once per revalidation period (set from the
//! resync interval, so every drift check sees a rotation), and again right after Atlas
//! refused the cached key ([`AtlasClients::recheck`]). Failures are never cached: a Secret
//! that is missing or not granted is read again on the next attempt, and its error (Missing,
//! NotGranted, ...) is the same as before.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};
use secrecy::SecretString;

use crate::atlas::{AtlasClient, ClientConfig, Credentials};

pub const PUBLIC_API_KEY: &str = "publicApiKey";
pub const PRIVATE_API_KEY: &str = "privateApiKey";
pub const CLIENT_ID: &str = "clientId";
pub const CLIENT_SECRET: &str = "clientSecret";
/// Label of the Secrets the operator watches (metadata only) for rotation.
pub const CREDENTIALS_LABEL: &str = "atlas.mongodb.com/type";
pub const CREDENTIALS_LABEL_VALUE: &str = "credentials";

/// Why no Atlas client could be had. Never carries a key or a token.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("credentials Secret {namespace}/{name} not found")]
    Missing { namespace: String, name: String },
    #[error("credentials Secret {namespace}/{name} is not usable: {reason}")]
    Invalid { namespace: String, name: String, reason: String },
    #[error(
        "no credentials: the object has no spec.credentialsSecretRef, no AtlasOrganization names its orgId, and the operator runs without --default-credentials-secret"
    )]
    NotConfigured,
    #[error(
        "AtlasOrganization {organization} names credentials Secret {name} in the operator's namespace, but the operator runs without --operator-namespace (or POD_NAMESPACE)"
    )]
    NoOperatorNamespace { organization: String, name: String },
    #[error(
        "the operator may not read Secrets in namespace {namespace} (for credentialsSecretRef {name}): missing grant: a RoleBinding in {namespace} to the ClusterRole {cluster_role} for the operator's ServiceAccount"
    )]
    NotGranted { namespace: String, name: String, cluster_role: String },
    #[error("reading credentials Secret {namespace}/{name}: {message}")]
    Unreachable { namespace: String, name: String, message: String },
}

impl CredentialsError {
    /// The condition reason users see.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing { .. } | Self::NotConfigured | Self::NoOperatorNamespace { .. } => "CredentialsMissing",
            Self::Invalid { .. } => "CredentialsInvalid",
            Self::NotGranted { .. } => "CredentialsAccessNotGranted",
            Self::Unreachable { .. } => "CredentialsUnreachable",
        }
    }

    /// The namespace of the Secret it is about, if any.
    pub fn namespace(&self) -> Option<&str> {
        match self {
            Self::Missing { namespace, .. }
            | Self::Invalid { namespace, .. }
            | Self::NotGranted { namespace, .. }
            | Self::Unreachable { namespace, .. } => Some(namespace),
            Self::NotConfigured | Self::NoOperatorNamespace { .. } => None,
        }
    }

    /// The message for an object in `viewer_namespace`: a Secret in another namespace (its
    /// AtlasOrganization's, or the default) is not named, only who owns it.
    pub fn seen_from(&self, viewer_namespace: &str, organization: Option<&str>) -> String {
        match self.namespace() {
            Some(ns) if ns != viewer_namespace => match organization {
                Some(org) => format!(
                    "the credentials of AtlasOrganization {org} are not usable ({}); its status says why",
                    self.reason()
                ),
                None => format!("the operator's default credentials are not usable ({})", self.reason()),
            },
            _ => self.to_string(),
        }
    }

    /// Whether trying again soon can help (an API server hiccup), as opposed to waiting for a change.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }
}

fn field(secret: &Secret, key: &str) -> Result<Option<String>, String> {
    if let Some(bytes) = secret.data.as_ref().and_then(|d| d.get(key)) {
        let text = String::from_utf8(bytes.0.clone()).map_err(|_| format!("{key} is not UTF-8"))?;
        let text = text.trim().to_string();
        return Ok((!text.is_empty()).then_some(text));
    }
    Ok(secret.string_data.as_ref().and_then(|d| d.get(key)).map(|s| s.trim().to_string()).filter(|s| !s.is_empty()))
}

/// Read credentials out of a Secret. The error says which keys are missing, never a value.
pub fn credentials_from_secret(secret: &Secret) -> Result<Credentials, String> {
    let public = field(secret, PUBLIC_API_KEY)?;
    let private = field(secret, PRIVATE_API_KEY)?;
    let client_id = field(secret, CLIENT_ID)?;
    let client_secret = field(secret, CLIENT_SECRET)?;
    match (public, private, client_id, client_secret) {
        (Some(public_key), Some(private_key), None, None) => {
            Ok(Credentials::ApiKey { public_key, private_key: SecretString::from(private_key) })
        }
        (None, None, Some(client_id), Some(client_secret)) => {
            Ok(Credentials::ServiceAccount { client_id, client_secret: SecretString::from(client_secret) })
        }
        (Some(_), Some(_), Some(_), Some(_)) => Err(format!(
            "holds both an API key and a service account; keep one of {PUBLIC_API_KEY}+{PRIVATE_API_KEY} or {CLIENT_ID}+{CLIENT_SECRET}"
        )),
        (p, k, i, s) => {
            let missing: Vec<&str> = match (p.is_some() || k.is_some(), i.is_some() || s.is_some()) {
                (true, _) => [(PUBLIC_API_KEY, p.is_none()), (PRIVATE_API_KEY, k.is_none())]
                    .into_iter()
                    .filter_map(|(n, m)| m.then_some(n))
                    .collect(),
                (false, true) => [(CLIENT_ID, i.is_none()), (CLIENT_SECRET, s.is_none())]
                    .into_iter()
                    .filter_map(|(n, m)| m.then_some(n))
                    .collect(),
                (false, false) => vec![],
            };
            if missing.is_empty() {
                Err(format!(
                    "needs {PUBLIC_API_KEY} and {PRIVATE_API_KEY} (API key) or {CLIENT_ID} and {CLIENT_SECRET} (service account)"
                ))
            } else {
                Err(format!("missing key(s) {}", missing.join(", ")))
            }
        }
    }
}

#[derive(Clone)]
struct CachedClient {
    resource_version: Option<String>,
    client: AtlasClient,
    /// When the Secret was last read (None: read it on the next use).
    checked_at: Option<Instant>,
}

/// The watched (labelled, operator-namespace) Secrets: metadata only.
struct Watched {
    store: Store<PartialObjectMeta<Secret>>,
    synced: tokio::sync::watch::Receiver<bool>,
}

/// How a cached client may be used without reading its Secret.
#[derive(Debug, PartialEq, Eq)]
enum Check {
    /// The watch says the Secret is at this version.
    Watched(Option<String>),
    /// Not watched: trusted while younger than the revalidation period.
    Unwatched,
}

/// Whether a cached client built from the Secret at `cached_rv`, last read at `checked_at`,
/// serves without a read.
fn cached_is_current(
    check: &Check,
    cached_rv: &Option<String>,
    checked_at: Option<Instant>,
    now: Instant,
    revalidate_after: Duration,
) -> bool {
    match check {
        Check::Watched(rv) => rv.is_some() && rv == cached_rv,
        Check::Unwatched => checked_at.is_some_and(|at| now.saturating_duration_since(at) < revalidate_after),
    }
}

/// Default name of the ClusterRole tenants bind (RoleBinding in their namespace) so the operator
/// may read their own credentials Secret.
pub const DEFAULT_TENANT_SECRETS_CLUSTER_ROLE: &str = "atlas-access-operator-tenant-secrets";

/// Where an object's credentials come from, first found wins.
#[derive(Clone, Copy, Debug, Default)]
pub struct CredentialsRef<'a> {
    /// The object's namespace.
    pub namespace: &'a str,
    /// The object's own `spec.credentialsSecretRef` (a Secret in its namespace): the tenant's own key.
    pub own: Option<&'a str>,
    /// The AtlasOrganization of its orgId, and the Secret it names in the operator's namespace.
    pub organization: Option<(&'a str, &'a str)>,
}

/// Atlas clients per credentials Secret.
pub struct AtlasClients {
    template: ClientConfig,
    default_secret: Option<(String, String)>,
    operator_namespace: Option<String>,
    tenant_cluster_role: String,
    cache: Mutex<HashMap<(String, String), CachedClient>>,
    watched: Option<Watched>,
    revalidate_after: Duration,
}

impl AtlasClients {
    /// `template` gives base URL, retry and limits; its credentials are replaced per Secret.
    pub fn new(template: ClientConfig, default_secret: Option<(String, String)>) -> Self {
        Self {
            template,
            default_secret,
            operator_namespace: None,
            tenant_cluster_role: DEFAULT_TENANT_SECRETS_CLUSTER_ROLE.to_string(),
            cache: Mutex::default(),
            watched: None,
            revalidate_after: Duration::ZERO,
        }
    }

    /// The store of the watched Secrets (labelled, operator namespace, metadata only) and
    /// whether it has its first listing: a Secret it holds is read only when its version changes.
    pub fn with_watched_secrets(
        mut self,
        store: Store<PartialObjectMeta<Secret>>,
        synced: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        self.watched = Some(Watched { store, synced });
        self
    }

    /// How long a client built from a Secret that is not watched serves before the Secret is
    /// read again (default zero: read on every use).
    pub fn with_revalidation(mut self, after: Duration) -> Self {
        self.revalidate_after = after;
        self
    }

    /// Read the Secrets an object may use again on their next use (Atlas refused the key
    /// built from one of them: it may have been rotated).
    pub fn recheck(&self, from: CredentialsRef<'_>) {
        let Ok(candidates) = self.candidates(from) else { return };
        let mut cache = self.cache.lock().expect("client cache");
        for key in candidates {
            if let Some(c) = cache.get_mut(&key) {
                c.checked_at = None;
            }
        }
    }

    fn check(&self, ns: &str, name: &str) -> Check {
        match &self.watched {
            Some(w) if *w.synced.borrow() && self.operator_namespace.as_deref() == Some(ns) => {
                match w.store.get(&ObjectRef::new(name).within(ns)) {
                    Some(meta) => Check::Watched(meta.metadata.resource_version.clone()),
                    // Not labelled (or gone): not watched.
                    None => Check::Unwatched,
                }
            }
            _ => Check::Unwatched,
        }
    }

    /// The operator's own namespace (AtlasOrganization credentials live there), and the
    /// ClusterRole name a tenant binds to grant access to its own Secret (for messages).
    pub fn with_tenancy(mut self, operator_namespace: Option<String>, tenant_cluster_role: &str) -> Self {
        self.operator_namespace = operator_namespace;
        self.tenant_cluster_role = tenant_cluster_role.to_string();
        self
    }

    pub fn operator_namespace(&self) -> Option<&str> {
        self.operator_namespace.as_deref()
    }

    /// The Secrets an object may use, in order: its own `credentialsSecretRef` (same
    /// namespace), else its AtlasOrganization's (operator namespace), else the default.
    fn candidates(&self, from: CredentialsRef<'_>) -> Result<Vec<(String, String)>, CredentialsError> {
        let mut out = Vec::new();
        if let Some(name) = from.own {
            out.push((from.namespace.to_string(), name.to_string()));
        }
        if let Some((organization, name)) = from.organization {
            match &self.operator_namespace {
                Some(ns) => out.push((ns.clone(), name.to_string())),
                None if out.is_empty() => {
                    return Err(CredentialsError::NoOperatorNamespace {
                        organization: organization.to_string(),
                        name: name.to_string(),
                    });
                }
                None => {}
            }
        }
        out.extend(self.default_secret.clone());
        Ok(out)
    }

    /// The Secret an object uses, if any.
    pub fn secret_for(&self, from: CredentialsRef<'_>) -> Option<(String, String)> {
        self.candidates(from).ok()?.into_iter().next()
    }

    /// Whether a Secret (namespace, name) is the operator's default credentials.
    pub fn is_default(&self, namespace: &str, name: &str) -> bool {
        self.default_secret.as_ref().is_some_and(|(n, s)| n == namespace && s == name)
    }

    /// The client for an object. With `allow_stale` (clean-up), a Secret that is gone falls
    /// back to the last client built from it, else to the next source in order.
    pub async fn client_for(
        &self,
        kube: &Client,
        from: CredentialsRef<'_>,
        allow_stale: bool,
    ) -> Result<AtlasClient, CredentialsError> {
        let candidates = self.candidates(from)?;
        let mut first_error = None;
        for (i, (ns, name)) in candidates.iter().enumerate() {
            match self.client_from_secret(kube, ns, name, allow_stale).await {
                Ok(client) => return Ok(client),
                // A clean-up whose own Secret went first (namespace deletion removes Secrets in
                // parallel) may still finish with the next credentials in order.
                Err(e @ CredentialsError::Missing { .. }) if allow_stale && i + 1 < candidates.len() => {
                    first_error.get_or_insert(e);
                }
                Err(e) => return Err(first_error.unwrap_or(e)),
            }
        }
        Err(first_error.unwrap_or(CredentialsError::NotConfigured))
    }

    /// The client for one Secret, nothing else (an AtlasOrganization checks its own credentials).
    pub async fn client_for_secret(
        &self,
        kube: &Client,
        ns: &str,
        name: &str,
    ) -> Result<AtlasClient, CredentialsError> {
        self.client_from_secret(kube, ns, name, false).await
    }

    async fn client_from_secret(
        &self,
        kube: &Client,
        ns: &str,
        name: &str,
        allow_stale: bool,
    ) -> Result<AtlasClient, CredentialsError> {
        let key = (ns.to_string(), name.to_string());
        let check = self.check(ns, name);
        if let Some(c) = self.cache.lock().expect("client cache").get(&key)
            && cached_is_current(&check, &c.resource_version, c.checked_at, Instant::now(), self.revalidate_after)
        {
            return Ok(c.client.clone());
        }
        let (namespace, name) = (ns.to_string(), name.to_string());
        let secret = match Api::<Secret>::namespaced(kube.clone(), ns).get_opt(&name).await {
            Ok(s) => s,
            Err(kube::Error::Api(status)) if status.code == 403 => {
                return Err(CredentialsError::NotGranted {
                    namespace,
                    name,
                    cluster_role: self.tenant_cluster_role.clone(),
                });
            }
            Err(e) => {
                return Err(CredentialsError::Unreachable { namespace, name, message: super::describe_kube_error(&e) });
            }
        };
        let Some(secret) = secret else {
            let cached = self.cache.lock().expect("client cache").get(&key).cloned();
            return match cached {
                Some(c) if allow_stale => Ok(c.client),
                _ => Err(CredentialsError::Missing { namespace, name }),
            };
        };
        let rv = secret.metadata.resource_version.clone();
        if let Some(c) = self.cache.lock().expect("client cache").get_mut(&key)
            && c.resource_version == rv
        {
            c.checked_at = Some(Instant::now());
            return Ok(c.client.clone());
        }
        let credentials = credentials_from_secret(&secret).map_err(|reason| CredentialsError::Invalid {
            namespace: namespace.clone(),
            name: name.clone(),
            reason,
        })?;
        let mut config = self.template.clone();
        config.credentials = credentials;
        // Errors (and the per-credential backoff) name the Secret, never its values.
        config.credential_name = Some(format!("Secret {ns}/{name}"));
        let client = AtlasClient::new(config).map_err(|e| CredentialsError::Invalid {
            namespace: namespace.clone(),
            name: name.clone(),
            reason: e.to_string(),
        })?;
        self.cache.lock().expect("client cache").insert(
            key,
            CachedClient { resource_version: rv, client: client.clone(), checked_at: Some(Instant::now()) },
        );
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use secrecy::ExposeSecret;
    use std::collections::BTreeMap;

    fn secret(pairs: &[(&str, &str)]) -> Secret {
        let data: BTreeMap<String, ByteString> =
            pairs.iter().map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec()))).collect();
        Secret { data: Some(data), ..Default::default() }
    }

    #[test]
    fn a_tenant_is_never_told_the_name_of_a_secret_in_another_namespace() {
        let missing = CredentialsError::Missing { namespace: "atlas-access-operator".into(), name: "acme-key".into() };
        let told = missing.seen_from("team-a", Some("acme"));
        assert!(!told.contains("acme-key") && !told.contains("atlas-access-operator"), "{told}");
        assert!(told.contains("AtlasOrganization acme") && told.contains("CredentialsMissing"), "{told}");
        let told = missing.seen_from("team-a", None);
        assert!(!told.contains("acme-key") && told.contains("default credentials"), "{told}");
        // Its own Secret, in its own namespace: named.
        let own = CredentialsError::Missing { namespace: "team-a".into(), name: "mine".into() };
        assert_eq!(own.seen_from("team-a", Some("acme")), "credentials Secret team-a/mine not found");
    }

    #[test]
    fn a_cached_client_serves_without_a_read_while_its_secret_is_known_unchanged() {
        let now = Instant::now();
        let period = Duration::from_secs(240);
        let rv = |v: &str| Some(v.to_string());
        let ago = |s: u64| now.checked_sub(Duration::from_secs(s));
        // (how the Secret is known, cached version, last read, serves without a read)
        let cases: &[(Check, Option<String>, Option<Instant>, bool)] = &[
            (Check::Watched(rv("7")), rv("7"), ago(10_000), true),
            (Check::Watched(rv("8")), rv("7"), ago(1), false),
            (Check::Watched(None), None, ago(1), false),
            (Check::Unwatched, rv("7"), ago(10), true),
            (Check::Unwatched, rv("7"), ago(240), false),
            (Check::Unwatched, rv("7"), None, false),
        ];
        for (check, cached, at, expected) in cases {
            assert_eq!(cached_is_current(check, cached, *at, now, period), *expected, "{check:?} {cached:?} {at:?}");
        }
        // Without a revalidation period (the default) an unwatched Secret is read on every use.
        assert!(!cached_is_current(&Check::Unwatched, &rv("7"), Some(now), now, Duration::ZERO));
    }

    #[test]
    fn parses_both_kinds_and_names_missing_keys() {
        match credentials_from_secret(&secret(&[("publicApiKey", "pub"), ("privateApiKey", "priv")])).unwrap() {
            Credentials::ApiKey { public_key, private_key } => {
                assert_eq!(public_key, "pub");
                assert_eq!(private_key.expose_secret(), "priv");
            }
            _ => panic!("expected an API key"),
        }
        assert!(matches!(
            credentials_from_secret(&secret(&[("clientId", "id"), ("clientSecret", "s")])).unwrap(),
            Credentials::ServiceAccount { .. }
        ));
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("publicApiKey", "pub")], "missing key(s) privateApiKey"),
            (&[("clientSecret", "canary-value")], "missing key(s) clientId"),
            (&[], "needs publicApiKey and privateApiKey"),
            (&[("publicApiKey", "  "), ("privateApiKey", "x")], "missing key(s) publicApiKey"),
            (&[("publicApiKey", "p"), ("privateApiKey", "k"), ("clientId", "i"), ("clientSecret", "s")], "holds both"),
        ];
        for (pairs, expected) in cases {
            let err = credentials_from_secret(&secret(pairs)).err().unwrap();
            assert!(err.contains(expected), "{pairs:?}: {err}");
            assert!(!err.contains("canary-value"));
        }
    }
}
