//! `/v1/vendors/{id}/webhooks`: a vendor's webhook registrations and their
//! delivery status.

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{delete, post},
    Json, Router,
};
use edge::token::Role;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    extract::{Consistency, Paging, Principal, StrictJson},
    identity_api::{now_ms, rfc3339},
    kv_api::ensure_fresh,
    openapi::*,
    problem::{ApiError, ApiResult},
    AppState,
};
use crate::{
    app::{Command, Response as AppResponse},
    catalog,
    webhooks::{self, Webhook, WebhookCommand, WebhookResponse},
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/vendors/{id}/webhooks", post(register).get(list))
        .route("/v1/vendors/{id}/webhooks/{webhook}", delete(remove))
}

fn webhook_json(w: &Webhook) -> Value {
    json!({
        "id": w.id, "vendor_id": w.vendor_id, "url": w.url,
        "delivered_events": w.delivered, "cursor": w.cursor,
        "failures": w.failures, "last_error": w.last_error,
        "updated_at": rfc3339(w.updated_at), "created_at": rfc3339(w.created_at),
    })
}

/// The vendor, if the caller owns it (ops may look too).
fn owned(s: &AppState, p: &Principal, vendor_id: &str) -> ApiResult<catalog::Vendor> {
    let read = s.node.store().read()?;
    let v =
        catalog::vendor(&read, vendor_id)?.ok_or_else(|| ApiError::not_found("no such vendor"))?;
    if v.owner_id == p.sub || p.role == Role::Ops {
        Ok(v)
    } else {
        Err(ApiError::forbidden("not your vendor"))
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct WebhookBody {
    /// `http://` or `https://` URL events are POSTed to.
    url: String,
    /// Shared secret for `X-Marketcell-Signature: sha256=<hex HMAC>`.
    secret: String,
}

#[utoipa::path(
    post, path = "/v1/vendors/{id}/webhooks", tag = "vendors", request_body = WebhookBody,
    params(("id" = String, Path, description = "vendor id")),
    responses((status = 201, description = "registered; events from now on are delivered", body = WebhookView),
              (status = "4XX", description = "problem+json", body = Problem)),
    security(("bearer" = [])),
)]
pub(super) async fn register(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    StrictJson(b): StrictJson<WebhookBody>,
) -> ApiResult<Response> {
    if p.role != Role::Vendor {
        return Err(ApiError::forbidden("this needs the vendor role"));
    }
    let vendor = owned(&s, &p, &id)?;
    let url_ok = b.url.len() <= 500
        && b.url
            .parse::<http::Uri>()
            .ok()
            .filter(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some())
            .is_some();
    if !url_ok {
        return Err(ApiError::validation(
            "url must be an http:// or https:// URL of at most 500 characters",
        ));
    }
    crate::outbound::check_url(&b.url, s.cfg.webhook_private_targets)
        .map_err(ApiError::validation)?;
    if !(16..=200).contains(&b.secret.len()) {
        return Err(ApiError::validation("secret must be 16 to 200 characters"));
    }
    let now = now_ms();
    let id = format!("{}.whk_{}", s.cfg.cell, ulid::Ulid::new());
    // Sealed before it enters the log (see `sealed`).
    let secret = webhooks::seal_secret(&s.keys, &id, &b.secret);
    let webhook = Webhook {
        id,
        vendor_id: vendor.id,
        owner_id: vendor.owner_id,
        url: b.url,
        secret,
        cursor: 0,
        delivered: 0,
        last_error: None,
        failures: 0,
        updated_at: now,
        created_at: now,
    };
    let cmd = Command::Webhooks(Box::new(WebhookCommand::Register { webhook }));
    let written = s.node.write(&cmd).await?;
    match written.response {
        AppResponse::Webhooks(r) => match *r {
            WebhookResponse::Webhook(w) => Ok((
                StatusCode::CREATED,
                [("x-cell-index", written.index.to_string())],
                Json(webhook_json(&w)),
            )
                .into_response()),
            WebhookResponse::TooMany => Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("a vendor has at most {} webhooks", webhooks::MAX_PER_VENDOR),
            )),
            other => Err(ApiError::internal(format!("unexpected response {other:?}"))),
        },
        other => Err(ApiError::internal(format!("unexpected response {other:?}"))),
    }
}

#[utoipa::path(
    get, path = "/v1/vendors/{id}/webhooks", tag = "vendors",
    params(("id" = String, Path, description = "vendor id"), ("limit" = Option<usize>, Query), ("cursor" = Option<String>, Query)),
    responses((status = 200, description = "webhooks and their delivery status", body = WebhooksView),
              (status = "4XX", description = "problem+json", body = Problem)),
    security(("bearer" = [])),
)]
pub(super) async fn list(
    State(s): State<AppState>,
    p: Principal,
    c: Consistency,
    Path(id): Path<String>,
    paging: Paging,
) -> ApiResult<Json<Value>> {
    ensure_fresh(&s, c).await?;
    owned(&s, &p, &id)?;
    let read = s.node.store().read()?;
    let items: Vec<Value> = webhooks::for_vendor(&read, &id)?
        .iter()
        .map(webhook_json)
        .collect();
    Ok(Json(paging.answer(items)))
}

#[utoipa::path(
    delete, path = "/v1/vendors/{id}/webhooks/{webhook}", tag = "vendors",
    params(("id" = String, Path, description = "vendor id"),
           ("webhook" = String, Path, description = "webhook id")),
    responses((status = 204, description = "removed"),
              (status = "4XX", description = "problem+json", body = Problem)),
    security(("bearer" = [])),
)]
pub(super) async fn remove(
    State(s): State<AppState>,
    p: Principal,
    Path((id, webhook)): Path<(String, String)>,
) -> ApiResult<Response> {
    owned(&s, &p, &id)?;
    let mine = {
        let read = s.node.store().read()?;
        webhooks::for_vendor(&read, &id)?
            .iter()
            .any(|w| w.id == webhook)
    };
    if !mine {
        return Err(ApiError::not_found("no such webhook"));
    }
    let cmd = Command::Webhooks(Box::new(WebhookCommand::Delete { id: webhook }));
    let written = s.node.write(&cmd).await?;
    Ok((
        StatusCode::NO_CONTENT,
        [("x-cell-index", written.index.to_string())],
    )
        .into_response())
}
