//! A node that goes silent without closing its connections (a frozen VM, a
//! dropped route): long polls waiting on it through the router must fail
//! once its shared HTTP/2 connection stops answering pings, not hang for
//! their whole `wait`.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cell::local::LocalCell;
use common::*;
use reqwest::Method;
use router::local::LocalRouter;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Relays bytes to `target` until told to go silent; then it keeps every
/// connection open and passes nothing on, in either direction.
struct SilentProxy {
    addr: SocketAddr,
    silent: Arc<AtomicBool>,
}

impl SilentProxy {
    async fn start(target: SocketAddr) -> SilentProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silent = Arc::new(AtomicBool::new(false));
        let flag = silent.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let flag = flag.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    tokio::join!(relay(ri, wo, flag.clone()), relay(ro, wi, flag));
                });
            }
        });
        SilentProxy { addr, silent }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn go_silent(&self) {
        self.silent.store(true, Ordering::SeqCst);
    }
}

async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(n) if n > 0 => n,
            _ => return,
        };
        if silent.load(Ordering::SeqCst) {
            // Hold both halves open and say nothing more.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A one-node cell that a router (with `extra` arguments) reaches only
/// through a `SilentProxy`; returns them all and the router's URL.
async fn through_a_proxy(
    extra: &[&'static str],
) -> (
    tempfile::TempDir,
    LocalCell,
    SilentProxy,
    LocalRouter,
    String,
) {
    let dir = tempfile::tempdir().unwrap();
    let cell = start_cell(dir.path(), "nyc", 1).await;
    let node: SocketAddr = cell
        .api_url(1)
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let proxy = SilentProxy::start(node).await;
    let mut spec = region(&cell, NYC);
    spec.nodes = vec![proxy.url()];
    let regions = BTreeMap::from([("nyc".to_string(), spec)]);
    let mut args = ROUTER_ARGS.to_vec();
    args.extend(extra);
    let router = start_router(&dir.path().join("router"), &regions, &args).await;
    let base = router.url();
    (dir, cell, proxy, router, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_poll_on_a_node_gone_silent_fails_within_the_keepalive() {
    let (_dir, _cell, proxy, _router, base) =
        through_a_proxy(&["--poll-keepalive-ms", "500"]).await;
    let http = client(Duration::from_secs(90));

    let (_, token, _, _) = signup(&http, &base, "waiter@example.com", "customer", at(NYC)).await;
    let feed = call(&http, &base, Method::GET, "/v1/events")
        .token(&token)
        .send()
        .await;
    assert!(feed.status.is_success(), "{}", feed.body);
    let after = feed.body["next"].as_u64().unwrap_or(0);

    let poll = {
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let path = format!("/v1/events?after={after}&wait=30");
            let r = call(&http, &base, Method::GET, &path)
                .token(&token)
                .send()
                .await;
            (r, started.elapsed())
        })
    };
    // Waiting on the node (and a ping or two answered) before it goes quiet.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !poll.is_finished(),
        "the poll ended before the node went silent"
    );
    proxy.go_silent();

    let (r, took) = poll.await.unwrap();
    assert!(
        r.status.is_server_error(),
        "a poll on a silent node got {}: {}",
        r.status,
        r.body
    );
    assert!(
        !r.code().is_empty(),
        "not a problem+json answer: {}",
        r.body
    );
    // A ping every 0.5 s, each given 0.5 s: gone well before the 30 s wait
    // (or the router's long-poll deadline after it) would end it.
    assert!(
        took < Duration::from_secs(10),
        "the poll hung for {took:?} on a silent node"
    );
}

/// Requests held up by a silent node fill the router's `--max-inflight`;
/// the next one is shed at once with `503 overloaded`, not queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_beyond_the_inflight_limit_are_shed_at_once() {
    let (_dir, _cell, proxy, _router, base) = through_a_proxy(&["--max-inflight", "2"]).await;
    let http = client(Duration::from_secs(90));
    let path = "/v1/products/nyc.prd_01J00000000000000000000000";
    let r = call(&http, &base, Method::GET, path).send().await;
    assert_eq!(r.status.as_u16(), 404, "{}", r.body);

    proxy.go_silent();
    let stuck: Vec<_> = (0..2)
        .map(|_| {
            let (http, base) = (http.clone(), base.clone());
            tokio::spawn(async move { call(&http, &base, Method::GET, path).send().await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(stuck.iter().all(|t| !t.is_finished()), "the node answered");
    let started = Instant::now();
    let r = call(&http, &base, Method::GET, path).send().await;
    assert_eq!(
        (r.status.as_u16(), r.code()),
        (503, "overloaded"),
        "{}",
        r.body
    );
    assert!(started.elapsed() < Duration::from_secs(1));
    for t in stuck {
        t.abort();
    }
}
