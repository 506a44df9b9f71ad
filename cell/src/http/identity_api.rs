//! `/v1/auth/*`, `/v1/me`, the JWKS document and ops token minting.

use edge::token::{Claims, Role};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::{
    password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Argon2,
};
use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{
    extract::{Consistency, Ops, OptionalJson, Principal, StrictJson},
    openapi::*,
    problem::{ApiError, ApiResult},
    AppState,
};
use crate::{
    app::{Command, Response as AppResponse},
    catalog::Location,
    identity::{self, Account, IdentityCommand, IdentityResponse, NewRefresh},
};

/// Lifetime of an access token.
pub const ACCESS_TTL: Duration = Duration::from_secs(15 * 60);
/// Lifetime of a refresh token.
pub const REFRESH_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest ops token `POST /admin/tokens` mints.
const MAX_MINT_TTL: u64 = 24 * 3600;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/auth/signup", post(signup))
        .route("/v1/auth/login", post(login))
        .route("/v1/auth/refresh", post(refresh))
        .route("/v1/auth/logout", post(logout))
        .route("/v1/me", get(me))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/admin/tokens", post(mint))
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SignupRequest {
    email: String,
    password: String,
    name: String,
    role: Role,
    location: Option<Location>,
    region: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct LoginRequest {
    email: String,
    password: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RefreshRequest {
    refresh_token: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AccountView {
    pub id: String,
    pub email: String,
    pub name: String,
    pub role: Role,
    pub cell: String,
    pub created_at: String,
}

impl From<&Account> for AccountView {
    fn from(a: &Account) -> Self {
        Self {
            id: a.id.clone(),
            email: a.email.clone(),
            name: a.name.clone(),
            role: a.role,
            cell: a.cell.clone(),
            created_at: rfc3339(a.created_at),
        }
    }
}

pub fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn validate_email(email: &str) -> ApiResult<String> {
    let e = email.trim().to_ascii_lowercase();
    let ok = e.len() <= 254
        && e.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        })
        && e.chars().all(|c| c.is_ascii_graphic())
        && e.matches('@').count() == 1;
    if ok {
        Ok(e)
    } else {
        Err(ApiError::validation("email is not a valid address"))
    }
}

fn validate_password(p: &str) -> ApiResult<()> {
    let n = p.chars().count();
    if !(10..=256).contains(&n) {
        return Err(ApiError::validation(
            "password must be 10 to 256 characters",
        ));
    }
    Ok(())
}

fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// `<cell>.mcr_<random>`: the cell prefix is how a router finds the home
/// cell of an opaque refresh token, like the prefix of any other id.
fn new_refresh_token(cell: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    format!(
        "{cell}.mcr_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// A fresh refresh token in a new family: the token for the client, its
/// hash for the log.
fn new_session_refresh(cell: &str) -> (String, NewRefresh) {
    let token = new_refresh_token(cell);
    let refresh = NewRefresh {
        token_hash: hash_token(&token),
        family: ulid::Ulid::new().to_string(),
        expires_at: now_ms() + REFRESH_TTL.as_millis() as i64,
    };
    (token, refresh)
}

/// Hashing is deliberately slow: keep it off the async workers.
async fn hash_password(password: String) -> ApiResult<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| ApiError::internal(format!("hashing: {e}")))
    })
    .await
    .map_err(ApiError::internal)?
}

async fn verify_password(password: String, hash: Option<String>) -> ApiResult<bool> {
    tokio::task::spawn_blocking(move || {
        // Unknown accounts still cost one verification, so timing does
        // not reveal which emails exist.
        const DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$yE3b1iCHoVJ0e6KDCqJtqX6nHB3bYLKAC4QZ0n1P0dI";
        let stored = hash.as_deref().unwrap_or(DUMMY);
        let ok = PasswordHash::new(stored)
            .map(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
            .unwrap_or(false);
        ok && hash.is_some()
    })
    .await
    .map_err(ApiError::internal)
}

fn access_token(
    s: &AppState,
    sub: &str,
    role: Role,
    ttl: Duration,
    session: Option<&str>,
) -> (String, u64) {
    let now = now_ms() / 1000;
    let claims = Claims {
        sub: sub.to_string(),
        role,
        cell: s.cfg.cell.clone(),
        exp: now + ttl.as_secs() as i64,
        iat: now,
        jti: ulid::Ulid::new().to_string(),
        sid: session.map(str::to_string),
    };
    (s.keys.sign(&claims), ttl.as_secs())
}

/// The answer to signup, login and refresh: tokens for the session whose
/// refresh family is `family`.
fn session(
    s: &AppState,
    account: &Account,
    (refresh_token, family): (String, &str),
    status: StatusCode,
    index: u64,
) -> Response {
    let (token, expires_in) = access_token(s, &account.id, account.role, ACCESS_TTL, Some(family));
    (
        status,
        [("x-cell-index", index.to_string())],
        Json(json!({
            "account": AccountView::from(account),
            "access_token": token,
            "refresh_token": refresh_token,
            "expires_in": expires_in,
            "token_type": "Bearer",
        })),
    )
        .into_response()
}

async fn write_identity(s: &AppState, cmd: IdentityCommand) -> ApiResult<(IdentityResponse, u64)> {
    let written = s.node.write(&Command::Identity(cmd)).await?;
    match written.response {
        AppResponse::Identity(r) => Ok((r, written.index)),
        other => Err(ApiError::internal(format!("unexpected response {other:?}"))),
    }
}

#[utoipa::path(
    post,
    path = "/v1/auth/signup",
    tag = "identity",
    request_body = SignupRequest,
    responses(
        (status = 201, description = "account and tokens", body = Session),
        (status = 409, description = "email taken", body = Problem),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
)]
pub(super) async fn signup(
    State(s): State<AppState>,
    StrictJson(req): StrictJson<SignupRequest>,
) -> ApiResult<Response> {
    let email = validate_email(&req.email)?;
    validate_password(&req.password)?;
    let name = req.name.trim().to_string();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::validation("name must be 1 to 100 characters"));
    }
    if req.role == Role::Ops {
        return Err(ApiError::forbidden(
            "ops accounts are not created by signup",
        ));
    }
    if let Some(l) = &req.location {
        if !(-90.0..=90.0).contains(&l.lat) || !(-180.0..=180.0).contains(&l.lng) {
            return Err(ApiError::validation(
                "location must have lat in [-90, 90] and lng in [-180, 180]",
            ));
        }
    }
    if let Some(r) = &req.region {
        if r != &s.cfg.region {
            return Err(ApiError::validation(format!(
                "this cell serves region {:?}, not {r:?}",
                s.cfg.region
            )));
        }
    }
    let password_hash = hash_password(req.password).await?;
    let (refresh_token, refresh) = new_session_refresh(&s.cfg.cell);
    let family = refresh.family.clone();
    let account = Account {
        id: format!("{}.acc_{}", s.cfg.cell, ulid::Ulid::new()),
        email,
        name,
        role: req.role,
        cell: s.cfg.cell.clone(),
        password_hash,
        created_at: now_ms(),
    };
    let (resp, index) = write_identity(
        &s,
        IdentityCommand::Signup {
            account: account.clone(),
            refresh,
        },
    )
    .await?;
    match resp {
        IdentityResponse::SignedUp => Ok(session(
            &s,
            &account,
            (refresh_token, &family),
            StatusCode::CREATED,
            index,
        )),
        IdentityResponse::EmailTaken => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "an account with this email already exists",
        )),
        other => Err(ApiError::internal(format!("unexpected response {other:?}"))),
    }
}

fn bad_credentials() -> ApiError {
    ApiError::unauthorized("wrong email or password")
}

#[utoipa::path(
    post,
    path = "/v1/auth/login",
    tag = "identity",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "tokens", body = Session),
        (status = 401, description = "wrong credentials", body = Problem),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
)]
pub(super) async fn login(
    State(s): State<AppState>,
    StrictJson(req): StrictJson<LoginRequest>,
) -> ApiResult<Response> {
    let email = validate_email(&req.email).map_err(|_| bad_credentials())?;
    if req.password.len() > 1024 {
        return Err(bad_credentials());
    }
    // An account created a moment ago on another node must be visible.
    s.node.linearizable_barrier().await?;
    let account = identity::account_by_email(&s.node.store().read()?, &email)?;
    let ok = verify_password(
        req.password,
        account.as_ref().map(|a| a.password_hash.clone()),
    )
    .await?;
    let Some(account) = account.filter(|_| ok) else {
        return Err(bad_credentials());
    };
    let (refresh_token, refresh) = new_session_refresh(&s.cfg.cell);
    let family = refresh.family.clone();
    let (resp, index) = write_identity(
        &s,
        IdentityCommand::IssueRefresh {
            account_id: account.id.clone(),
            refresh,
        },
    )
    .await?;
    match resp {
        IdentityResponse::Issued => Ok(session(
            &s,
            &account,
            (refresh_token, &family),
            StatusCode::OK,
            index,
        )),
        _ => Err(bad_credentials()),
    }
}

#[utoipa::path(
    post,
    path = "/v1/auth/refresh",
    tag = "identity",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "a new pair; the old refresh token is spent", body = Session),
        (status = 401, description = "invalid or reused (the family is revoked)", body = Problem),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
)]
pub(super) async fn refresh(
    State(s): State<AppState>,
    StrictJson(req): StrictJson<RefreshRequest>,
) -> ApiResult<Response> {
    if req.refresh_token.len() > 256 {
        return Err(ApiError::unauthorized("invalid refresh token"));
    }
    let new_token = new_refresh_token(&s.cfg.cell);
    let now = now_ms();
    let (resp, index) = write_identity(
        &s,
        IdentityCommand::RotateRefresh {
            old_hash: hash_token(&req.refresh_token),
            new_hash: hash_token(&new_token),
            expires_at: now + REFRESH_TTL.as_millis() as i64,
            now,
        },
    )
    .await?;
    match resp {
        IdentityResponse::Rotated { account_id, family } => {
            let account = identity::account(&s.node.store().read()?, &account_id)?
                .ok_or_else(|| ApiError::unauthorized("the account no longer exists"))?;
            Ok(session(
                &s,
                &account,
                (new_token, &family),
                StatusCode::OK,
                index,
            ))
        }
        IdentityResponse::ReuseDetected => Err(ApiError::unauthorized(
            "refresh token reused: every session of this login was revoked",
        )),
        _ => Err(ApiError::unauthorized("invalid refresh token")),
    }
}

/// Ends a login session: revokes the refresh family of the given refresh
/// token (the caller's own), or with no body the one the access token was
/// issued for.
#[utoipa::path(
    post,
    path = "/v1/auth/logout",
    tag = "identity",
    request_body(content = Option<RefreshRequest>, description = "optional: the session's refresh token"),
    responses(
        (status = 204, description = "the refresh family is revoked"),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn logout(
    State(s): State<AppState>,
    principal: Principal,
    OptionalJson(req): OptionalJson<RefreshRequest>,
) -> ApiResult<Response> {
    let family = match req {
        Some(req) => {
            let hash = hash_token(&req.refresh_token);
            identity::refresh_family(&s.node.store().read()?, &hash)?
                .filter(|r| r.account_id == principal.sub)
                .map(|r| r.family)
        }
        None => principal.session.clone(),
    };
    // A token that is not the caller's (or a token minted outside a login)
    // ends nothing, and says so no differently: 204 either way.
    let Some(family) = family else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let (_, index) = write_identity(
        &s,
        IdentityCommand::RevokeFamily {
            family,
            account_id: principal.sub,
        },
    )
    .await?;
    Ok((
        StatusCode::NO_CONTENT,
        [("x-cell-index", index.to_string())],
    )
        .into_response())
}

#[utoipa::path(
    get,
    path = "/v1/me",
    tag = "identity",
    responses(
        (status = 200, description = "the account", body = AccountView),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn me(
    State(s): State<AppState>,
    principal: Principal,
    c: Consistency,
) -> ApiResult<Json<AccountView>> {
    if principal.role == Role::Ops && !principal.sub.contains(".acc_") {
        return Err(ApiError::not_found("ops tokens belong to no account"));
    }
    super::kv_api::ensure_fresh(&s, c).await?;
    let read = s.node.store().read()?;
    let account = match identity::account(&read, &principal.sub)? {
        Some(a) => a,
        None => {
            // Token minted on a node this one has not caught up with.
            drop(read);
            s.node.linearizable_barrier().await?;
            identity::account(&s.node.store().read()?, &principal.sub)?
                .ok_or_else(|| ApiError::not_found("no such account"))?
        }
    };
    Ok(Json(AccountView::from(&account)))
}

#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "identity",
    responses(
        (status = 200, description = "Ed25519 public keys (JWKS)"),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
)]
pub(super) async fn jwks(State(s): State<AppState>) -> Response {
    (
        [(axum::http::header::CACHE_CONTROL, "public, max-age=300")],
        Json(s.keys.jwks()),
    )
        .into_response()
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MintRequest {
    role: Role,
    ttl_seconds: Option<u64>,
    sub: Option<String>,
}

/// Short-lived tokens for operators and tools (`cellctl token mint`).
#[utoipa::path(
    post,
    path = "/admin/tokens",
    tag = "admin",
    request_body = MintRequest,
    responses(
        (status = 200, description = "a short-lived access token", body = MintedToken),
        (status = "4XX", description = "problem+json", body = Problem),
    ),
    security(("bearer" = [])),
)]
pub(super) async fn mint(
    State(s): State<AppState>,
    ops: Ops,
    StrictJson(req): StrictJson<MintRequest>,
) -> ApiResult<Json<serde_json::Value>> {
    if !ops.bootstrap {
        return Err(ApiError::forbidden(
            "only the ops bootstrap token mints tokens",
        ));
    }
    let ttl = req.ttl_seconds.unwrap_or(3600);
    if ttl == 0 || ttl > MAX_MINT_TTL {
        return Err(ApiError::validation(format!(
            "ttl_seconds must be 1..={MAX_MINT_TTL}"
        )));
    }
    let sub = req
        .sub
        .unwrap_or_else(|| format!("ops-{}", ulid::Ulid::new()));
    if sub.is_empty() || sub.len() > 128 {
        return Err(ApiError::validation("sub must be 1 to 128 characters"));
    }
    let (token, expires_in) = access_token(&s, &sub, req.role, Duration::from_secs(ttl), None);
    Ok(Json(
        json!({"access_token": token, "expires_in": expires_in, "token_type": "Bearer", "kid": s.keys.active_kid()}),
    ))
}
