//! The router's own endpoints: health, metrics and the region directory
//! (ops token).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::directory::{Region, RegionSpec};
use crate::problem::Problem;
use crate::state::RouterState;

/// A draining region counts as idle after this long without requests.
const IDLE_AFTER: Duration = Duration::from_secs(2);
const MAX_ADMIN_BODY: usize = 64 * 1024;

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when at least one region is configured and every region has a
/// node that passes health checks.
pub async fn readyz(State(st): State<Arc<RouterState>>) -> Result<Json<Value>, Problem> {
    let pools = st.all_pools();
    if pools.is_empty() {
        return Err(Problem::unavailable("not_ready", "no regions configured"));
    }
    let down: Vec<String> = pools
        .iter()
        .filter(|p| !p.any_available())
        .map(|p| p.cell.clone())
        .collect();
    Ok(Json(json!({
        "status": if down.is_empty() { "ready" } else { "degraded" },
        "cells": pools.len(),
        "cells_down": down,
    })))
}

pub async fn metrics(State(st): State<Arc<RouterState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.metrics.encode(),
    )
        .into_response()
}

fn authorize(st: &RouterState, headers: &HeaderMap) -> Result<(), Problem> {
    let given = crate::proxy::bearer(headers)
        .ok()
        .flatten()
        .ok_or_else(|| Problem::unauthorized("the router's ops token is required"))?;
    if !constant_time_eq(given.as_bytes(), st.ops_token.as_bytes()) {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "not the router's ops token",
        ));
    }
    Ok(())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn view(st: &RouterState, r: &Region) -> Value {
    let pool = st.pool(&r.cell);
    let (in_flight, idle_for, healthy, unchecked, leader) = match &pool {
        Some(p) => (
            p.in_flight.load(Ordering::Relaxed).max(0),
            p.idle_for(),
            // Only what a check confirmed: a node is taken as healthy
            // until its first check, but not shown so.
            p.nodes
                .iter()
                .filter(|n| n.is_checked() && n.is_healthy())
                .count(),
            p.nodes.iter().filter(|n| !n.is_checked()).count(),
            p.leader_url().map(str::to_string),
        ),
        None => (0, Duration::MAX, 0, 0, None),
    };
    let mut v = serde_json::to_value(r.spec()).unwrap_or_else(|_| json!({}));
    v["name"] = json!(r.name);
    v["draining"] = json!(r.draining);
    v["in_flight"] = json!(in_flight);
    v["healthy_nodes"] = json!(healthy);
    v["unchecked_nodes"] = json!(unchecked);
    v["leader"] = json!(leader);
    v["idle"] = json!(r.draining && in_flight == 0 && idle_for >= IDLE_AFTER);
    v
}

pub async fn list(
    State(st): State<Arc<RouterState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, Problem> {
    authorize(&st, &headers)?;
    let dir = st.directory.read().unwrap_or_else(|e| e.into_inner());
    let regions: Vec<Value> = dir.regions().map(|r| view(&st, r)).collect();
    Ok(Json(json!({ "regions": regions })))
}

pub async fn put(
    State(st): State<Arc<RouterState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    authorize(&st, &headers)?;
    if body.len() > MAX_ADMIN_BODY {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "region definitions are small",
        ));
    }
    let spec: RegionSpec = serde_json::from_slice(&body)
        .map_err(|e| Problem::bad_request(format!("region definition: {e}")))?;
    let region = Region::from_spec(&name, spec).map_err(|e| Problem::bad_request(e.to_string()))?;
    let created = {
        let mut dir = st.directory.write().unwrap_or_else(|e| e.into_inner());
        let created = dir.get(&name).is_none();
        dir.put(region.clone()).map_err(|e| match e {
            crate::error::RouterError::InvalidRegion { .. } => {
                Problem::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            other => Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                other.to_string(),
            ),
        })?;
        created
    };
    st.rebuild_pools();
    tracing::info!(region = %name, cell = %region.cell, nodes = region.nodes.len(), created, "region stored");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(view(&st, &region))).into_response())
}

pub async fn drain(
    State(st): State<Arc<RouterState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, Problem> {
    authorize(&st, &headers)?;
    let mut dir = st.directory.write().unwrap_or_else(|e| e.into_inner());
    let found = dir
        .set_draining(&name, true)
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let region = dir
        .get(&name)
        .filter(|_| found)
        .cloned()
        .ok_or_else(|| Problem::not_found("not_found", format!("no region {name:?}")))?;
    drop(dir);
    tracing::info!(region = %name, "region draining");
    Ok(Json(view(&st, &region)))
}

pub async fn remove(
    State(st): State<Arc<RouterState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, Problem> {
    authorize(&st, &headers)?;
    let removed = st
        .directory
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&name)
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    match removed {
        Some(_) => {
            st.rebuild_pools();
            tracing::info!(region = %name, "region removed");
            Ok(StatusCode::NO_CONTENT)
        }
        None => Err(Problem::not_found(
            "not_found",
            format!("no region {name:?}"),
        )),
    }
}
