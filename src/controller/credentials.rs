//! Atlas credentials from Secrets, and one Atlas client per Secret.
//!
//! A Secret holds `publicApiKey` + `privateApiKey` (API key, HTTP Digest) or `clientId` +
//! `clientSecret` (service account) — the keys the official Atlas operator uses. Clients
//! are cached per Secret and rebuilt when the Secret's `resourceVersion` changes, so a
//! service-account token or digest session is reused across reconciles, and a deletion can
//! still finish with the last good client after the Secret itself is gone.

use std::collections::HashMap;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Secret;
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
        "no credentials: the object has no spec.credentialsSecretRef and the operator runs without --default-credentials-secret"
    )]
    NotConfigured,
    #[error("reading credentials Secret {namespace}/{name}: {message}")]
    Unreachable { namespace: String, name: String, message: String },
}

impl CredentialsError {
    /// The condition reason users see.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing { .. } | Self::NotConfigured => "CredentialsMissing",
            Self::Invalid { .. } => "CredentialsInvalid",
            Self::Unreachable { .. } => "CredentialsUnreachable",
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
}

/// Atlas clients per credentials Secret.
pub struct AtlasClients {
    template: ClientConfig,
    default_secret: Option<(String, String)>,
    cache: Mutex<HashMap<(String, String), CachedClient>>,
}

impl AtlasClients {
    /// `template` gives base URL, retry and limits; its credentials are replaced per Secret.
    pub fn new(template: ClientConfig, default_secret: Option<(String, String)>) -> Self {
        Self { template, default_secret, cache: Mutex::default() }
    }

    /// The Secret an object uses: its own `credentialsSecretRef` (same namespace), else the default.
    pub fn secret_for(&self, namespace: &str, secret_ref: Option<&str>) -> Option<(String, String)> {
        match secret_ref {
            Some(name) => Some((namespace.to_string(), name.to_string())),
            None => self.default_secret.clone(),
        }
    }

    /// Whether a Secret (namespace, name) is the operator's default credentials.
    pub fn is_default(&self, namespace: &str, name: &str) -> bool {
        self.default_secret.as_ref().is_some_and(|(n, s)| n == namespace && s == name)
    }

    /// The client for an object. With `allow_stale` (clean-up), a Secret that is gone falls
    /// back to the last client built from it.
    pub async fn client_for(
        &self,
        kube: &Client,
        namespace: &str,
        secret_ref: Option<&str>,
        allow_stale: bool,
    ) -> Result<AtlasClient, CredentialsError> {
        let (ns, name) = self.secret_for(namespace, secret_ref).ok_or(CredentialsError::NotConfigured)?;
        let key = (ns.clone(), name.clone());
        let secret = match Api::<Secret>::namespaced(kube.clone(), &ns).get_opt(&name).await {
            Ok(s) => s,
            Err(e) => {
                return Err(CredentialsError::Unreachable { namespace: ns, name, message: e.to_string() });
            }
        };
        let Some(secret) = secret else {
            let cached = self.cache.lock().expect("client cache").get(&key).cloned();
            return match cached {
                Some(c) if allow_stale => Ok(c.client),
                // A clean-up whose own Secret went first (namespace deletion removes Secrets in
                // parallel) may still finish with the operator's default credentials.
                None if allow_stale && secret_ref.is_some() && self.default_secret.is_some() => {
                    Box::pin(self.client_for(kube, namespace, None, false)).await
                }
                _ => Err(CredentialsError::Missing { namespace: ns, name }),
            };
        };
        let rv = secret.metadata.resource_version.clone();
        if let Some(c) = self.cache.lock().expect("client cache").get(&key)
            && c.resource_version == rv
        {
            return Ok(c.client.clone());
        }
        let credentials = credentials_from_secret(&secret).map_err(|reason| CredentialsError::Invalid {
            namespace: ns.clone(),
            name: name.clone(),
            reason,
        })?;
        let mut config = self.template.clone();
        config.credentials = credentials;
        // Errors (and the per-credential backoff) name the Secret, never its values.
        config.credential_name = Some(format!("Secret {ns}/{name}"));
        let client = AtlasClient::new(config).map_err(|e| CredentialsError::Invalid {
            namespace: ns.clone(),
            name: name.clone(),
            reason: e.to_string(),
        })?;
        self.cache
            .lock()
            .expect("client cache")
            .insert(key, CachedClient { resource_version: rv, client: client.clone() });
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
