//! `/v1/vendors`, `/v1/products`: the catalog. Reads are public and go
//! through the read cache; writes need the owning vendor (or ops for
//! vendor profiles).

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post, put},
    Json, Router,
};
use edge::token::Role;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{
    extract::{page_limit, Consistency, Principal, StrictJson},
    identity_api::{now_ms, rfc3339},
    kv_api::ensure_fresh,
    openapi::*,
    problem::{ApiError, ApiResult},
    AppState,
};
use crate::{
    app::{Command, Response as AppResponse},
    catalog::{
        self, Actor, CatalogCommand, CatalogResponse, Location, Money, Product, ProductPatch,
        Vendor, VendorKind, VendorPatch, VendorStatus,
    },
    hours::{HoursInput, OpeningHours},
};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/vendors", post(create_vendor))
        .route("/v1/vendors/{id}", get(get_vendor).patch(patch_vendor))
        .route(
            "/v1/vendors/{id}/products",
            get(list_products).post(create_product),
        )
        .route(
            "/v1/products/{id}",
            get(get_product).patch(patch_product).delete(delete_product),
        )
        .route("/v1/products/{id}/stock", put(set_stock))
}

const MAX_TEXT: usize = 2000;
const MAX_NAME: usize = 120;
const MAX_TAGS: usize = 20;
const MAX_PRICE: i64 = 100_000_000;
const MAX_STOCK: i64 = 1_000_000_000;

fn text(field: &str, v: &str, min: usize, max: usize) -> ApiResult<String> {
    let t = v.trim();
    let n = t.chars().count();
    if n < min || n > max || t.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ApiError::validation(format!(
            "{field} must be {min} to {max} printable characters"
        )));
    }
    Ok(t.to_string())
}

fn tags(v: &[String]) -> ApiResult<Vec<String>> {
    if v.len() > MAX_TAGS {
        return Err(ApiError::validation(format!("at most {MAX_TAGS} tags")));
    }
    v.iter()
        .map(|t| text("tag", t, 1, 32).map(|t| t.to_lowercase()))
        .collect()
}

fn location(l: &Location) -> ApiResult<Location> {
    if !l.is_valid() {
        return Err(ApiError::validation(
            "location must have lat in [-90, 90] and lng in [-180, 180]",
        ));
    }
    Ok(*l)
}

fn price(s: &AppState, m: &Money) -> ApiResult<Money> {
    if m.currency != s.cfg.currency {
        return Err(ApiError::validation(format!(
            "prices in this cell are in {}",
            s.cfg.currency
        )));
    }
    if !(0..=MAX_PRICE).contains(&m.amount) {
        return Err(ApiError::validation(format!(
            "price amount must be 0..={MAX_PRICE} minor units"
        )));
    }
    Ok(m.clone())
}

fn stock(v: Option<i64>) -> ApiResult<Option<i64>> {
    match v {
        Some(n) if !(0..=MAX_STOCK).contains(&n) => Err(ApiError::validation(format!(
            "stock must be 0..={MAX_STOCK} or null (unlimited)"
        ))),
        other => Ok(other),
    }
}

/// Ids name their cell and kind; anything else is not found here.
fn check_id(s: &AppState, id: &str, kind: &str) -> ApiResult<()> {
    let prefix = format!("{}.{kind}_", s.cfg.cell);
    let ok = id.len() <= 80
        && id
            .strip_prefix(&prefix)
            .is_some_and(|u| u.len() == 26 && u.chars().all(|c| c.is_ascii_alphanumeric()));
    if ok {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "no such {}",
            if kind == "ven" { "vendor" } else { "product" }
        )))
    }
}

/// A vendor's stored view (what the read cache holds): everything but
/// whether it is open, which changes with the clock, not with the state.
pub fn vendor_json(
    v: &Vendor,
    rating: crate::ratings::Tally,
    hours: Option<&OpeningHours>,
) -> Value {
    json!({
        "id": v.id, "owner_id": v.owner_id, "name": v.name, "kind": v.kind,
        "description": v.description, "location": {"lat": v.location.lat, "lng": v.location.lng},
        "address": v.address, "prep_minutes": v.prep_minutes, "tags": v.tags, "status": v.status,
        "hours": hours.map(OpeningHours::to_json),
        "rating": rating.average(), "ratings": rating.count,
        "created_at": rfc3339(v.created_at), "updated_at": rfc3339(v.updated_at),
    })
}

/// A vendor with its customers' rating and its hours.
fn vendor_view(read: &storage::ReadTxn, v: &Vendor) -> ApiResult<Value> {
    let hours = catalog::hours(read, &v.id)?;
    Ok(vendor_json(
        v,
        crate::ratings::tally(read, &v.id)?,
        hours.as_ref(),
    ))
}

/// Adds `open_now` and `next_change_at` to a vendor view, for the moment
/// it is served.
pub(super) fn with_open_status(mut view: Value, now: i64) -> Value {
    let hours = view
        .get("hours")
        .filter(|h| !h.is_null())
        .and_then(|h| serde_json::from_value::<HoursInput>(h.clone()).ok())
        .and_then(|h| OpeningHours::parse(&h).ok());
    let (open, next) = OpeningHours::status_json(hours.as_ref(), now);
    if let Some(o) = view.as_object_mut() {
        o.insert("open_now".into(), open.into());
        o.insert("next_change_at".into(), next.map(rfc3339).into());
    }
    view
}

fn opening_hours(h: &HoursInput) -> ApiResult<OpeningHours> {
    OpeningHours::parse(h).map_err(ApiError::validation)
}

/// Tells a field set to `null` (`Some(None)`) from one left out (`None`).
fn nullable<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

pub fn product_json(p: &Product) -> Value {
    json!({
        "id": p.id, "vendor_id": p.vendor_id, "name": p.name, "description": p.description,
        "category": p.category, "price": {"amount": p.price.amount, "currency": p.price.currency},
        "stock": p.stock, "available": p.available(), "tags": p.tags,
        "created_at": rfc3339(p.created_at), "updated_at": rfc3339(p.updated_at),
    })
}

fn actor(p: &Principal) -> Actor {
    Actor {
        account_id: p.sub.clone(),
        is_ops: p.role == Role::Ops,
    }
}

fn require(p: &Principal, roles: &[Role]) -> ApiResult<()> {
    if roles.contains(&p.role) {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "this needs the {} role",
            roles[0]
        )))
    }
}

async fn write(s: &AppState, cmd: CatalogCommand) -> ApiResult<(CatalogResponse, u64)> {
    let written = s.node.write(&Command::Catalog(Box::new(cmd))).await?;
    match written.response {
        AppResponse::Catalog(r) => Ok((*r, written.index)),
        other => Err(ApiError::internal(format!("unexpected response {other:?}"))),
    }
}

fn answer(
    s: &AppState,
    resp: CatalogResponse,
    index: u64,
    status: StatusCode,
) -> ApiResult<Response> {
    let body = match resp {
        CatalogResponse::Vendor(v) => {
            with_open_status(vendor_view(&s.node.store().read()?, &v)?, now_ms())
        }
        CatalogResponse::Product(p) => product_json(&p),
        CatalogResponse::Deleted => {
            return Ok((
                StatusCode::NO_CONTENT,
                [("x-cell-index", index.to_string())],
            )
                .into_response())
        }
        CatalogResponse::NotFound => return Err(ApiError::not_found("no such vendor or product")),
        CatalogResponse::Forbidden => {
            return Err(ApiError::forbidden("only the owner may change this"))
        }
    };
    Ok((status, [("x-cell-index", index.to_string())], Json(body)).into_response())
}

/// A public read model: from the read cache, else rendered from redb and
/// cached under `<kind>/<id>`.
async fn cached_view(
    s: &AppState,
    kind: &str,
    id: &str,
    render: impl FnOnce(&storage::ReadTxn, &str) -> ApiResult<Option<Value>>,
) -> ApiResult<Response> {
    let node = s.node.clone();
    let found = s
        .read_models
        .get_or_load::<ApiError>(&format!("{kind}/{id}"), || {
            let view = render(&node.store().read()?, id)?;
            Ok(view.map(|v| serde_json::to_vec(&v).unwrap_or_default()))
        })
        .await?;
    let bytes = found.ok_or_else(|| ApiError::not_found(format!("no such {kind}")))?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        bytes,
    )
        .into_response())
}

/// Which public read model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Public {
    Vendor,
    Product,
}

/// The public views (as `GET /v1/vendors/{id}` or `/v1/products/{id}`
/// answer them) of many objects at once: cached ones from the read cache,
/// the rest rendered in a single redb read. Missing or malformed ids are
/// simply absent from the result.
pub(super) async fn public_views(
    s: &AppState,
    kind: Public,
    ids: &[String],
) -> ApiResult<std::collections::HashMap<String, Value>> {
    let (name, tag) = match kind {
        Public::Vendor => ("vendor", "ven"),
        Public::Product => ("product", "prd"),
    };
    let ids: Vec<&String> = ids
        .iter()
        .filter(|id| check_id(s, id, tag).is_ok())
        .collect();
    let keys: Vec<String> = ids.iter().map(|id| format!("{name}/{id}")).collect();
    let node = s.node.clone();
    let found = s
        .read_models
        .get_many_or_load::<ApiError>(&keys, |misses| {
            let read = node.store().read()?;
            misses
                .iter()
                .map(|&i| {
                    let view = match kind {
                        Public::Vendor => catalog::vendor(&read, ids[i])?
                            .map(|v| vendor_view(&read, &v))
                            .transpose()?,
                        Public::Product => {
                            catalog::product(&read, ids[i])?.map(|p| product_json(&p))
                        }
                    };
                    Ok(view.map(|v| serde_json::to_vec(&v).unwrap_or_default()))
                })
                .collect()
        })
        .await?;
    let now = now_ms();
    Ok(ids
        .into_iter()
        .zip(found)
        .filter_map(|(id, bytes)| {
            let v = serde_json::from_slice(&bytes?).ok()?;
            let v = match kind {
                Public::Vendor => with_open_status(v, now),
                Public::Product => v,
            };
            Some((id.clone(), v))
        })
        .collect())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateVendor {
    name: String,
    kind: VendorKind,
    #[serde(default)]
    description: String,
    location: Location,
    address: String,
    prep_minutes: u32,
    #[serde(default)]
    tags: Vec<String>,
    /// Weekly opening hours; left out, the vendor is always open.
    hours: Option<HoursInput>,
}

#[utoipa::path(
    post,
    path = "/v1/vendors",
    tag = "catalog",
    request_body = CreateVendor,
    responses(
        (status = 201, description = "the vendor", body = VendorView),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn create_vendor(
    State(s): State<AppState>,
    p: Principal,
    StrictJson(r): StrictJson<CreateVendor>,
) -> ApiResult<Response> {
    require(&p, &[Role::Vendor])?;
    if r.prep_minutes > 240 {
        return Err(ApiError::validation("prep_minutes must be 0..=240"));
    }
    let hours = r.hours.as_ref().map(opening_hours).transpose()?;
    let now = now_ms();
    let vendor = Vendor {
        id: format!("{}.ven_{}", s.cfg.cell, ulid::Ulid::new()),
        owner_id: p.sub.clone(),
        name: text("name", &r.name, 1, MAX_NAME)?,
        kind: r.kind,
        description: text("description", &r.description, 0, MAX_TEXT)?,
        location: location(&r.location)?,
        address: text("address", &r.address, 1, 300)?,
        prep_minutes: r.prep_minutes,
        tags: tags(&r.tags)?,
        status: VendorStatus::Active,
        created_at: now,
        updated_at: now,
    };
    // The older command when there are no hours: nodes of the previous
    // build (during an upgrade) still apply it.
    let cmd = match hours {
        None => CatalogCommand::CreateVendor { vendor },
        hours => CatalogCommand::CreateVendorWithHours { vendor, hours },
    };
    let (resp, index) = write(&s, cmd).await?;
    answer(&s, resp, index, StatusCode::CREATED)
}

#[utoipa::path(
    get,
    path = "/v1/vendors/{id}",
    tag = "catalog",
    params(
        ("id" = String, Path, description = "object id, <cell>.<kind>_<ulid>"),
    ),
    responses(
        (status = 200, description = "the vendor", body = VendorView),
        (status = 404, description = "no such vendor", body = Problem),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
)]
pub(super) async fn get_vendor(
    State(s): State<AppState>,
    c: Consistency,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    check_id(&s, &id, "ven")?;
    ensure_fresh(&s, c).await?;
    let mut views = public_views(&s, Public::Vendor, std::slice::from_ref(&id)).await?;
    let view = views
        .remove(&id)
        .ok_or_else(|| ApiError::not_found("no such vendor"))?;
    Ok(Json(view).into_response())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PatchVendor {
    name: Option<String>,
    description: Option<String>,
    location: Option<Location>,
    address: Option<String>,
    prep_minutes: Option<u32>,
    tags: Option<Vec<String>>,
    status: Option<VendorStatus>,
    /// New weekly hours, or `null` for always open; left out, unchanged.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<HoursInput>)]
    hours: Option<Option<HoursInput>>,
}

#[utoipa::path(
    patch,
    path = "/v1/vendors/{id}",
    tag = "catalog",
    params(
        ("id" = String, Path, description = "object id, <cell>.<kind>_<ulid>"),
    ),
    request_body = PatchVendor,
    responses(
        (status = 200, description = "the vendor", body = VendorView),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn patch_vendor(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    StrictJson(r): StrictJson<PatchVendor>,
) -> ApiResult<Response> {
    require(&p, &[Role::Vendor, Role::Ops])?;
    check_id(&s, &id, "ven")?;
    if matches!(
        r,
        PatchVendor {
            name: None,
            description: None,
            location: None,
            address: None,
            prep_minutes: None,
            tags: None,
            status: None,
            hours: None,
        }
    ) {
        return Err(nothing_to_change());
    }
    if r.prep_minutes.is_some_and(|m| m > 240) {
        return Err(ApiError::validation("prep_minutes must be 0..=240"));
    }
    let patch = VendorPatch {
        name: r
            .name
            .as_deref()
            .map(|v| text("name", v, 1, MAX_NAME))
            .transpose()?,
        description: r
            .description
            .as_deref()
            .map(|v| text("description", v, 0, MAX_TEXT))
            .transpose()?,
        location: r.location.as_ref().map(location).transpose()?,
        address: r
            .address
            .as_deref()
            .map(|v| text("address", v, 1, 300))
            .transpose()?,
        prep_minutes: r.prep_minutes,
        tags: r.tags.as_deref().map(tags).transpose()?,
        status: r.status,
    };
    let hours = match &r.hours {
        None => None,
        Some(None) => Some(None),
        Some(Some(h)) => Some(Some(opening_hours(h)?)),
    };
    let cmd = match hours {
        None => CatalogCommand::UpdateVendor {
            id,
            actor: actor(&p),
            patch,
            now: now_ms(),
        },
        hours => CatalogCommand::UpdateVendorWithHours {
            id,
            actor: actor(&p),
            patch,
            hours,
            now: now_ms(),
        },
    };
    let (resp, index) = write(&s, cmd).await?;
    answer(&s, resp, index, StatusCode::OK)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

#[utoipa::path(
    get,
    path = "/v1/vendors/{id}/products",
    tag = "catalog",
    params(
        ("id" = String, Path, description = "object id, <cell>.<kind>_<ulid>"),
        ("limit" = Option<usize>, Query),
        ("cursor" = Option<String>, Query),
    ),
    responses(
        (status = 200, description = "the menu", body = ProductPage),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
)]
pub(super) async fn list_products(
    State(s): State<AppState>,
    c: Consistency,
    Path(id): Path<String>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let page = menu_request(&s, &id, q)?;
    ensure_fresh(&s, c).await?;
    let bytes = menu_pages(&s, std::slice::from_ref(&page))
        .await?
        .pop()
        .flatten()
        .ok_or_else(|| ApiError::not_found("no such vendor"))?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        bytes,
    )
        .into_response())
}

/// Pages of vendors' menus as `GET /v1/vendors/{id}/products` answers
/// them (JSON): cached ones from the read cache, the rest rendered in one
/// redb read and cached; `None` for a vendor that does not exist. Call
/// after waiting for freshness.
pub(crate) async fn menu_pages(
    s: &AppState,
    pages: &[MenuPage],
) -> ApiResult<Vec<Option<Vec<u8>>>> {
    let keys: Vec<String> = pages
        .iter()
        .map(|p| {
            s.read_models
                .menu_key(&p.vendor_id, p.limit, p.cursor.as_deref())
        })
        .collect();
    let node = s.node.clone();
    s.read_models
        .get_many_or_load::<ApiError>(&keys, |misses| {
            let read = node.store().read()?;
            misses
                .iter()
                .map(|&i| match menu_page(&read, &pages[i]) {
                    Ok(v) => Ok(Some(serde_json::to_vec(&v).unwrap_or_default())),
                    Err(e) if e.status == StatusCode::NOT_FOUND => Ok(None),
                    Err(e) => Err(e),
                })
                .collect()
        })
        .await
}

/// Which page of which vendor's menu is asked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct MenuPage {
    pub vendor_id: String,
    pub limit: usize,
    pub cursor: Option<String>,
}

/// Checks a request for a page of `vendor_id`'s menu.
pub(crate) fn menu_request(
    s: &AppState,
    vendor_id: &str,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<MenuPage, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::validation(e.body_text()))?;
    check_id(s, vendor_id, "ven")?;
    Ok(MenuPage {
        vendor_id: vendor_id.to_string(),
        limit: page_limit(q.limit)?,
        cursor: q.cursor,
    })
}

/// A page of a vendor's menu as `GET /v1/vendors/{id}/products` answers it
/// (GraphQL reads many in one transaction).
fn menu_page(read: &storage::ReadTxn, page: &MenuPage) -> Result<Value, ApiError> {
    if catalog::vendor(read, &page.vendor_id)?.is_none() {
        return Err(ApiError::not_found("no such vendor"));
    }
    let limit = page.limit;
    let mut items = catalog::menu(read, &page.vendor_id, page.cursor.as_deref(), limit + 1)?;
    let next = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|p| p.id.clone())
    } else {
        None
    };
    Ok(json!({"items": items.iter().map(product_json).collect::<Vec<_>>(), "next_cursor": next}))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateProduct {
    name: String,
    #[serde(default)]
    description: String,
    category: String,
    price: Money,
    stock: Option<i64>,
    #[serde(default)]
    tags: Vec<String>,
}

#[utoipa::path(
    post,
    path = "/v1/vendors/{id}/products",
    tag = "catalog",
    params(
        ("id" = String, Path, description = "object id, <cell>.<kind>_<ulid>"),
    ),
    request_body = CreateProduct,
    responses(
        (status = 201, description = "the product", body = ProductView),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn create_product(
    State(s): State<AppState>,
    p: Principal,
    Path(vendor_id): Path<String>,
    StrictJson(r): StrictJson<CreateProduct>,
) -> ApiResult<Response> {
    require(&p, &[Role::Vendor])?;
    check_id(&s, &vendor_id, "ven")?;
    let now = now_ms();
    let product = Product {
        id: format!("{}.prd_{}", s.cfg.cell, ulid::Ulid::new()),
        vendor_id,
        name: text("name", &r.name, 1, MAX_NAME)?,
        description: text("description", &r.description, 0, MAX_TEXT)?,
        category: text("category", &r.category, 1, 60)?.to_lowercase(),
        price: price(&s, &r.price)?,
        stock: stock(r.stock)?,
        tags: tags(&r.tags)?,
        created_at: now,
        updated_at: now,
    };
    let (resp, index) = write(
        &s,
        CatalogCommand::CreateProduct {
            product,
            actor: actor(&p),
        },
    )
    .await?;
    answer(&s, resp, index, StatusCode::CREATED)
}

#[utoipa::path(
    get,
    path = "/v1/products/{id}",
    tag = "catalog",
    params(
        ("id" = String, Path, description = "object id, <cell>.<kind>_<ulid>"),
    ),
    responses(
        (status = 200, description = "the product", body = ProductView),
        (status = 404, description = "no such product", body = Problem),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
)]
pub(super) async fn get_product(
    State(s): State<AppState>,
    c: Consistency,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    check_id(&s, &id, "prd")?;
    ensure_fresh(&s, c).await?;
    cached_view(&s, "product", &id, |read, id| {
        Ok(catalog::product(read, id)?.map(|p| product_json(&p)))
    })
    .await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PatchProduct {
    name: Option<String>,
    description: Option<String>,
    category: Option<String>,
    price: Option<Money>,
    tags: Option<Vec<String>>,
}

#[utoipa::path(
    patch,
    path = "/v1/products/{id}",
    tag = "catalog",
    params(
        ("id" = String, Path, description = "object id, <cell>.<kind>_<ulid>"),
    ),
    request_body = PatchProduct,
    responses(
        (status = 200, description = "the product", body = ProductView),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn patch_product(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    StrictJson(r): StrictJson<PatchProduct>,
) -> ApiResult<Response> {
    require(&p, &[Role::Vendor])?;
    check_id(&s, &id, "prd")?;
    if matches!(
        r,
        PatchProduct {
            name: None,
            description: None,
            category: None,
            price: None,
            tags: None,
        }
    ) {
        return Err(nothing_to_change());
    }
    let patch = ProductPatch {
        name: r
            .name
            .as_deref()
            .map(|v| text("name", v, 1, MAX_NAME))
            .transpose()?,
        description: r
            .description
            .as_deref()
            .map(|v| text("description", v, 0, MAX_TEXT))
            .transpose()?,
        category: r
            .category
            .as_deref()
            .map(|v| text("category", v, 1, 60).map(|c| c.to_lowercase()))
            .transpose()?,
        price: r.price.as_ref().map(|m| price(&s, m)).transpose()?,
        tags: r.tags.as_deref().map(tags).transpose()?,
    };
    let (resp, index) = write(
        &s,
        CatalogCommand::UpdateProduct {
            id,
            actor: actor(&p),
            patch,
            now: now_ms(),
        },
    )
    .await?;
    answer(&s, resp, index, StatusCode::OK)
}

#[utoipa::path(
    delete,
    path = "/v1/products/{id}",
    tag = "catalog",
    params(
        ("id" = String, Path, description = "object id, <cell>.<kind>_<ulid>"),
    ),
    responses(
        (status = 204, description = "deleted"),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn delete_product(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    require(&p, &[Role::Vendor])?;
    check_id(&s, &id, "prd")?;
    let (resp, index) = write(
        &s,
        CatalogCommand::DeleteProduct {
            id,
            actor: actor(&p),
        },
    )
    .await?;
    answer(&s, resp, index, StatusCode::NO_CONTENT)
}

/// An empty patch is refused rather than written through the log as a
/// change of nothing.
fn nothing_to_change() -> ApiError {
    ApiError::validation("the patch changes nothing: give at least one field")
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SetStock {
    /// `null` is unlimited. The field itself is required: `{}` is refused
    /// rather than read as "unlimited".
    #[serde(deserialize_with = "Option::deserialize")]
    #[schema(required = true)]
    stock: Option<i64>,
}

#[utoipa::path(
    put,
    path = "/v1/products/{id}/stock",
    tag = "catalog",
    params(
        ("id" = String, Path, description = "object id, <cell>.<kind>_<ulid>"),
    ),
    request_body = SetStock,
    responses(
        (status = 200, description = "the product", body = ProductView),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn set_stock(
    State(s): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
    StrictJson(r): StrictJson<SetStock>,
) -> ApiResult<Response> {
    require(&p, &[Role::Vendor])?;
    check_id(&s, &id, "prd")?;
    let cmd = CatalogCommand::SetStock {
        id,
        actor: actor(&p),
        stock: stock(r.stock)?,
        now: now_ms(),
    };
    let (resp, index) = write(&s, cmd).await?;
    answer(&s, resp, index, StatusCode::OK)
}
