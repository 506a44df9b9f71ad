//! Assembly: the router's own routes, the proxy fallback, the edge
//! middleware, listeners.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use futures::future::{BoxFuture, Either};
use futures::stream::{FuturesUnordered, StreamExt as _};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::sync::mpsc;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::{get, post, put};
use http::{header, HeaderValue};

use crate::admin;
use crate::affinity::Affinity;
use crate::http1;
use crate::loops::Loops;
use crate::problem::{Problem, RequestId};
use crate::proxy;
use crate::state::RouterState;

pub fn app(state: Arc<RouterState>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(admin::healthz))
        .route("/readyz", get(admin::readyz))
        .route("/metrics", get(admin::metrics))
        .route("/admin/regions", get(admin::list))
        .route(
            "/admin/regions/{name}",
            put(admin::put).delete(admin::remove),
        )
        .route("/admin/regions/{name}/drain", post(admin::drain))
        .fallback(proxy::handle)
        .layer(axum::middleware::from_fn(edge_layer))
        .with_state(state)
}

/// Longest client-supplied request id that is passed on.
const MAX_REQUEST_ID: usize = 128;

/// The caller's request id when it is a sensible one, else a new one.
pub(crate) fn request_id(headers: &http::HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty() && v.len() <= MAX_REQUEST_ID && v.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_string)
        .unwrap_or_else(|| ulid::Ulid::new().to_string())
}

/// Request ids in and out, problem bodies with the id, and the security
/// headers on the router's own answers (cells set their own).
async fn edge_layer(mut req: Request, next: Next) -> Response {
    let id = request_id(req.headers());
    req.extensions_mut().insert(RequestId(id.clone()));
    finish(next.run(req).await, &id)
}

pub(crate) fn finish(mut resp: Response, id: &str) -> Response {
    if let Some(p) = resp.extensions_mut().remove::<Problem>() {
        resp = p.render(id);
    } else if resp.status() == http::StatusCode::METHOD_NOT_ALLOWED
        && !resp.headers().contains_key(header::CONTENT_TYPE)
    {
        // axum's own 405 on the router's endpoints is bare (a cell's,
        // passed through, has its problem body already).
        let allow = resp.headers().get(header::ALLOW).cloned();
        resp = Problem::new(
            http::StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this endpoint does not take that method (see Allow)",
        )
        .render(id);
        if let Some(allow) = allow {
            resp.headers_mut().insert(header::ALLOW, allow);
        }
    }
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert("x-request-id", v);
    }
    h.entry(header::X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

/// The router's own endpoints; everything else belongs to a cell.
pub(crate) fn is_own_endpoint(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics" | "/admin/regions")
        || path.starts_with("/admin/regions/")
}

/// Serves until the process is told to stop, client connections on
/// `loops` event loops (see `loops`).
pub async fn run(state: Arc<RouterState>, loops: usize) -> anyhow::Result<()> {
    let tls = match &state.cfg.tls {
        Some((cert, key)) => Some(edge::tls::server_config(cert, key, None)?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(state.cfg.listen).await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(listen = %listener.local_addr()?, %scheme, "router listening");
    println!("router listening on {scheme}://{}", listener.local_addr()?);
    println!("ops token in {}", state.cfg.ops_token_file.display());
    tokio::spawn(state.clone().health_loop());
    let app = app(state.clone());
    let loops = Loops::start(loops, tls, move |io, peer| {
        serve_connection(io, peer, app.clone(), state.clone())
    })?;
    let server = tokio::spawn(accept(listener, loops));
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("shutting down"),
        r = server => tracing::error!(result = ?r, "server stopped"),
    }
    Ok(())
}

/// Accepts connections and deals them out to the event loops.
async fn accept(listener: tokio::net::TcpListener, loops: Loops) {
    loop {
        let (stream, peer) = edge::tls::next_connection(&listener).await;
        match stream.into_std() {
            Ok(stream) => loops.hand(stream, peer),
            Err(e) => tracing::warn!(%peer, error = %e, "cannot hand over accepted connection"),
        }
    }
}

/// One client connection, with the upstream connections it owns (see
/// `affinity`) driven on the same task.
async fn serve_connection(
    io: Box<dyn edge::tls::Stream>,
    peer: SocketAddr,
    app: axum::Router,
    state: Arc<RouterState>,
) {
    // Plain kept-alive GETs never leave the router's own loop; the first
    // request it does not take hands the connection to hyper.
    let io = match http1::serve(io, peer, &state).await {
        http1::Outcome::Closed => return,
        http1::Outcome::Handoff(io) => io,
    };
    let (driver, mut upstreams) = mpsc::unbounded_channel::<BoxFuture<'static, ()>>();
    let affinity = Arc::new(Affinity::new(peer.ip(), driver));
    let service = TowerToHyperService::new(tower::service_fn(
        move |mut req: http::Request<hyper::body::Incoming>| {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            req.extensions_mut().insert(affinity.clone());
            if is_own_endpoint(req.uri().path()) {
                return Either::Left(tower::ServiceExt::oneshot(app.clone(), req));
            }
            // The proxy path skips axum's routing: same edge work, less
            // per-request machinery.
            let state = state.clone();
            Either::Right(async move {
                let id = request_id(req.headers());
                req.extensions_mut().insert(RequestId(id.clone()));
                let resp = proxy::handle(State(state), req.map(Body::new)).await;
                Ok::<_, std::convert::Infallible>(finish(resp, &id))
            })
        },
    ));
    // Clients of the router do not pipeline (its own loop answers plain
    // GETs before hyper sees a connection).
    let builder = edge::tls::connection_builder(false);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    let mut driven = FuturesUnordered::new();
    loop {
        tokio::select! {
            r = &mut conn => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with error");
                }
                break;
            }
            Some(f) = upstreams.recv() => driven.push(f),
            Some(()) = driven.next(), if !driven.is_empty() => {}
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bare_405_becomes_a_problem_keeping_allow() {
        let bare = http::Response::builder()
            .status(http::StatusCode::METHOD_NOT_ALLOWED)
            .header(header::ALLOW, "GET,HEAD")
            .body(Body::empty())
            .unwrap();
        let resp = finish(bare, "req-1");
        assert_eq!(resp.status(), http::StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers()[header::ALLOW], "GET,HEAD");
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["code"], "method_not_allowed");
        assert_eq!(v["request_id"], "req-1");
        // A cell's answer passes through as it is.
        let cells = http::Response::builder()
            .status(http::StatusCode::METHOD_NOT_ALLOWED)
            .header(header::CONTENT_TYPE, "application/problem+json")
            .body(Body::from("{}"))
            .unwrap();
        let resp = finish(cells, "req-2");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        assert_eq!(&body[..], b"{}");
    }
}
