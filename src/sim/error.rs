//! Atlas's error answers: `ApiError` bodies (`{error, errorCode, detail, reason, parameters,
//! badRequestDetail}`) served as `application/json`.

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::atlas::models::{ApiErrorBody, BadRequestDetail, FieldViolation, codes};

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
