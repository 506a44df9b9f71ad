//! RFC 9457 problem details: every error the API returns.

use axum::{
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use raft::RaftError;
use serde::Serialize;

tokio::task_local! {
    /// The current request's id, set by the request-id middleware so any
    /// error built during the request can carry it.
    pub static REQUEST_ID: String;
}

pub fn current_request_id() -> String {
    REQUEST_ID.try_with(|id| id.clone()).unwrap_or_default()
}

pub const PROBLEM_JSON: &str = "application/problem+json";

/// An API error with a stable machine-readable `code`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct ProblemBody<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: &'a str,
    code: &'a str,
    request_id: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
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

    pub fn validation(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "validation_failed", detail)
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, request_id = %current_request_id(), "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the node's log for the request id",
        )
    }

    /// The problem for a bare status produced outside any handler (405,
    /// 413, ...).
    pub fn from_status(status: StatusCode) -> Self {
        let code = match status {
            StatusCode::BAD_REQUEST => "validation_failed",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::CONFLICT => "conflict",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::PRECONDITION_FAILED => "precondition_failed",
            StatusCode::TOO_MANY_REQUESTS => "rate_limited",
            StatusCode::SERVICE_UNAVAILABLE => "overloaded",
            StatusCode::GATEWAY_TIMEOUT | StatusCode::REQUEST_TIMEOUT => "timeout",
            s if s.is_server_error() => "internal",
            _ => "error",
        };
        let detail = status.canonical_reason().unwrap_or("error").to_string();
        Self::new(status, code, detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = ProblemBody {
            kind: format!(
                "https://marketcell.dev/problems/{}",
                self.code.replace('_', "-")
            ),
            title,
            status: self.status.as_u16(),
            detail: &self.detail,
            code: self.code,
            request_id: current_request_id(),
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut resp = (self.status, json).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body stays unread and hyper drops the
            // connection; saying so keeps the client from reusing it.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

impl From<RaftError> for ApiError {
    fn from(e: RaftError) -> Self {
        use StatusCode as S;
        match e {
            RaftError::NotLeader { .. } => {
                ApiError::new(S::SERVICE_UNAVAILABLE, "not_leader", "no leader is reachable right now").retry_after(1)
            }
            RaftError::NoQuorum(d) => ApiError::new(
                S::SERVICE_UNAVAILABLE,
                "no_quorum",
                format!("the cell cannot reach a majority of its nodes: {d}"),
            )
            .retry_after(1),
            RaftError::Timeout(d) => {
                ApiError::new(S::SERVICE_UNAVAILABLE, "timeout", format!("timed out waiting for {d}")).retry_after(1)
            }
            RaftError::MembershipInProgress => ApiError::new(
                S::CONFLICT,
                "membership_in_progress",
                "another membership change is still being committed; retry",
            )
            .retry_after(1),
            RaftError::OutcomeUnknown(d) => ApiError::new(
                S::SERVICE_UNAVAILABLE,
                "outcome_unknown",
                format!("the write may or may not have been committed ({d}); retry only if it is idempotent"),
            )
            .retry_after(1),
            RaftError::Invalid(d) => ApiError::validation(d),
            RaftError::BuildTooOld(d) => ApiError::new(S::CONFLICT, "build_too_old", d),
            RaftError::Stopped(d) => ApiError::new(S::SERVICE_UNAVAILABLE, "node_stopped", d).retry_after(1),
            // Raft stopped here (or, forwarded, on the leader) while the
            // request was under way, a panic included: a write may have
            // been committed before it did.
            RaftError::Fatal(d) => ApiError::new(
                S::SERVICE_UNAVAILABLE,
                "outcome_unknown",
                format!("this node's Raft stopped ({d}); a write may or may not have been committed: retry only if it is idempotent"),
            )
            .retry_after(1),
            RaftError::MemberConflict(d) => ApiError::new(S::CONFLICT, "member_conflict", d),
            // Undecodable: the leader's build cannot decode what this
            // node's wrote.
            RaftError::UpgradeInProgress(d) | RaftError::Undecodable(d) => ApiError::new(
                S::SERVICE_UNAVAILABLE,
                "upgrade_in_progress",
                format!("{d}; nothing was changed"),
            )
            .retry_after(30),
            RaftError::Network(d) => {
                ApiError::new(S::SERVICE_UNAVAILABLE, "unavailable", format!("peer unreachable: {d}")).retry_after(1)
            }
            other => ApiError::internal(other),
        }
    }
}

impl From<storage::StorageError> for ApiError {
    fn from(e: storage::StorageError) -> Self {
        ApiError::internal(e)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
