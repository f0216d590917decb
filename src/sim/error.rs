//! Atlas's error answers: `ApiError` bodies (`{error, errorCode, detail, reason, parameters,
//! badRequestDetail}`) served as `application/json`.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::atlas::models::{ApiErrorBody, BadRequestDetail, FieldViolation};

/// The `errorCode`s the simulator answers with, each with where it comes from. The simulator
/// keeps its own list (not the client's) so that a code the client decides on is one the
/// spec or the protocol summary names, not one this simulator made up. Sources:
/// `spec` = `../shared/atlas-api/v2.yaml` (`components.responses.*` examples and operation
/// descriptions), `README` = `../shared/atlas-api/README.md` ("Protocol facts").
pub(crate) mod codes {
    /// spec: `components.responses.notFound` example (404).
    pub const RESOURCE_NOT_FOUND: &str = "RESOURCE_NOT_FOUND";
    /// spec: `components.responses.badRequest` example (400); README "Errors".
    pub const VALIDATION_ERROR: &str = "VALIDATION_ERROR";
    /// spec: `addOrgTeamUser` description ("treated as not belonging to the organization
    /// (`USER_NOT_IN_ORG`)"); README "Errors". The HTTP status is not given: 400 is ours.
    pub const USER_NOT_IN_ORG: &str = "USER_NOT_IN_ORG";
    /// README "Errors" and "Rate limits" (429 of the token buckets).
    pub const RATE_LIMITED_TOKEN_BUCKET: &str = "RATE_LIMITED_TOKEN_BUCKET";
    /// spec: `components.responses.tooManyRequests` example (429); README "Errors" (token endpoint).
    pub const RATE_LIMITED: &str = "RATE_LIMITED";
    /// README "Errors": HTTP 400, about 10 invitations a minute per IP.
    pub const INVITATIONS_RATE_LIMITED_IP: &str = "INVITATIONS_RATE_LIMITED_IP";
    /// spec: `components.responses.internalServerError` example (500).
    pub const UNEXPECTED_ERROR: &str = "UNEXPECTED_ERROR";
    /// spec: `components.responses.serviceUnavailable` example (503).
    pub const SERVICE_UNAVAILABLE: &str = "SERVICE_UNAVAILABLE";
    /// Not in the spec (406 has no example): our choice. The client decides on the 406.
    pub const INVALID_VERSION_DATE: &str = "INVALID_VERSION_DATE";
    /// Not in the spec (415 has no example): our choice. The client decides on the 415.
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "UNSUPPORTED_MEDIA_TYPE";
    /// Not in the spec (401 has no example): our choice. The client decides on the 401.
    pub const UNAUTHORIZED: &str = "UNAUTHORIZED";
    /// Not in the spec: the 409 of `createOrgUser` (README "Invitations": 409 if, and only
    /// if, a PENDING or ACTIVE user with that username exists). The client decides on the 409.
    pub const USER_ALREADY_IN_ORG: &str = "USER_ALREADY_IN_ORG";
    /// Not in the spec: our choice for refusing to leave an organization without an owner.
    /// The client re-reads the user after any refusal of a role change and decides on that.
    pub const CANNOT_REMOVE_LAST_ORG_OWNER: &str = "CANNOT_REMOVE_LAST_ORG_OWNER";
    /// Not in the spec: our choice for README "Roles" ("a user keeps at least one role").
    pub const CANNOT_REMOVE_LAST_ORG_ROLE: &str = "CANNOT_REMOVE_LAST_ORG_ROLE";
    /// Not in the spec: our choice for README "Operations" (`removeGroupUserRole`: "a user keeps
    /// at least one role in the project"). The client re-reads after any refusal.
    pub const CANNOT_REMOVE_LAST_GROUP_ROLE: &str = "CANNOT_REMOVE_LAST_GROUP_ROLE";
    /// Not in the spec: our choice for README "Teams" ("at most 250 users a team").
    pub const TEAM_USER_LIMIT_EXCEEDED: &str = "TEAM_USER_LIMIT_EXCEEDED";
    /// Not in the spec: our choice for `:removeUser` of a non-member. The client re-reads the
    /// user after such a refusal and decides on whether they are still in the team.
    pub const USER_NOT_IN_TEAM: &str = "USER_NOT_IN_TEAM";
}

/// One refused request, as Atlas would answer it.
#[derive(Debug, Clone)]
pub(crate) struct ApiFailure {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub fields: Vec<FieldViolation>,
    pub headers: Vec<(HeaderName, String)>,
}

impl ApiFailure {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self { status, code, detail: detail.into(), fields: Vec::new(), headers: Vec::new() }
    }

    pub fn with_header(mut self, name: HeaderName, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// 400 `VALIDATION_ERROR` naming the offending field.
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        let description = description.into();
        let mut failure = Self::new(
            StatusCode::BAD_REQUEST,
            codes::VALIDATION_ERROR,
            format!("Invalid value for field {field}: {description}"),
        );
        failure.fields.push(FieldViolation { field: field.to_string(), description });
        failure
    }

    /// 404 `RESOURCE_NOT_FOUND`.
    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, codes::RESOURCE_NOT_FOUND, format!("Cannot find resource {what} {id}."))
    }

    pub fn body(&self) -> ApiErrorBody {
        ApiErrorBody {
            error: self.status.as_u16(),
            error_code: self.code.to_string(),
            detail: Some(self.detail.clone()),
            reason: self.status.canonical_reason().map(str::to_string),
            // The spec types `parameters` as an array of objects; Atlas's own examples put
            // strings and numbers there. Leaving it out satisfies both readings.
            parameters: Vec::new(),
            bad_request_detail: (!self.fields.is_empty()).then(|| BadRequestDetail { fields: self.fields.clone() }),
        }
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.append(name, value);
            }
        }
        response
    }
}
