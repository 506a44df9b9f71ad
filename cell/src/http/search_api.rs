//! `GET /v1/search`: public product and vendor search on any node.

use axum::{
    extract::{Query, State},
    routing::get,
    Json, Router,
};
use search::{Kind, SearchError, SearchQuery, Sort};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    extract::{page_limit, Consistency, Ops},
    identity_api::now_ms,
    kv_api::ensure_fresh,
    openapi::{Problem, SearchPage},
    problem::{ApiError, ApiResult},
    AppState,
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/search", get(search))
        .route("/admin/search/reindex", axum::routing::post(reindex))
}

/// Rebuild this node's index from its state, in the background.
#[utoipa::path(
    post,
    path = "/admin/search/reindex",
    tag = "admin",
    responses(
        (status = 202, description = "a rebuild is queued on this node"),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn reindex(State(s): State<AppState>, _ops: Ops) -> axum::http::StatusCode {
    s.app.reindex();
    axum::http::StatusCode::ACCEPTED
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SearchParams {
    q: Option<String>,
    kind: Option<Kind>,
    lat: Option<f64>,
    lng: Option<f64>,
    radius_km: Option<f64>,
    category: Option<String>,
    vendor_id: Option<String>,
    vendor_kind: Option<String>,
    min_price: Option<i64>,
    max_price: Option<i64>,
    in_stock: Option<bool>,
    /// Only vendors taking orders now (active and within their hours),
    /// and their products.
    open_now: Option<bool>,
    /// Comma-separated; all must match.
    tags: Option<String>,
    sort: Option<Sort>,
    limit: Option<usize>,
    cursor: Option<String>,
    /// Which region's cell the router sends an anonymous search to; the
    /// cell that gets it searches itself.
    region: Option<String>,
}

/// Deepest result a cursor may reach.
const MAX_OFFSET: usize = 10_000;

/// Longest a search waits for the index to hold a write it must see
/// (indexing batches for at most 200 ms, and a waiting search cuts that
/// short).
const INDEX_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

#[utoipa::path(
    get,
    path = "/v1/search",
    tag = "search",
    params(
        ("q" = Option<String>, Query, description = "words; typos tolerated, the last word is a prefix"),
        ("kind" = Option<String>, Query, description = "product (default) | vendor"),
        ("lat" = Option<f64>, Query),
        ("lng" = Option<f64>, Query),
        ("radius_km" = Option<f64>, Query),
        ("category" = Option<String>, Query),
        ("vendor_id" = Option<String>, Query),
        ("vendor_kind" = Option<String>, Query),
        ("min_price" = Option<i64>, Query),
        ("max_price" = Option<i64>, Query),
        ("in_stock" = Option<bool>, Query),
        ("open_now" = Option<bool>, Query, description = "true: only vendors taking orders now (active, within their opening hours) and their products"),
        ("tags" = Option<String>, Query, description = "comma-separated, all must match"),
        ("sort" = Option<String>, Query, description = "relevance | distance | price_asc | price_desc | rating"),
        ("limit" = Option<usize>, Query),
        ("cursor" = Option<String>, Query),
        ("region" = Option<String>, Query, description = "picks the cell at the router (anonymous searches); ignored by the cell"),
        ("X-Cell-Index" = Option<u64>, Header, description = "answer only once the index holds every catalog change up to this index"),
        ("X-Consistency" = Option<String>, Header, description = "linearizable: hold every catalog change committed before the search"),
    ),
    responses(
        (status = 200, description = "hits, category facets, total", body = SearchPage),
        (status = 503, description = "index_behind: the index did not catch up in time", body = Problem),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
)]
pub(super) async fn search(
    State(s): State<AppState>,
    c: Consistency,
    q: Result<Query<SearchParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(p) = q.map_err(|e| ApiError::validation(e.body_text()))?;
    if p.region.as_ref().is_some_and(|r| r.len() > 64) {
        return Err(ApiError::validation("region is at most 64 characters"));
    }
    let limit = page_limit(p.limit)?;
    let offset = match p.cursor.as_deref() {
        None => 0,
        Some(c) => c
            .parse::<usize>()
            .ok()
            .filter(|o| *o <= MAX_OFFSET)
            .ok_or_else(|| ApiError::validation("bad cursor"))?,
    };
    let text = p.q.unwrap_or_default();
    if text.chars().count() > 256 {
        return Err(ApiError::validation("q is at most 256 characters"));
    }
    let near = match (p.lat, p.lng) {
        (Some(lat), Some(lng))
            if (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lng) =>
        {
            Some((lat, lng))
        }
        (None, None) => None,
        _ => {
            return Err(ApiError::validation(
                "lat and lng go together, within [-90, 90] and [-180, 180]",
            ))
        }
    };
    if let Some(r) = p.radius_km {
        if !(r > 0.0 && r <= 200.0) || near.is_none() {
            return Err(ApiError::validation(
                "radius_km must be in (0, 200] and needs lat/lng",
            ));
        }
    }
    let sort = p.sort.unwrap_or_default();
    if sort == Sort::Distance && near.is_none() {
        return Err(ApiError::validation("sort=distance needs lat/lng"));
    }
    if p.min_price.is_some_and(|v| v < 0) || p.max_price.is_some_and(|v| v < 0) {
        return Err(ApiError::validation("prices are non-negative"));
    }
    let tags: Vec<String> = p
        .tags
        .as_deref()
        .map(|t| {
            t.split(',')
                .map(|x| x.trim().to_lowercase())
                .filter(|x| !x.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if tags.len() > 20 {
        return Err(ApiError::validation("at most 20 tags"));
    }
    let open_now = p.open_now == Some(true);
    let mut query = SearchQuery {
        exclude_vendors: Vec::new(),
        text,
        kind: p.kind.unwrap_or_default(),
        near,
        radius_km: p.radius_km,
        category: p.category.map(|c| c.to_lowercase()),
        vendor_id: p.vendor_id,
        vendor_kind: p.vendor_kind,
        min_price: p.min_price,
        max_price: p.max_price,
        in_stock: p.in_stock,
        tags,
        sort,
        limit,
        offset,
    };
    if c != Consistency::Local {
        let applied = ensure_fresh(&s, c).await?;
        if !s.index_feed.caught_up(applied, INDEX_WAIT).await {
            return Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "index_behind",
                format!("the search index does not hold index {applied} yet"),
            )
            .retry_after(1));
        }
    }
    if open_now {
        // After the freshness wait: a vendor's own hours change counts.
        let read = s.node.store().read()?;
        query.exclude_vendors = s.closed_now.get(&read, now_ms())?.to_vec();
    }
    let index = s.search.clone();
    let started = std::time::Instant::now();
    let results = index.search_on_workers(query).await.map_err(|e| match e {
        SearchError::Interrupted => ApiError::internal(e),
        e => ApiError::validation(format!("bad search: {e}")),
    })?;
    s.metrics
        .search_seconds
        .observe(started.elapsed().as_secs_f64());
    let currency = s.cfg.currency.clone();
    let hits: Vec<Value> = results
        .hits
        .iter()
        .map(|h| {
            let mut v = json!({
                "id": h.id, "kind": h.kind, "name": h.name, "snippet": h.snippet, "score": h.score,
            });
            if let Some(d) = h.distance_km {
                v["distance_km"] = json!(d);
            }
            if let Some(p) = h.price {
                v["price"] = json!({"amount": p, "currency": currency});
            }
            if let (Some(id), Some(name)) = (&h.vendor_id, &h.vendor_name) {
                v["vendor"] = json!({"id": id, "name": name});
            }
            v
        })
        .collect();
    let next = offset + hits.len();
    // Past the counting cap `total` is a lower bound: more pages may exist.
    let more = (next as u64) < results.total || !results.total_exact;
    let next_cursor = (hits.len() == limit && more && next <= MAX_OFFSET).then(|| next.to_string());
    Ok(Json(json!({
        "hits": hits,
        "facets": {"category": results.facets},
        "total": results.total,
        "total_exact": results.total_exact,
        "next_cursor": next_cursor,
    })))
}
