//! Authentication: HTTP Digest for API keys (RFC 7616, MD5 as Atlas asks, the challenge
//! reused with an increasing nonce count so a call costs no extra 401), and the service
//! account token cache (one token per client, refreshed before it expires, one fetch at a
//! time).

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use md5::{Digest as _, Md5};
use reqwest::header::{HeaderMap, HeaderValue, WWW_AUTHENTICATE};
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;
use url::Url;

use super::dependency::Dependency;
use super::error::{AtlasError, TOKEN_OPERATION, TransportKind, retry_after};
use super::metrics::AtlasMetrics;
use super::models::TokenResponse;

/// The `algorithm` of a digest challenge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DigestAlgorithm {
    Md5,
    Md5Sess,
}

impl DigestAlgorithm {
    fn as_str(self) -> &'static str {
        match self {
            Self::Md5 => "MD5",
            Self::Md5Sess => "MD5-sess",
        }
    }
}

/// A parsed `WWW-Authenticate: Digest ...` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigestChallenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    /// The server offers `qop=auth` (otherwise RFC 2069 compatibility mode).
    pub qop_auth: bool,
    pub algorithm: DigestAlgorithm,
    /// The nonce the client used has expired; the credentials were fine.
    pub stale: bool,
}

/// Why a challenge cannot be answered.
#[derive(Debug, PartialEq, Eq)]
pub enum ChallengeError {
    NotDigest,
    Malformed(&'static str),
    Unsupported(String),
}

impl DigestChallenge {
    /// Find and parse a Digest challenge among a response's `WWW-Authenticate` headers.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ChallengeError> {
        let mut last = ChallengeError::NotDigest;
        for value in headers.get_all(WWW_AUTHENTICATE) {
            let Ok(text) = value.to_str() else { continue };
            match Self::parse(text) {
                Ok(c) => return Ok(c),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Parse one `WWW-Authenticate` value.
    pub fn parse(header: &str) -> Result<Self, ChallengeError> {
        let header = header.trim_start();
        let (scheme, rest) = header.split_once(char::is_whitespace).unwrap_or((header, ""));
        if !scheme.eq_ignore_ascii_case("digest") {
            return Err(ChallengeError::NotDigest);
        }
        let params = parse_auth_params(rest).ok_or(ChallengeError::Malformed("unbalanced quotes"))?;
        let get = |name: &str| params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone());
        let realm = get("realm").ok_or(ChallengeError::Malformed("no realm"))?;
        let nonce = get("nonce").ok_or(ChallengeError::Malformed("no nonce"))?;
        let algorithm = match get("algorithm") {
            None => DigestAlgorithm::Md5,
            Some(a) if a.eq_ignore_ascii_case("MD5") => DigestAlgorithm::Md5,
            Some(a) if a.eq_ignore_ascii_case("MD5-sess") => DigestAlgorithm::Md5Sess,
            Some(a) => return Err(ChallengeError::Unsupported(format!("digest algorithm {a}"))),
        };
        let qop_auth = match get("qop") {
            None => false,
            Some(q) => {
                if q.split(',').any(|o| o.trim().eq_ignore_ascii_case("auth")) {
                    true
                } else {
                    return Err(ChallengeError::Unsupported(format!("digest qop {q}")));
                }
            }
        };
        let stale = get("stale").is_some_and(|s| s.eq_ignore_ascii_case("true"));
        Ok(Self { realm, nonce, opaque: get("opaque"), qop_auth, algorithm, stale })
    }
}

/// `name=value` or `name="quoted, value"` pairs separated by commas.
fn parse_auth_params(mut s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    loop {
        s = s.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        if s.is_empty() {
            return Some(out);
        }
        let eq = s.find('=')?;
        let name = s[..eq].trim().to_string();
        s = s[eq + 1..].trim_start();
        if let Some(quoted) = s.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                match chars.next()? {
                    (_, '\\') => value.push(chars.next()?.1),
                    (i, '"') => break i,
                    (_, c) => value.push(c),
                }
            };
            out.push((name, value));
            s = &quoted[end + 1..];
        } else {
            let end = s.find(',').unwrap_or(s.len());
            out.push((name, s[..end].trim().to_string()));
            s = &s[end..];
        }
    }
}

fn md5_hex(data: &str) -> String {
    hex::encode(Md5::digest(data.as_bytes()))
}

/// The `response` value of a digest `Authorization` header (RFC 2617 §3.2.2, RFC 7616 §3.4.1).
#[allow(clippy::too_many_arguments)]
pub fn digest_response(
    algorithm: DigestAlgorithm,
    username: &str,
    password: &str,
    realm: &str,
    nonce: &str,
    cnonce: &str,
    nc: u32,
    qop_auth: bool,
    method: &str,
    uri: &str,
) -> String {
    let mut ha1 = md5_hex(&format!("{username}:{realm}:{password}"));
    if algorithm == DigestAlgorithm::Md5Sess {
        ha1 = md5_hex(&format!("{ha1}:{nonce}:{cnonce}"));
    }
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    if qop_auth {
        md5_hex(&format!("{ha1}:{nonce}:{nc:08x}:{cnonce}:auth:{ha2}"))
    } else {
        md5_hex(&format!("{ha1}:{nonce}:{ha2}"))
    }
}

fn quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// HTTP Digest with an Atlas programmatic API key.
pub(crate) struct DigestAuth {
    username: String,
    password: SecretString,
    /// The last challenge and the nonce count used with it, shared by concurrent calls.
    state: Mutex<Option<(DigestChallenge, u32)>>,
    /// Whether a request is out without a challenge to fetch one: the others wait for its
    /// answer instead of each drawing a 401 of their own (a client starting 100 calls at once
    /// sent 100 unanswerable requests, all refused, all sent again).
    fetching: Mutex<bool>,
    /// Wakes the waiters when that request has its answer (or failed).
    fetched: tokio::sync::Notify,
}

/// Held by the request that fetches the digest challenge; dropped once its answer is taken.
pub(crate) struct ChallengeFetch<'a> {
    auth: &'a DigestAuth,
}

impl Drop for ChallengeFetch<'_> {
    fn drop(&mut self) {
        *self.auth.fetching.lock().expect("digest state lock") = false;
        self.auth.fetched.notify_waiters();
    }
}

impl DigestAuth {
    pub(crate) fn new(username: String, password: SecretString) -> Self {
        Self {
            username,
            password,
            state: Mutex::new(None),
            fetching: Mutex::new(false),
            fetched: tokio::sync::Notify::new(),
        }
    }

    /// [`Self::authorize`], or how to go without a challenge: `Err(Some(fetch))` for the one
    /// caller that fetches it (it sends the request without `Authorization` and holds `fetch`
    /// until its 401 is taken by [`Self::on_unauthorized`]); the callers that come meanwhile
    /// wait for that answer and then use its challenge. A waiter waits for one fetch only:
    /// if it brought no challenge (Atlas failed or never answered), `Err(None)`, and it goes
    /// without one itself, so a wedged Atlas costs each call one timeout more, not one per
    /// caller ahead of it.
    pub(crate) async fn authorize_or_challenge(
        &self,
        method: &str,
        uri: &str,
    ) -> Result<(HeaderValue, String), Option<ChallengeFetch<'_>>> {
        if let Some(authorized) = self.authorize(method, uri) {
            return Ok(authorized);
        }
        let fetched = self.fetched.notified();
        tokio::pin!(fetched);
        // Registered before the check: a fetch that ends after it wakes this caller.
        fetched.as_mut().enable();
        {
            let mut fetching = self.fetching.lock().expect("digest state lock");
            if !*fetching {
                *fetching = true;
                return Err(Some(ChallengeFetch { auth: self }));
            }
        }
        fetched.await;
        self.authorize(method, uri).ok_or(None)
    }

    /// An `Authorization` header for this request from the cached challenge, and the nonce
    /// it used; `None` before the first challenge.
    fn authorize(&self, method: &str, uri: &str) -> Option<(HeaderValue, String)> {
        let (challenge, nc) = {
            let mut state = self.state.lock().expect("digest state lock");
            let (challenge, nc) = state.as_mut()?;
            *nc += 1;
            (challenge.clone(), *nc)
        };
        let cnonce = hex::encode(rand::random::<[u8; 16]>());
        let response = digest_response(
            challenge.algorithm,
            &self.username,
            self.password.expose_secret(),
            &challenge.realm,
            &challenge.nonce,
            &cnonce,
            nc,
            challenge.qop_auth,
            method,
            uri,
        );
        let mut header = format!(
            "Digest username={}, realm={}, nonce={}, uri={}, algorithm={}, response={}",
            quote(&self.username),
            quote(&challenge.realm),
            quote(&challenge.nonce),
            quote(uri),
            challenge.algorithm.as_str(),
            quote(&response)
        );
        if challenge.qop_auth {
            let _ = write!(header, ", qop=auth, nc={nc:08x}, cnonce={}", quote(&cnonce));
        }
        if let Some(opaque) = &challenge.opaque {
            let _ = write!(header, ", opaque={}", quote(opaque));
        }
        let mut value = HeaderValue::from_str(&header).ok()?;
        value.set_sensitive(true);
        Some((value, challenge.nonce))
    }

    /// Take the challenge of a 401. Whether to send the request again: yes if the client
    /// had no challenge yet, or used a nonce the server no longer accepts; no if the server
    /// refused an answer to its current nonce (bad credentials).
    pub(crate) fn on_unauthorized(
        &self,
        operation: &'static str,
        headers: &HeaderMap,
        used_nonce: Option<&str>,
    ) -> Result<bool, AtlasError> {
        let challenge = match DigestChallenge::from_headers(headers) {
            Ok(c) => c,
            Err(ChallengeError::NotDigest) => return Ok(false),
            Err(ChallengeError::Malformed(why)) => {
                return Err(AtlasError::Authentication {
                    operation,
                    message: format!("malformed digest challenge: {why}"),
                });
            }
            Err(ChallengeError::Unsupported(what)) => {
                return Err(AtlasError::Authentication { operation, message: format!("unsupported {what}") });
            }
        };
        let retry = match used_nonce {
            None => true,
            Some(used) => challenge.stale || challenge.nonce != used,
        };
        let mut state = self.state.lock().expect("digest state lock");
        // A concurrent call may already have stored a newer challenge; keep its count.
        if state.as_ref().is_none_or(|(c, _)| c.nonce != challenge.nonce) {
            *state = Some((challenge, 0));
        }
        Ok(retry)
    }
}

struct CachedToken {
    token: SecretString,
    refresh_at: Instant,
    generation: u64,
}

#[derive(Default)]
struct TokenState {
    current: Option<CachedToken>,
    /// The error of the last fetch if it failed: callers that queued behind a failed fetch
    /// get its error instead of each fetching again at once.
    last_failure: Option<AtlasError>,
}

/// Service account (OAuth 2.0 client credentials) token cache.
pub(crate) struct TokenCache {
    client_id: String,
    client_secret: SecretString,
    token_url: Url,
    refresh_margin: Duration,
    /// Time limit of one token request: the lock every caller of this credential waits on
    /// is never held longer.
    timeout: Duration,
    state: tokio::sync::Mutex<TokenState>,
    generations: AtomicU64,
    fetches_done: AtomicU64,
}

impl TokenCache {
    pub(crate) fn new(
        client_id: String,
        client_secret: SecretString,
        token_url: Url,
        refresh_margin: Duration,
        timeout: Duration,
    ) -> Self {
        Self {
            client_id,
            client_secret,
            token_url,
            refresh_margin,
            timeout,
            state: tokio::sync::Mutex::new(TokenState::default()),
            generations: AtomicU64::new(0),
            fetches_done: AtomicU64::new(0),
        }
    }

    /// A `Bearer` header with a valid token and the token's generation (to drop exactly
    /// this token on a 401). Fetches at most one token at a time for all callers.
    pub(crate) async fn authorize(
        &self,
        http: &reqwest::Client,
        metrics: &AtlasMetrics,
    ) -> Result<(HeaderValue, u64), AtlasError> {
        let fetches_before = self.fetches_done.load(Ordering::Acquire);
        let mut state = self.state.lock().await;
        if let Some(token) = &state.current
            && Instant::now() < token.refresh_at
        {
            return Ok((bearer(&token.token), token.generation));
        }
        if let Some(err) = &state.last_failure
            && fetches_before != self.fetches_done.load(Ordering::Acquire)
        {
            return Err(err.clone());
        }
        let fetched = match tokio::time::timeout(self.timeout, self.fetch(http)).await {
            Ok(fetched) => fetched,
            Err(_) => Err(AtlasError::Transport {
                operation: TOKEN_OPERATION,
                kind: TransportKind::Timeout,
                message: format!("no token within {}s", self.timeout.as_secs_f64()),
            }),
        };
        if let Err(AtlasError::Transport { kind: TransportKind::Timeout, .. }) = &fetched {
            metrics.timeout(TOKEN_OPERATION);
        }
        self.fetches_done.fetch_add(1, Ordering::Release);
        metrics.token_fetch(if fetched.is_ok() { "success" } else { "failure" });
        match &fetched {
            Err(e @ AtlasError::Transport { .. }) => {
                metrics.dependencies.unanswered(Dependency::TokenEndpoint, e.to_string())
            }
            _ => metrics.dependencies.answered(Dependency::TokenEndpoint),
        }
        match fetched {
            Ok(response) => {
                let ttl = Duration::from_secs(response.expires_in);
                // Refresh ~10 minutes early, but use a short-lived token for half its life.
                let margin = self.refresh_margin.min(ttl / 2);
                let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
                let token = CachedToken {
                    token: SecretString::from(response.access_token),
                    refresh_at: Instant::now() + ttl - margin,
                    generation,
                };
                let header = bearer(&token.token);
                state.current = Some(token);
                state.last_failure = None;
                Ok((header, generation))
            }
            Err(err) => {
                state.current = None;
                state.last_failure = Some(err.clone());
                Err(err)
            }
        }
    }

    /// Drop the token of this generation (Atlas refused it); a newer one is kept.
    pub(crate) async fn invalidate(&self, generation: u64) {
        let mut state = self.state.lock().await;
        if state.current.as_ref().is_some_and(|t| t.generation == generation) {
            state.current = None;
        }
    }

    async fn fetch(&self, http: &reqwest::Client) -> Result<TokenResponse, AtlasError> {
        let response = http
            .post(self.token_url.clone())
            .timeout(self.timeout)
            .basic_auth(&self.client_id, Some(self.client_secret.expose_secret()))
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .map_err(|e| AtlasError::from_reqwest(TOKEN_OPERATION, e))?;
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        let body = response.bytes().await.map_err(|e| AtlasError::from_reqwest(TOKEN_OPERATION, e))?;
        if (200..300).contains(&status) {
            return serde_json::from_slice::<TokenResponse>(&body).map_err(|e| AtlasError::Decode {
                operation: TOKEN_OPERATION,
                status,
                message: format!("not a token response: {e}"),
            });
        }
        let (error_code, detail) = token_error(&body);
        Err(AtlasError::Token { status, error_code, detail, retry_after })
    }
}

/// The code and description of a token endpoint error: an OAuth error
/// (`{error, error_description}`) or an Atlas `ApiError`.
fn token_error(body: &[u8]) -> (String, Option<String>) {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else { return (String::new(), None) };
    let text = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_string);
    match (text("errorCode"), text("error")) {
        (Some(code), _) => (code, text("detail")),
        (None, Some(code)) => (code, text("error_description")),
        (None, None) => (String::new(), None),
    }
}

fn bearer(token: &SecretString) -> HeaderValue {
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
        .unwrap_or_else(|_| HeaderValue::from_static("Bearer invalid"));
    value.set_sensitive(true);
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 2617 §3.5.
    #[test]
    fn rfc2617_example() {
        let response = digest_response(
            DigestAlgorithm::Md5,
            "Mufasa",
            "Circle Of Life",
            "testrealm@host.com",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            "0a4f113b",
            1,
            true,
            "GET",
            "/dir/index.html",
        );
        assert_eq!(response, "6629fae49393a05397450978507c4ef1");
    }

    /// RFC 7616 §3.9.1 (the MD5 half of the example).
    #[test]
    fn rfc7616_md5_example() {
        let response = digest_response(
            DigestAlgorithm::Md5,
            "Mufasa",
            "Circle of Life",
            "http-auth@example.org",
            "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
            "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
            1,
            true,
            "GET",
            "/dir/index.html",
        );
        assert_eq!(response, "8ca523f5e9506fed4657c9700eebdbec");
    }

    /// RFC 2069 mode (no qop) and MD5-sess, checked against the formulas step by step.
    #[test]
    fn rfc2069_and_md5_sess() {
        let ha1 = md5_hex("u:r:p");
        let ha2 = md5_hex("GET:/x");
        assert_eq!(
            digest_response(DigestAlgorithm::Md5, "u", "p", "r", "n", "c", 1, false, "GET", "/x"),
            md5_hex(&format!("{ha1}:n:{ha2}"))
        );
        let sess = md5_hex(&format!("{ha1}:n:c"));
        assert_eq!(
            digest_response(DigestAlgorithm::Md5Sess, "u", "p", "r", "n", "c", 2, true, "GET", "/x"),
            md5_hex(&format!("{sess}:n:00000002:c:auth:{ha2}"))
        );
    }

    #[test]
    fn parses_the_atlas_challenge() {
        let c = DigestChallenge::parse(
            r#"Digest realm="MMS Public API", domain="", nonce="abc/def+=", algorithm=MD5, qop="auth", stale=false"#,
        )
        .unwrap();
        assert_eq!(c.realm, "MMS Public API");
        assert_eq!(c.nonce, "abc/def+=");
        assert!(c.qop_auth);
        assert!(!c.stale);
        assert_eq!(c.algorithm, DigestAlgorithm::Md5);
        assert_eq!(c.opaque, None);
    }

    #[test]
    fn parses_quoted_commas_escapes_and_options() {
        let c = DigestChallenge::parse(
            r#"digest realm="a, \"b\"",qop="auth-int, auth",nonce=n1,opaque="o",algorithm=MD5-sess,stale=TRUE"#,
        )
        .unwrap();
        assert_eq!(c.realm, r#"a, "b""#);
        assert_eq!(c.nonce, "n1");
        assert_eq!(c.opaque.as_deref(), Some("o"));
        assert!(c.qop_auth && c.stale);
        assert_eq!(c.algorithm, DigestAlgorithm::Md5Sess);
    }

    #[test]
    fn refuses_what_it_cannot_answer() {
        assert_eq!(DigestChallenge::parse(r#"Basic realm="x""#), Err(ChallengeError::NotDigest));
        assert!(matches!(
            DigestChallenge::parse(r#"Digest realm="x", nonce="n", algorithm=SHA-256"#),
            Err(ChallengeError::Unsupported(_))
        ));
        assert!(matches!(
            DigestChallenge::parse(r#"Digest realm="x", qop="auth-int", nonce="n""#),
            Err(ChallengeError::Unsupported(_))
        ));
        assert_eq!(DigestChallenge::parse(r#"Digest realm="x""#), Err(ChallengeError::Malformed("no nonce")));
        assert_eq!(
            DigestChallenge::parse(r#"Digest realm="x, nonce=n"#),
            Err(ChallengeError::Malformed("unbalanced quotes"))
        );
    }

    #[test]
    fn authorization_reuses_the_nonce_with_increasing_count() {
        let auth = DigestAuth::new("pub-key".into(), SecretString::from("priv-key"));
        assert!(auth.authorize("GET", "/a").is_none());
        let mut headers = HeaderMap::new();
        headers.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Digest realm="MMS Public API", qop="auth", nonce="N1", algorithm=MD5"#),
        );
        assert!(auth.on_unauthorized("getOrg", &headers, None).unwrap());
        let (first, nonce) = auth.authorize("GET", "/api/atlas/v2/orgs/x?pageNum=1").unwrap();
        assert_eq!(nonce, "N1");
        assert!(first.is_sensitive());
        let first = first.to_str().unwrap().to_string();
        assert!(first.starts_with(
            r#"Digest username="pub-key", realm="MMS Public API", nonce="N1", uri="/api/atlas/v2/orgs/x?pageNum=1""#
        ));
        assert!(first.contains("nc=00000001"));
        assert!(!first.contains("priv-key"));
        let (second, _) = auth.authorize("GET", "/b").unwrap();
        assert!(second.to_str().unwrap().contains("nc=00000002"));
        // The same nonce refused again: the credentials are wrong, do not loop.
        assert!(!auth.on_unauthorized("getOrg", &headers, Some("N1")).unwrap());
        // A new nonce (the old one expired): answer it, counting from 1 again.
        headers.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Digest realm="MMS Public API", qop="auth", nonce="N2", stale=true"#),
        );
        assert!(auth.on_unauthorized("getOrg", &headers, Some("N1")).unwrap());
        let (third, nonce) = auth.authorize("GET", "/c").unwrap();
        assert_eq!(nonce, "N2");
        assert!(third.to_str().unwrap().contains("nc=00000001"));
    }

    #[test]
    fn token_error_bodies() {
        assert_eq!(
            token_error(br#"{"error":"invalid_client","error_description":"bad client"}"#),
            ("invalid_client".into(), Some("bad client".into()))
        );
        assert_eq!(
            token_error(br#"{"error":429,"errorCode":"RATE_LIMITED","detail":"slow down"}"#),
            ("RATE_LIMITED".into(), Some("slow down".into()))
        );
        assert_eq!(token_error(b"<html>"), (String::new(), None));
    }
}
