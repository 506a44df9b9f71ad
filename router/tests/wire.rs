//! The router's HTTP/1.1 as a client sees it on the socket: pipelined
//! requests answered in order, HEAD, `Connection: close`, the router's own
//! refusals, a connection that switches to a request with a body halfway
//! through its life, HTTP/2 with prior knowledge, an unfinished head, and
//! long polls (a pipelined request waits its turn behind one; a client
//! that hangs up ends its wait on the cell).

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use reqwest::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One answer read off the socket.
#[derive(Debug)]
struct Wire {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Wire {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// Reads one answer from `s`, keeping what follows it in `buf`. `head_only`
/// for the answer to a HEAD request.
async fn read_answer(s: &mut TcpStream, buf: &mut Vec<u8>, head_only: bool) -> Wire {
    let deadline = Duration::from_secs(10);
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(deadline, s.read(&mut chunk))
            .await
            .expect("answer in time")
            .unwrap();
        assert!(
            n > 0,
            "closed before an answer: {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
    let status = status_line[9..12].parse().unwrap();
    let mut headers = HashMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let (k, v) = line.split_once(':').unwrap();
        let prior = headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        assert!(prior.is_none(), "header {k} twice in {head}");
    }
    buf.drain(..head_end);
    let len: usize = match headers.get("content-length") {
        Some(l) if !head_only => l.parse().unwrap(),
        _ => 0,
    };
    assert!(
        head_only || !headers.contains_key("transfer-encoding"),
        "cells answer these with a length: {head}"
    );
    while buf.len() < len {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(deadline, s.read(&mut chunk))
            .await
            .expect("body in time")
            .unwrap();
        assert!(n > 0, "closed inside a body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf.drain(..len).collect();
    Wire {
        status,
        headers,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wire_as_clients_see_it() {
    let _serial = SERIAL.lock().await;
    let mut w = World::start(1, 1).await;
    let base = w.router(0);
    let (_, _, pid) = shop(&w.http, &base, "wire@nyc.test", NYC).await;
    let addr = base.trim_start_matches("http://").to_string();

    // Three requests in one write: the first goes through the shared pool,
    // the others over the connection's own upstream connection; answers
    // come back in order.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let unknown = "nyc.prd_01HZX3N6W9Q8K2M4P5R7T9V1XB";
    let pipelined = format!(
        "GET /v1/products/{pid} HTTP/1.1\r\nHost: r\r\nX-Request-Id: mine-1\r\n\r\n\
         HEAD /v1/products/{pid} HTTP/1.1\r\nHost: r\r\n\r\n\
         GET /v1/products/{unknown} HTTP/1.1\r\nHost: r\r\n\r\n"
    );
    s.write_all(pipelined.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let got = read_answer(&mut s, &mut buf, false).await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.header("x-cell"), Some("nyc"));
    assert_eq!(got.header("x-request-id"), Some("mine-1"));
    assert_eq!(got.header("x-content-type-options"), Some("nosniff"));
    assert!(got.header("date").is_some());
    assert_eq!(got.json()["id"], pid.as_str());
    let length = got.header("content-length").unwrap().to_string();
    let head = read_answer(&mut s, &mut buf, true).await;
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.header("content-length"), Some(length.as_str()));
    assert_eq!(head.header("x-cell"), Some("nyc"));
    let missing = read_answer(&mut s, &mut buf, false).await;
    assert_eq!(missing.status, 404, "{missing:?}");
    assert_eq!(missing.header("x-cell"), Some("nyc"));
    let request_id = missing.header("x-request-id").unwrap();
    assert!(!request_id.is_empty() && request_id != "mine-1");
    assert_eq!(missing.json()["request_id"], request_id);

    // The router's own refusals on the same connection: a cell it does not
    // know, a token that is not one.
    s.write_all(
        b"GET /v1/products/mars.prd_01HZX3N6W9Q8K2M4P5R7T9V1XB HTTP/1.1\r\nHost: r\r\n\r\n\
          GET /v1/me HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer garbage\r\n\r\n",
    )
    .await
    .unwrap();
    for (status, code) in [(404, "unknown_cell"), (401, "unauthorized")] {
        let r = read_answer(&mut s, &mut buf, false).await;
        assert_eq!(r.status, status, "{r:?}");
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert_eq!(r.header("x-cell"), None);
        assert_eq!(r.json()["code"], code);
        assert_eq!(r.json()["request_id"], r.header("x-request-id").unwrap());
    }

    // A request with a body halfway through: the rest of the connection is
    // served as before.
    let login = br#"{"email":"nobody@nyc.test","password":"wrong password"}"#;
    let post = format!(
        "POST /v1/auth/login HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        login.len()
    );
    s.write_all(post.as_bytes()).await.unwrap();
    s.write_all(login).await.unwrap();
    let r = read_answer(&mut s, &mut buf, false).await;
    assert_eq!(r.status, 401, "{r:?}");
    s.write_all(format!("GET /v1/products/{pid} HTTP/1.1\r\nHost: r\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let r = read_answer(&mut s, &mut buf, false).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-length"), Some(length.as_str()));

    // `Connection: close` is honoured, with the answer saying so.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    for close in [false, true] {
        let conn = if close { "Connection: close\r\n" } else { "" };
        let req = format!("GET /v1/products/{pid} HTTP/1.1\r\nHost: r\r\n{conn}\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let r = read_answer(&mut s, &mut buf, false).await;
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("connection"), close.then_some("close"));
    }
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .expect("closed after Connection: close")
        .unwrap();
    assert_eq!(n, 0);

    // HTTP/2 with prior knowledge: the preface hands the connection to
    // hyper, which speaks HTTP/2 on it.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .build()
        .unwrap();
    let r = h2
        .get(format!("{base}/v1/products/{pid}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cell"], "nyc");

    // A head that never ends is dropped, not held forever; the router goes
    // on serving others meanwhile.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /v1/products/x HTTP/1.1\r\nHost: r\r\n")
        .await
        .unwrap();
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(format!("GET /v1/products/{pid} HTTP/1.1\r\nHost: r\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_answer(&mut s, &mut buf, false).await.status, 200);
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(15), slow.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "an unfinished head was kept: {closed:?}"
    );

    // A long poll, and a request pipelined behind it: the poll's (empty)
    // answer comes when its wait is up, then the other one.
    let (_, token, _, _) = signup(&w.http, &base, "poller@nyc.test", "customer", at(NYC)).await;
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let started = std::time::Instant::now();
    s.write_all(
        format!(
            "GET /v1/events?wait=1 HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {token}\r\n\r\n\
             GET /v1/products/{pid} HTTP/1.1\r\nHost: r\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let polled = read_answer(&mut s, &mut buf, false).await;
    assert_eq!(polled.status, 200, "{polled:?}");
    assert_eq!(polled.header("x-cell"), Some("nyc"));
    assert_eq!(polled.json()["events"], serde_json::json!([]));
    assert!(started.elapsed() >= Duration::from_millis(900));
    let r = read_answer(&mut s, &mut buf, false).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["id"], pid.as_str());

    // A client that hangs up during a long poll takes the wait with it: the
    // router's in-flight count for the cell falls back long before the
    // poll's 30 s are up.
    let in_flight = || async {
        own_endpoint(&w.http, &base, "/metrics")
            .await
            .lines()
            .find(|l| l.starts_with("router_in_flight{") && l.contains("cell=\"nyc\""))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(
        format!(
            "GET /v1/events?wait=30 HTTP/1.1\r\nHost: r\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while in_flight().await < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the poll never reached the cell"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(s);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while in_flight().await > 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the router still waits for a client that hung up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The node restarts, closing the shared connection the polls rode: the
    // next poll gets a new one.
    let nyc = w.cells.get_mut("nyc").unwrap();
    nyc.stop(1);
    nyc.start_node(1, false).unwrap();
    nyc.wait_healthy(1, Duration::from_secs(20)).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ready = readyz(&w.http, &base).await;
        if ready["cells_down"] == serde_json::json!([]) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = call(&w.http, &base, Method::GET, "/v1/events?wait=1")
        .token(&token)
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
}
