//! Authentication as Atlas does it: HTTP Digest (RFC 7616: realm "MMS Public API", qop=auth,
//! MD5) for API keys, and OAuth 2.0 client credentials for service accounts (bearer tokens that
//! expire on the simulator clock).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use axum::http::{StatusCode, header};
use base64::Engine;
use jiff::{SignedDuration, Timestamp};
use md5::{Digest, Md5};
use rand::RngCore;

use super::error::ApiFailure;
use super::error::codes;
use crate::atlas::models::TokenResponse;

/// The realm Atlas names in its digest challenge.
pub const REALM: &str = "MMS Public API";
/// How long a server nonce may be reused (with increasing `nc`) before it is stale.
const NONCE_LIFETIME: Duration = Duration::from_secs(600);

/// Who made an authenticated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// An API key, by its public key.
    ApiKey(String),
    /// A service account, by its client id.
    ServiceAccount(String),
}

impl Principal {
    pub fn describe(&self) -> String {
        match self {
            Self::ApiKey(key) => format!("apiKey:{key}"),
            Self::ServiceAccount(id) => format!("serviceAccount:{id}"),
        }
    }
}

struct NonceState {
    issued: Instant,
    seen: HashSet<u32>,
}

struct TokenRec {
    client_id: String,
    expires_at: Timestamp,
}

pub(crate) struct Auth {
    api_keys: HashMap<String, String>,
    service_accounts: HashMap<String, String>,
    nonces: HashMap<String, NonceState>,
    tokens: HashMap<String, TokenRec>,
}

/// The parameters of an `Authorization: Digest ...` header.
pub(crate) fn parse_auth_params(s: &str) -> HashMap<String, String> {
    let mut params = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_ascii_lowercase();
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            out.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => out.push(c),
                }
            }
            value = out;
            rest = &quoted[end.min(quoted.len())..];
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_string();
            rest = &rest[end..];
        }
        rest = rest.trim_start().trim_start_matches(',').trim_start();
        params.insert(key, value);
    }
    params
}

fn md5_hex(s: &str) -> String {
    hex::encode(Md5::digest(s.as_bytes()))
}

/// The RFC 7616 `response` for qop=auth with MD5.
pub fn digest_response(
    username: &str,
    password: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    nc: &str,
    cnonce: &str,
) -> String {
    let ha1 = md5_hex(&format!("{username}:{REALM}:{password}"));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

fn unauthorized(detail: &str) -> ApiFailure {
    ApiFailure::new(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED, detail)
}

impl Auth {
    pub fn new(api_keys: &[(String, String)], service_accounts: &[(String, String)]) -> Self {
        Self {
            api_keys: api_keys.iter().cloned().collect(),
            service_accounts: service_accounts.iter().cloned().collect(),
            nonces: HashMap::new(),
            tokens: HashMap::new(),
        }
    }

    /// A 401 carrying a fresh digest challenge.
    pub fn challenge(&mut self, detail: &str, stale: bool) -> ApiFailure {
        self.nonces.retain(|_, n| n.issued.elapsed() < NONCE_LIFETIME);
        let nonce = random_hex(16);
        self.nonces.insert(nonce.clone(), NonceState { issued: Instant::now(), seen: HashSet::new() });
        unauthorized(detail).with_header(
            header::WWW_AUTHENTICATE,
            format!(
                "Digest realm=\"{REALM}\", domain=\"\", nonce=\"{nonce}\", algorithm=MD5, qop=\"auth\", stale={stale}"
            ),
        )
    }

    /// Checks an API request's `Authorization` header (digest or bearer).
    pub fn authenticate(
        &mut self,
        method: &str,
        uri: &str,
        authorization: Option<&str>,
        now: Timestamp,
    ) -> Result<Principal, ApiFailure> {
        const NOT_AUTHORIZED: &str = "You are not authorized for this resource.";
        let Some(authorization) = authorization else {
            return Err(self.challenge(NOT_AUTHORIZED, false));
        };
        if let Some(token) = authorization.strip_prefix("Bearer ") {
            return match self.tokens.get(token.trim()) {
                Some(rec) if rec.expires_at > now => Ok(Principal::ServiceAccount(rec.client_id.clone())),
                Some(_) => {
                    self.tokens.remove(token.trim());
                    Err(self.challenge("The access token has expired.", false))
                }
                None => Err(self.challenge("The access token is not valid.", false)),
            };
        }
        let Some(params) = authorization.strip_prefix("Digest ").map(parse_auth_params) else {
            return Err(self.challenge(NOT_AUTHORIZED, false));
        };
        let get = |k: &str| params.get(k).map(String::as_str).unwrap_or("");
        let (username, nonce, nc, cnonce) = (get("username"), get("nonce"), get("nc"), get("cnonce"));
        let algorithm_ok = matches!(get("algorithm"), "" | "MD5" | "md5");
        if get("realm") != REALM || get("qop") != "auth" || !algorithm_ok || cnonce.is_empty() || get("uri") != uri {
            return Err(self.challenge(NOT_AUTHORIZED, false));
        }
        let Ok(count) = u32::from_str_radix(nc, 16) else {
            return Err(self.challenge(NOT_AUTHORIZED, false));
        };
        let Some(password) = self.api_keys.get(username) else {
            return Err(self.challenge(NOT_AUTHORIZED, false));
        };
        let expected = digest_response(username, password, method, uri, nonce, nc, cnonce);
        if !expected.eq_ignore_ascii_case(get("response")) {
            return Err(self.challenge(NOT_AUTHORIZED, false));
        }
        let fresh = match self.nonces.get_mut(nonce) {
            Some(state) if state.issued.elapsed() < NONCE_LIFETIME => Some(state.seen.insert(count)),
            _ => None,
        };
        match fresh {
            Some(true) => Ok(Principal::ApiKey(username.to_string())),
            // A replayed nonce count: refuse, and offer a new nonce.
            Some(false) => Err(self.challenge(NOT_AUTHORIZED, false)),
            // Right credentials, unknown or old nonce: the client should retry with the new one.
            None => Err(self.challenge(NOT_AUTHORIZED, true)),
        }
    }

    /// `POST /api/oauth/token`: HTTP Basic `clientId:clientSecret`, client credentials grant.
    pub fn issue_token(
        &mut self,
        authorization: Option<&str>,
        grant_type: Option<&str>,
        now: Timestamp,
        ttl: Duration,
    ) -> Result<(String, TokenResponse), ApiFailure> {
        let credentials = authorization
            .and_then(|a| a.strip_prefix("Basic "))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
            .and_then(|b| String::from_utf8(b).ok());
        let Some((client_id, secret)) = credentials.as_deref().and_then(|c| c.split_once(':')) else {
            return Err(unauthorized("Client credentials are missing.")
                .with_header(header::WWW_AUTHENTICATE, format!("Basic realm=\"{REALM}\"")));
        };
        if self.service_accounts.get(client_id).is_none_or(|s| s != secret) {
            return Err(unauthorized("Invalid client credentials.")
                .with_header(header::WWW_AUTHENTICATE, format!("Basic realm=\"{REALM}\"")));
        }
        if grant_type != Some("client_credentials") {
            return Err(ApiFailure::invalid("grant_type", "must be client_credentials"));
        }
        self.tokens.retain(|_, t| t.expires_at > now);
        let token = random_hex(32);
        let lifetime = SignedDuration::try_from(ttl).unwrap_or(SignedDuration::MAX);
        let expires_at = now.checked_add(lifetime).unwrap_or(Timestamp::MAX);
        self.tokens.insert(token.clone(), TokenRec { client_id: client_id.to_string(), expires_at });
        Ok((
            client_id.to_string(),
            TokenResponse { access_token: token, expires_in: ttl.as_secs(), token_type: "Bearer".to_string() },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quoted_and_bare_parameters() {
        let p = parse_auth_params(
            r#"username="pub", realm="MMS Public API", nonce="abc", uri="/x?a=1,2", qop=auth, nc=00000001, cnonce="c""#,
        );
        assert_eq!(p["username"], "pub");
        assert_eq!(p["realm"], "MMS Public API");
        assert_eq!(p["uri"], "/x?a=1,2");
        assert_eq!(p["qop"], "auth");
        assert_eq!(p["nc"], "00000001");
        assert_eq!(p["cnonce"], "c");
    }

    #[test]
    fn digest_response_matches_rfc_2617_example_shape() {
        // RFC 2617 section 3.5 example (realm differs there, so compute HA1 by hand).
        let ha1 = md5_hex(&format!("Mufasa:{REALM}:Circle Of Life"));
        let ha2 = md5_hex("GET:/dir/index.html");
        let want = md5_hex(&format!("{ha1}:n:00000001:c:auth:{ha2}"));
        assert_eq!(digest_response("Mufasa", "Circle Of Life", "GET", "/dir/index.html", "n", "00000001", "c"), want);
    }

    #[test]
    fn accepts_a_reused_nonce_with_a_new_count_and_refuses_a_replay() {
        let mut auth = Auth::new(&[("pub".into(), "priv".into())], &[]);
        let challenge = auth.challenge("x", false);
        let www = &challenge.headers[0].1;
        let nonce = parse_auth_params(www.strip_prefix("Digest ").unwrap())["nonce"].clone();
        let header = |nc: &str| {
            let r = digest_response("pub", "priv", "GET", "/a", &nonce, nc, "cn");
            format!(
                r#"Digest username="pub", realm="{REALM}", nonce="{nonce}", uri="/a", qop=auth, nc={nc}, cnonce="cn", response="{r}", algorithm=MD5"#
            )
        };
        let now = Timestamp::now();
        assert!(auth.authenticate("GET", "/a", Some(&header("00000001")), now).is_ok());
        assert!(auth.authenticate("GET", "/a", Some(&header("00000002")), now).is_ok());
        assert!(auth.authenticate("GET", "/a", Some(&header("00000002")), now).is_err());
        assert!(auth.authenticate("GET", "/b", Some(&header("00000003")), now).is_err());
    }
}
