//! RFC 9457 problem+json answers produced by the router itself, in the same
//! shape as the cells' (`type, title, status, detail, code, request_id`).

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};

pub const PROBLEM_JSON: &str = "application/problem+json";

/// The request id of the request being served, put into the extensions by
/// the outermost middleware.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            status,
            code,
            detail: detail.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, "validation_failed", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::NOT_FOUND, code, detail)
    }

    pub fn unavailable(code: &'static str, detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, code, detail).retry_after(1)
    }

    /// Renders the problem; the request id is filled in by the edge
    /// middleware, which knows it (see `server::edge`).
    pub fn render(&self, request_id: &str) -> Response {
        let body = serde_json::json!({
            // The same type URIs as the cells' (hyphens, not underscores).
            "type": format!("https://marketcell.dev/problems/{}", self.code.replace('_', "-")),
            "title": self.status.canonical_reason().unwrap_or("error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
            "code": self.code,
            "request_id": request_id,
        });
        let mut resp = (self.status, body.to_string()).into_response();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(s) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The body was left unread, so hyper drops the connection;
            // saying so keeps the client from reusing it for its next
            // request and failing that one.
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// Handlers return `Problem` through `IntoResponse`; the response carries
/// the problem in its extensions and the edge middleware renders it with the
/// request id.
impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut resp = self.render("");
        resp.extensions_mut().insert(self);
        resp
    }
}
