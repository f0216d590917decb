//! Typed Atlas errors and the classification callers decide on.
//!
//! No variant ever holds a credential or token: they carry the operation, the HTTP status,
//! Atlas's `errorCode` / `detail` and transport diagnostics only.

use std::fmt;
use std::time::Duration;

use reqwest::header::HeaderMap;

use super::models::{ApiErrorBody, codes};

/// The operation name the service account token request goes by in errors, logs and metrics
/// (the token endpoint is not in the spec's `paths`, so it has no `operationId`).
pub const TOKEN_OPERATION: &str = "oauthToken";

/// The one classification of a failed Atlas call. The client's [`super::RetryPolicy`]
/// decides from it whether to send the same request again (never after a 409: the same
/// request meets the same state); the planner decides from it what the object waits for
/// (`reconcile::ActionError::waiting_may_fix`).
#[derive(serde::Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum ErrorClass {
    /// 5xx, timeouts, dropped connections: retry later with backoff.
    Transient,
    /// 429, 503 with `Retry-After`, and 400 `INVITATIONS_RATE_LIMITED_IP`: wait (the error's
    /// [`AtlasError::retry_after`], when Atlas said), then retry.
    RateLimited,
    /// 409.
    Conflict,
    /// 404.
    NotFound,
    /// Any other 4xx, or an answer the client cannot use: retrying will not help.
    Permanent,
    /// 401 / 403, or credentials the client cannot use.
    Auth,
}

impl ErrorClass {
    /// Every class, for metric series that exist before the first failure.
    pub const ALL: [ErrorClass; 6] =
        [Self::Transient, Self::RateLimited, Self::Conflict, Self::NotFound, Self::Permanent, Self::Auth];

    /// A short lowercase name (metric label, log field).
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::RateLimited => "rate_limited",
            Self::Conflict => "conflict",
            Self::NotFound => "not_found",
            Self::Permanent => "permanent",
            Self::Auth => "auth",
        }
    }
}

/// How a request failed before Atlas answered it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    /// No connection was made: the request never reached Atlas.
    Connect,
    /// No answer in time: Atlas may or may not have applied the request.
    Timeout,
    /// The connection broke mid-exchange: Atlas may or may not have applied the request.
    Interrupted,
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Connect => "cannot connect",
            Self::Timeout => "timed out",
            Self::Interrupted => "connection interrupted",
        })
    }
}

/// An error of the Atlas client.
#[derive(Clone, Debug, thiserror::Error)]
pub enum AtlasError {
    /// Atlas answered with an error status and (usually) an `ApiError` body.
    #[error("Atlas {operation} answered HTTP {status}{}", code_and_detail(error_code, detail))]
    Api {
        operation: &'static str,
        status: u16,
        error_code: String,
        detail: Option<String>,
        retry_after: Option<Duration>,
    },
    /// The service account token endpoint refused or failed.
    #[error("Atlas service account token request answered HTTP {status}{}", code_and_detail(error_code, detail))]
    Token { status: u16, error_code: String, detail: Option<String>, retry_after: Option<Duration> },
    /// The request did not get an answer.
    #[error("Atlas {operation} failed: {kind}: {message}")]
    Transport { operation: &'static str, kind: TransportKind, message: String },
    /// Atlas answered success with a body the client cannot read.
    #[error("Atlas {operation} answered HTTP {status} with an unreadable body: {message}")]
    Decode { operation: &'static str, status: u16, message: String },
    /// Atlas's authentication challenge cannot be answered (unsupported scheme or algorithm).
    #[error("Atlas {operation}: cannot authenticate: {message}")]
    Authentication { operation: &'static str, message: String },
    /// An argument the client refuses before sending (malformed id, page size out of range).
    #[error("Atlas {operation}: invalid argument: {message}")]
    InvalidArgument { operation: &'static str, message: String },
    /// The client cannot be built from this configuration.
    #[error("Atlas client configuration: {0}")]
    Config(String),
    /// The invitation waits in the process's invitation queue (Atlas limits invitations
    /// per client IP); nothing was sent.
    #[error(
        "invitation queued: number {} in line, to be sent in about {}s (this process sends {rate} invitation(s) every {}s: Atlas limits invitations per IP)",
        position + 1,
        eta.as_secs(),
        per.as_secs_f64()
    )]
    InvitationQueued { position: usize, eta: Duration, come_back: Duration, rate: u32, per: Duration },
    /// Atlas refused these credentials a moment ago: calls fail fast until the next probe
    /// (or until the credentials change).
    #[error("{credential} refused by Atlas {}s ago, next check in {}s: {cause}", since.as_secs(), next_probe_in.as_secs())]
    CredentialBackoff { credential: String, since: Duration, next_probe_in: Duration, cause: Box<AtlasError> },
}

fn code_and_detail(error_code: &str, detail: &Option<String>) -> String {
    let mut out = String::new();
    if !error_code.is_empty() {
        out.push(' ');
        out.push_str(error_code);
    }
    if let Some(d) = detail.as_deref().filter(|d| !d.is_empty()) {
        out.push_str(": ");
        out.push_str(d);
    }
    out
}

/// The class of an Atlas API answer, from its status, `errorCode` and `Retry-After`.
pub fn classify(status: u16, error_code: &str, retry_after: Option<Duration>) -> ErrorClass {
    match status {
        401 | 403 => ErrorClass::Auth,
        429 => ErrorClass::RateLimited,
        // Atlas's anti-abuse limit on invitations answers 400, yet waiting is the fix.
        400 if error_code == codes::INVITATIONS_RATE_LIMITED_IP => ErrorClass::RateLimited,
        503 if retry_after.is_some() => ErrorClass::RateLimited,
        408 | 500..=599 => ErrorClass::Transient,
        404 => ErrorClass::NotFound,
        409 => ErrorClass::Conflict,
        _ => ErrorClass::Permanent,
    }
}

/// The class of a token endpoint answer: anything but throttling or a server failure means
/// the service account credentials do not work.
pub fn classify_token(status: u16, retry_after: Option<Duration>) -> ErrorClass {
    match status {
        429 => ErrorClass::RateLimited,
        503 if retry_after.is_some() => ErrorClass::RateLimited,
        500..=599 => ErrorClass::Transient,
        _ => ErrorClass::Auth,
    }
}

impl AtlasError {
    /// What a caller should do about this error.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Api { status, error_code, retry_after, .. } => classify(*status, error_code, *retry_after),
            Self::Token { status, retry_after, .. } => classify_token(*status, *retry_after),
            Self::Transport { .. } => ErrorClass::Transient,
            Self::Authentication { .. } => ErrorClass::Auth,
            Self::Decode { .. } | Self::InvalidArgument { .. } | Self::Config(_) => ErrorClass::Permanent,
            Self::InvitationQueued { .. } => ErrorClass::RateLimited,
            Self::CredentialBackoff { .. } => ErrorClass::Auth,
        }
    }

    /// The HTTP status Atlas answered, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } | Self::Token { status, .. } | Self::Decode { status, .. } => Some(*status),
            Self::CredentialBackoff { cause, .. } => cause.status(),
            _ => None,
        }
    }

    /// Atlas's `errorCode`, if it answered with one.
    pub fn error_code(&self) -> Option<&str> {
        match self {
            Self::Api { error_code, .. } | Self::Token { error_code, .. } => Some(error_code),
            Self::CredentialBackoff { cause, .. } => cause.error_code(),
            _ => None,
        }
    }

    /// Atlas's `detail`, if it gave one.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Self::Api { detail, .. } | Self::Token { detail, .. } => detail.as_deref(),
            _ => None,
        }
    }

    /// The wait Atlas asked for (`Retry-After`), if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Api { retry_after, .. } | Self::Token { retry_after, .. } => *retry_after,
            Self::InvitationQueued { come_back, .. } => Some(*come_back),
            _ => None,
        }
    }

    /// The operation (spec `operationId`) that failed, when one did.
    pub fn operation(&self) -> Option<&'static str> {
        match self {
            Self::Api { operation, .. }
            | Self::Transport { operation, .. }
            | Self::Decode { operation, .. }
            | Self::Authentication { operation, .. }
            | Self::InvalidArgument { operation, .. } => Some(operation),
            Self::Token { .. } => Some(TOKEN_OPERATION),
            Self::InvitationQueued { .. } => Some("createOrgUser"),
            Self::CredentialBackoff { cause, .. } => cause.operation(),
            Self::Config(_) => None,
        }
    }

    /// Whether Atlas may have applied the request although the client saw a failure
    /// (timeout, broken connection, or a server error other than 503). A retry of a
    /// non-idempotent call after such a failure must expect to find its own effect.
    pub fn may_have_been_applied(&self) -> bool {
        match self {
            Self::Transport { kind, .. } => *kind != TransportKind::Connect,
            Self::Api { status, .. } => *status >= 500 && *status != 503,
            _ => false,
        }
    }

    pub(crate) fn from_reqwest(operation: &'static str, err: reqwest::Error) -> Self {
        let kind = if err.is_timeout() {
            TransportKind::Timeout
        } else if err.is_connect() {
            TransportKind::Connect
        } else {
            TransportKind::Interrupted
        };
        // The URL is left out: the chain of causes is what explains the failure.
        let err = err.without_url();
        let mut message = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Self::Transport { operation, kind, message }
    }
}

// ---- reading an answer's headers and error body (shared by the client and the token cache) ----

/// `Retry-After` in seconds (what Atlas sends) or as an HTTP date.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let wait = at.duration_since(jiff::Timestamp::now());
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

pub(crate) fn header_u32(headers: &HeaderMap, name: &str) -> Option<u32> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// The error of a non-2xx answer.
pub(crate) fn api_error(operation: &'static str, status: u16, headers: &HeaderMap, body: &[u8]) -> AtlasError {
    let retry_after = retry_after(headers);
    match serde_json::from_slice::<ApiErrorBody>(body) {
        Ok(b) => {
            AtlasError::Api { operation, status, error_code: b.error_code, detail: b.detail.or(b.reason), retry_after }
        }
        Err(_) => {
            // Not an Atlas error (a proxy's page, an empty body): keep a short excerpt.
            let text: String = String::from_utf8_lossy(body).chars().filter(|c| !c.is_control()).take(200).collect();
            let detail = Some(text.trim().to_string()).filter(|t| !t.is_empty());
            AtlasError::Api { operation, status, error_code: String::new(), detail, retry_after }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        let ra = Some(Duration::from_secs(7));
        let table: &[(u16, &str, Option<Duration>, ErrorClass)] = &[
            (400, codes::VALIDATION_ERROR, None, ErrorClass::Permanent),
            (400, codes::INVITATIONS_RATE_LIMITED_IP, None, ErrorClass::RateLimited),
            (400, codes::INVITATIONS_RATE_LIMITED_IP, ra, ErrorClass::RateLimited),
            (400, codes::USER_NOT_IN_TEAM, None, ErrorClass::Permanent),
            (401, codes::UNAUTHORIZED, None, ErrorClass::Auth),
            (403, "USER_UNAUTHORIZED", None, ErrorClass::Auth),
            (404, codes::RESOURCE_NOT_FOUND, None, ErrorClass::NotFound),
            (404, codes::USER_NOT_IN_ORG, None, ErrorClass::NotFound),
            (406, codes::INVALID_VERSION_DATE, None, ErrorClass::Permanent),
            (408, "REQUEST_TIMEOUT", None, ErrorClass::Transient),
            (409, codes::USER_ALREADY_IN_ORG, None, ErrorClass::Conflict),
            (415, codes::UNSUPPORTED_MEDIA_TYPE, None, ErrorClass::Permanent),
            (429, codes::RATE_LIMITED_TOKEN_BUCKET, ra, ErrorClass::RateLimited),
            (429, codes::RATE_LIMITED, None, ErrorClass::RateLimited),
            (500, codes::UNEXPECTED_ERROR, None, ErrorClass::Transient),
            (502, "", None, ErrorClass::Transient),
            (503, codes::SERVICE_UNAVAILABLE, None, ErrorClass::Transient),
            (503, codes::SERVICE_UNAVAILABLE, ra, ErrorClass::RateLimited),
            (504, "", None, ErrorClass::Transient),
        ];
        for (status, code, retry_after, want) in table {
            assert_eq!(classify(*status, code, *retry_after), *want, "{status} {code}");
        }
    }

    #[test]
    fn token_endpoint_classification() {
        assert_eq!(classify_token(400, None), ErrorClass::Auth);
        assert_eq!(classify_token(401, None), ErrorClass::Auth);
        assert_eq!(classify_token(429, None), ErrorClass::RateLimited);
        assert_eq!(classify_token(500, None), ErrorClass::Transient);
    }

    #[test]
    fn display_names_operation_code_and_detail() {
        let err = AtlasError::Api {
            operation: "createOrgUser",
            status: 409,
            error_code: codes::USER_ALREADY_IN_ORG.into(),
            detail: Some("The user alice@example.com is already in the organization.".into()),
            retry_after: None,
        };
        assert_eq!(
            err.to_string(),
            "Atlas createOrgUser answered HTTP 409 USER_ALREADY_IN_ORG: The user alice@example.com is already in the organization."
        );
        assert_eq!(err.class(), ErrorClass::Conflict);
        assert_eq!(err.status(), Some(409));
        assert_eq!(err.error_code(), Some(codes::USER_ALREADY_IN_ORG));
        assert!(err.detail().unwrap().contains("alice"));
        assert!(!err.may_have_been_applied());
    }

    #[test]
    fn uncertain_failures() {
        let t = |kind| AtlasError::Transport { operation: "getOrg", kind, message: String::new() };
        assert!(!t(TransportKind::Connect).may_have_been_applied());
        assert!(t(TransportKind::Timeout).may_have_been_applied());
        assert!(t(TransportKind::Interrupted).may_have_been_applied());
        let api = |status| AtlasError::Api {
            operation: "createOrgUser",
            status,
            error_code: String::new(),
            detail: None,
            retry_after: None,
        };
        assert!(api(500).may_have_been_applied());
        assert!(!api(503).may_have_been_applied());
        assert!(!api(429).may_have_been_applied());
        assert_eq!(api(500).to_string(), "Atlas createOrgUser answered HTTP 500");
    }

    #[test]
    fn retry_after_forms() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(reqwest::header::RETRY_AFTER, reqwest::header::HeaderValue::from_static("12"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(12)));
        let later = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(30);
        let date = jiff::fmt::rfc2822::DateTimePrinter::new().timestamp_to_rfc9110_string(&later).unwrap();
        headers.insert(reqwest::header::RETRY_AFTER, reqwest::header::HeaderValue::from_str(&date).unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(wait > Duration::from_secs(28) && wait <= Duration::from_secs(30), "{date}: {wait:?}");
    }
}
