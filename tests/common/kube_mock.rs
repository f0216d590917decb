//! A fake Kubernetes API server for request-level tests, in the style of kube-rs's
//! controller-rs `ApiServerVerifier`: a `kube::Client` over a tower-test mock service, and a
//! handle on which the test receives each request the code under test sends, checks it, and
//! answers it as the API server would.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tower_test::mock::{self, Handle, SendResponse};

/// How long a test waits for the next request before it calls the code under test stuck.
const WAIT: Duration = Duration::from_secs(5);

/// A kube client whose every request arrives at the returned [`ApiServer`].
pub fn mock_client() -> (Client, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), ApiServer { handle })
}

/// The test's side of the mocked client.
pub struct ApiServer {
    handle: Handle<Request<Body>, Response<Body>>,
}

impl ApiServer {
    /// The next request; panics when none arrives within a few seconds, or when every client
    /// is gone.
    pub async fn next(&mut self) -> Call {
        match tokio::time::timeout(WAIT, self.handle.next_request()).await {
            Ok(Some((request, respond))) => Call::read(request, respond).await,
            Ok(None) => panic!("expected another Kubernetes request, but every client is gone"),
            Err(_) => panic!("expected another Kubernetes request, none came within {WAIT:?}"),
        }
    }

    /// The result of the code under test, which must finish without sending another request.
    pub async fn finish<T>(&mut self, run: JoinHandle<T>) -> T {
        tokio::select! {
            result = run => result.expect("the task under test panicked"),
            request = self.handle.next_request() => match request {
                Some((request, _)) => panic!("unexpected Kubernetes request: {} {}", request.method(), request.uri()),
                None => panic!("every kube client is gone before the task under test finished"),
            },
            _ = tokio::time::sleep(WAIT) => panic!("the task under test did not finish within {WAIT:?}"),
        }
    }

    /// Asserts that nothing more is sent: waits until every clone of the client is dropped
    /// (drop the context first) and fails on any request that arrives meanwhile.
    pub async fn assert_done(mut self) {
        match tokio::time::timeout(WAIT, self.handle.next_request()).await {
            Ok(None) => {}
            Ok(Some((request, _))) => {
                panic!("unexpected Kubernetes request: {} {}", request.method(), request.uri())
            }
            Err(_) => panic!("the kube client is still alive after {WAIT:?}: drop the context before assert_done"),
        }
    }
}

/// One request, read, with the means to answer it.
pub struct Call {
    pub method: Method,
    pub path: String,
    /// Query parameters; an empty value for a parameter without `=`.
    pub query: BTreeMap<String, String>,
    pub content_type: Option<String>,
    /// The JSON body; `Null` when there is none.
    pub body: Value,
    respond: SendResponse<Response<Body>>,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {:?} {}", self.method, self.path, self.query, self.body)
    }
}

impl Call {
    async fn read(request: Request<Body>, respond: SendResponse<Response<Body>>) -> Self {
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.expect("request body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!("{} {}: body is not JSON ({e}): {}", parts.method, parts.uri, String::from_utf8_lossy(&bytes))
            })
        };
        let query = parts
            .uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k.to_string(), v.to_string())
            })
            .collect();
        Call {
            method: parts.method,
            path: parts.uri.path().to_string(),
            query,
            content_type: parts.headers.get(http::header::CONTENT_TYPE).map(|v| v.to_str().unwrap().to_string()),
            body,
            respond,
        }
    }

    /// Panics unless this is `method path` with exactly these query parameters.
    pub fn expect(&self, method: Method, path: &str, query: &[(&str, &str)]) {
        let wanted: BTreeMap<String, String> = query.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!((&self.method, self.path.as_str(), &self.query), (&method, path, &wanted), "request: {self:?}");
    }

    /// Answers with `status` and a JSON body.
    pub fn respond(self, status: u16, body: &impl Serialize) {
        let bytes = serde_json::to_vec(body).expect("response serializes");
        let response = Response::builder()
            .status(StatusCode::from_u16(status).expect("status code"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(bytes))
            .expect("response builds");
        self.respond.send_response(response);
    }

    /// Answers with the request's own body, as the API server does for a created object.
    pub fn echo(self, status: u16) {
        let body = self.body.clone();
        self.respond(status, &body)
    }

    /// Answers 404 with the API server's `Status` for a missing object.
    pub fn not_found(self, resource: &str, name: &str) {
        self.respond(404, &status_failure(404, "NotFound", &format!("{resource} \"{name}\" not found")));
    }
}

/// The API server's `Status` body of a failed request.
pub fn status_failure(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}
