//! rustls configuration and the accept loop shared by the peer port and
//! the public API: plain HTTP/1.1 + h2c, or TLS with ALPN (h2, http/1.1)
//! and optional client-certificate verification (mTLS) against a CA.

use std::{path::Path, sync::Arc, time::Duration};

use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

/// TLS material that could not be loaded or combined.
#[derive(Debug, Clone, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsError(pub String);

fn tls_err(e: impl ToString) -> TlsError {
    TlsError(e.to_string())
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| tls_err(format!("{}: {e}", path.display())))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(tls_err(format!("{}: no certificate found", path.display())));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|e| tls_err(format!("{}: {e}", path.display())))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| tls_err(format!("{}: {e}", path.display())))?
        .ok_or_else(|| tls_err(format!("{}: no private key found", path.display())))
}

fn root_store(ca: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(ca)? {
        roots.add(c).map_err(tls_err)?;
    }
    Ok(roots)
}

/// Server side. With `client_ca`, clients must present a certificate issued
/// by that CA (mutual TLS).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(root_store(ca)?),
                provider(),
            )
            .build()
            .map_err(tls_err)?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(tls_err)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Client side: trust `ca`; present `identity` (cert, key) when given.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .with_root_certificates(root_store(ca)?);
    let mut cfg = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(tls_err)?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// An accepted connection, after the TLS handshake when there is one.
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// How long a request head may take; hyper applies it to kept-alive
/// HTTP/1.1 connections waiting for their next request too, so it is also
/// how long an idle connection stays open.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long clients of cells and routers keep an idle pooled HTTP/1.1
/// connection: below the servers' idle close (`HEADER_READ_TIMEOUT`), so a
/// pooled connection is never handed a request just as the server closes
/// it (which fails the request, not retried when it may have been sent).
pub const CLIENT_POOL_IDLE: Duration = Duration::from_secs(5);

/// The HTTP/1.1 + HTTP/2 connection settings every listener uses.
/// `pipelined`: answers to pipelined requests (routers send them) go out
/// in one write when their requests came in one read. Only for peers
/// that pipeline: with it hyper never flushes the `400`/`414`/`431` it
/// answers a request head it cannot parse (the unparsed bytes stay in
/// its read buffer), so such a client would get a bare close.
pub fn connection_builder(pipelined: bool) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .pipeline_flush(pipelined);
    // High on purpose: a router multiplexes many users' long polls to a
    // node over one HTTP/2 connection. Work is bounded by the node's
    // in-flight and long-poll limits, not by streams.
    builder.http2().max_concurrent_streams(16_384);
    builder
}

/// Accepts connections on `listener` until the process ends and hands each
/// (after its TLS handshake, if `tls`) to `handle` on its own task.
/// Connections that fail their handshake are dropped without reaching it.
pub async fn accept_loop<H, F>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    handle: H,
) where
    H: Fn(Box<dyn Stream>, std::net::SocketAddr) -> F + Clone + Send + 'static,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let (stream, peer) = next_connection(&listener).await;
        let handle = handle.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            if let Some(io) = handshake(acceptor.as_ref(), stream, peer).await {
                handle(io, peer).await;
            }
        });
    }
}

/// The next accepted connection, with Nagle off. Accept errors (e.g.
/// EMFILE) are logged and retried after a pause instead of spinning.
pub async fn next_connection(
    listener: &TcpListener,
) -> (tokio::net::TcpStream, std::net::SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return (stream, peer);
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The accepted connection as a stream to serve: through the TLS handshake
/// (bounded, so a silent client cannot hold it) when there is an acceptor;
/// `None` when the handshake failed.
pub async fn handshake(
    acceptor: Option<&tokio_rustls::TlsAcceptor>,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
) -> Option<Box<dyn Stream>> {
    let stream = crate::linger::Lingering::new(stream);
    let Some(acceptor) = acceptor else {
        return Some(Box::new(stream));
    };
    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(Box::new(tls)),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => None,
    }
}

/// Serve `app` on `listener` until the process ends. Connections that fail
/// their handshake or speak garbage are dropped; they never reach `app`.
/// Connections from `pipelining` addresses (routers) flush pipelined
/// answers together (see [`connection_builder`]).
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    pipelining: Arc<[std::net::IpAddr]>,
) {
    accept_loop(listener, tls, move |io, peer| {
        let app = app.clone();
        let pipelined = pipelining.contains(&peer.ip());
        async move {
            // Handlers see the client address as axum's `ConnectInfo`.
            let service = TowerToHyperService::new(tower::service_fn(
                move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    tower::ServiceExt::oneshot(app.clone(), req)
                },
            ));
            if let Err(e) = connection_builder(pipelined)
                .serve_connection_with_upgrades(TokioIo::new(io), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with error");
            }
        }
    })
    .await
}
