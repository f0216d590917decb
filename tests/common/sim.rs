//! Driving the Atlas simulator over plain HTTP: a small digest client (its own MD5 response
//! computation, independent of the simulator's) and JSON helpers.

use std::sync::Mutex;

use atlas_access_operator::sim::{SimConfig, SimHandle, SimState, Simulator};
use md5::{Digest, Md5};
use reqwest::Method;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, WWW_AUTHENTICATE};
use serde_json::Value;

pub const PUBLIC_KEY: &str = "test-public-key";
pub const PRIVATE_KEY: &str = "test-private-key";
pub const CLIENT_ID: &str = "mdb_sa_id_test";
pub const CLIENT_SECRET: &str = "mdb_sa_sk_test";
pub const V2025: &str = "2025-02-19";
pub const V2023: &str = "2023-01-01";

pub fn media(version: &str) -> String {
    format!("application/vnd.atlas.{version}+json")
}

/// A config with the test credentials and no rate limits.
pub fn config() -> SimConfig {
    SimConfig::default()
        .with_api_key(PUBLIC_KEY, PRIVATE_KEY)
        .with_service_account(CLIENT_ID, CLIENT_SECRET)
        .without_limits()
}

/// A running simulator with one organization (owned by owner@example.com) and a digest client.
pub struct Sim {
    pub handle: SimHandle,
    pub state: SimState,
    pub org: String,
    pub owner: String,
    pub api: Api,
}

pub fn start(config: SimConfig) -> Sim {
    super::init_crypto();
    let handle = Simulator::start(config).expect("simulator starts");
    let state = handle.state();
    let org = state.add_org("test-org");
    let owner = state.add_user(
        &org,
        "owner@example.com",
        atlas_access_operator::atlas::models::MembershipStatus::Active,
        &["ORG_OWNER"],
    );
    let api = Api::new(&handle.base_url(), PUBLIC_KEY, PRIVATE_KEY);
    Sim { handle, state, org, owner, api }
}

/// An answer: status, headers and the JSON body (`Null` when empty).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn error_code(&self) -> &str {
        self.body["errorCode"].as_str().unwrap_or("")
    }

    /// The `badRequestDetail.fields[].field` names.
    pub fn bad_fields(&self) -> Vec<String> {
        self.body["badRequestDetail"]["fields"]
            .as_array()
            .map(|f| f.iter().filter_map(|f| f["field"].as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    }
}

/// Splits `k="v", k2=v2` digest parameters.
pub fn digest_params(header: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let rest = header.trim().strip_prefix("Digest ").unwrap_or(header);
    let mut chars = rest.chars().peekable();
    loop {
        let key: String =
            chars.by_ref().skip_while(|c| *c == ',' || c.is_whitespace()).take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let value: String = if chars.peek() == Some(&'"') {
            chars.next();
            chars.by_ref().take_while(|c| *c != '"').collect()
        } else {
            chars.by_ref().take_while(|c| *c != ',').collect()
        };
        out.push((key.trim().to_string(), value.trim().to_string()));
    }
    out
}

pub fn param<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn md5_hex(s: &str) -> String {
    hex::encode(Md5::digest(s.as_bytes()))
}

/// The `Authorization: Digest ...` header for one request (RFC 7616, qop=auth, MD5).
pub fn digest_authorization(
    method: &str,
    uri: &str,
    user: &str,
    password: &str,
    realm: &str,
    nonce: &str,
    nc: u32,
) -> String {
    let cnonce = format!("{:016x}", nc as u64 * 7919 + 17);
    let nc = format!("{nc:08x}");
    let ha1 = md5_hex(&format!("{user}:{realm}:{password}"));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    let response = md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
    format!(
        r#"Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", qop=auth, nc={nc}, cnonce="{cnonce}", response="{response}", algorithm=MD5"#
    )
}

/// A plain HTTP client that answers digest challenges and then reuses the nonce.
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    user: String,
    password: String,
    /// (realm, nonce, last nc)
    nonce: Mutex<Option<(String, String, u32)>>,
}

impl Api {
    pub fn new(base: &str, user: &str, password: &str) -> Self {
        super::init_crypto();
        Self {
            http: reqwest::Client::builder().build().expect("client"),
            base: base.to_string(),
            user: user.to_string(),
            password: password.to_string(),
            nonce: Mutex::new(None),
        }
    }

    fn next_authorization(&self, method: &Method, uri: &str) -> Option<String> {
        let mut guard = self.nonce.lock().unwrap();
        let (realm, nonce, nc) = guard.as_mut()?;
        *nc += 1;
        Some(digest_authorization(method.as_str(), uri, &self.user, &self.password, realm, nonce, *nc))
    }

    fn remember(&self, challenge: &str) {
        let params = digest_params(challenge);
        let realm = param(&params, "realm").unwrap_or("").to_string();
        let nonce = param(&params, "nonce").unwrap_or("").to_string();
        *self.nonce.lock().unwrap() = Some((realm, nonce, 0));
    }

    /// Sends without any credentials.
    pub async fn raw(&self, method: Method, path: &str, headers: &[(&str, &str)], body: Option<Vec<u8>>) -> Resp {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        into_resp(request.send().await.expect("request sent")).await
    }

    /// Sends with digest authentication: the cached nonce first, a challenge round trip if needed.
    pub async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)], body: Option<Vec<u8>>) -> Resp {
        self.try_send(method, path, headers, body).await.expect("request sent")
    }

    pub async fn try_send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<Resp, reqwest::Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = self.http.request(method.clone(), format!("{}{path}", self.base));
            for (k, v) in headers {
                request = request.header(*k, *v);
            }
            if let Some(body) = &body {
                request = request.body(body.clone());
            }
            if let Some(authorization) = self.next_authorization(&method, path) {
                request = request.header(AUTHORIZATION, authorization);
            }
            let response = request.send().await?;
            if response.status() == 401
                && attempt == 1
                && let Some(challenge) = response.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok())
            {
                self.remember(challenge);
                continue;
            }
            return Ok(into_resp(response).await);
        }
    }

    /// A JSON call of one resource version: `Accept` (and `Content-Type` with a body) set to it.
    pub async fn call(&self, method: Method, path: &str, version: &str, body: Option<&Value>) -> Resp {
        let media = media(version);
        match body {
            Some(body) => {
                let bytes = serde_json::to_vec(body).unwrap();
                self.send(method, path, &[(ACCEPT.as_str(), &media), (CONTENT_TYPE.as_str(), &media)], Some(bytes))
                    .await
            }
            None => self.send(method, path, &[(ACCEPT.as_str(), &media)], None).await,
        }
    }

    pub async fn get(&self, path: &str, version: &str) -> Resp {
        self.call(Method::GET, path, version, None).await
    }

    pub async fn post(&self, path: &str, version: &str, body: &Value) -> Resp {
        self.call(Method::POST, path, version, Some(body)).await
    }

    pub async fn patch(&self, path: &str, version: &str, body: &Value) -> Resp {
        self.call(Method::PATCH, path, version, Some(body)).await
    }

    pub async fn delete(&self, path: &str, version: &str) -> Resp {
        self.call(Method::DELETE, path, version, None).await
    }
}

pub async fn into_resp(response: reqwest::Response) -> Resp {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("body read");
    let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("JSON body") };
    Resp { status, headers, body }
}

/// Paths under the Admin API.
pub fn org_path(org: &str) -> String {
    format!("/api/atlas/v2/orgs/{org}")
}

pub fn users_path(org: &str) -> String {
    format!("/api/atlas/v2/orgs/{org}/users")
}

pub fn user_path(org: &str, user: &str) -> String {
    format!("/api/atlas/v2/orgs/{org}/users/{user}")
}

pub fn teams_path(org: &str) -> String {
    format!("/api/atlas/v2/orgs/{org}/teams")
}

pub fn team_path(org: &str, team: &str) -> String {
    format!("/api/atlas/v2/orgs/{org}/teams/{team}")
}

/// An invitation body for `createOrgUser`.
pub fn invite(username: &str, roles: &[&str]) -> Value {
    serde_json::json!({"username": username, "roles": {"orgRoles": roles}})
}
