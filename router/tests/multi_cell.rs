//! Two 3-node cells behind two routers, as real processes on loopback.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn users_are_pinned_to_their_home_cell_and_see_only_its_data() {
    let _serial = SERIAL.lock().await;
    let w = World::start(3, 2).await;
    let http = &w.http;
    let (r0, r1) = (w.router(0), w.router(1));

    // Signup by location and by explicit region, through different routers.
    let (_, nyc_cust, nyc_refresh, cell) =
        signup(http, &r0, "ann@nyc.test", "customer", at(NYC)).await;
    assert_eq!(cell, "nyc");
    let (_, lon_cust, _, cell) = signup(
        http,
        &r1,
        "bob@lon.test",
        "customer",
        json!({"region": "lon"}),
    )
    .await;
    assert_eq!(cell, "lon");
    let (nyc_vendor, vid, pid) = shop(http, &r0, "noodles@nyc.test", NYC).await;
    assert!(vid.starts_with("nyc."), "{vid}");

    // Login without saying where: router 1 has never seen ann.
    for base in [&r1, &r1, &r0] {
        let r = call(http, base, Method::POST, "/v1/auth/login")
            .json(json!({"email": "ann@nyc.test", "password": "a long password"}))
            .send()
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.cell(), Some("nyc"));
        assert_eq!(r.body["account"]["cell"], "nyc");
        assert!(r.headers.contains_key("x-request-id"));
    }
    // The auth scheme is case-insensitive, as on the cells.
    let r = call(http, &r1, Method::GET, "/v1/me")
        .header("authorization", &format!("bearer {nyc_cust}"))
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // Documents every cell serves alike need no region.
    for doc in ["/openapi.json", "/graphql/schema.graphql"] {
        let r = call(http, &r1, Method::GET, doc).send().await;
        assert_eq!(r.status, StatusCode::OK, "{doc}");
    }
    let r = call(http, &r1, Method::POST, "/v1/auth/login")
        .json(json!({"email": "nobody@nowhere.test", "password": "a long password"}))
        .send()
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    let r = call(http, &r1, Method::POST, "/v1/auth/login")
        .json(json!({"email": "ann@nyc.test", "password": "the wrong password"}))
        .send()
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    // An email is unique within a cell only: another ann in lon logs in
    // too, and the router remembering one cell for the email locks
    // neither out.
    let r = call(http, &r0, Method::POST, "/v1/auth/signup")
        .json(json!({"email": "ann@nyc.test", "password": "another long password", "name": "Ann Two", "role": "customer", "region": "lon"}))
        .send()
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    for (password, home) in [
        ("another long password", "lon"),
        ("a long password", "nyc"),
        ("another long password", "lon"),
    ] {
        let r = call(http, &r0, Method::POST, "/v1/auth/login")
            .json(json!({"email": "ann@nyc.test", "password": password}))
            .send()
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.cell(), Some(home));
    }

    // Refresh tokens find their cell by their prefix.
    assert!(nyc_refresh.starts_with("nyc."), "{nyc_refresh}");
    let r = call(http, &r1, Method::POST, "/v1/auth/refresh")
        .json(json!({"refresh_token": nyc_refresh}))
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.cell(), Some("nyc"));

    // Order in nyc through the routers, with the request id and trace
    // context passed through.
    let q = call(http, &r1, Method::POST, "/v1/quotes")
        .token(&nyc_cust)
        .json(quote_body(&vid, NYC))
        .send()
        .await;
    assert_eq!(q.status, StatusCode::CREATED, "{}", q.body);
    let o = call(http, &r0, Method::POST, "/v1/orders")
        .token(&nyc_cust)
        .header("idempotency-key", "order-1")
        .header("x-request-id", "test-req-1")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .json(order_body(q.body["id"].as_str().unwrap(), &pid, NYC))
        .send()
        .await;
    assert_eq!(o.status, StatusCode::CREATED, "{}", o.body);
    assert_eq!(o.cell(), Some("nyc"));
    assert_eq!(o.headers["x-request-id"], "test-req-1");
    let oid = o.body["id"].as_str().unwrap().to_string();
    let r = call(http, &r1, Method::GET, &format!("/v1/orders/{oid}"))
        .token(&nyc_cust)
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // A long poll through the router (multiplexed over HTTP/2 to the cell)
    // wakes up when the vendor accepts.
    let feed = call(http, &r1, Method::GET, "/v1/events")
        .token(&nyc_cust)
        .send()
        .await;
    assert_eq!(feed.status, StatusCode::OK, "{}", feed.body);
    let after = feed.body["next"].as_u64().unwrap();
    let poll = {
        let (http, r1, cust) = (http.clone(), r1.clone(), nyc_cust.clone());
        tokio::spawn(async move {
            call(
                &http,
                &r1,
                Method::GET,
                &format!("/v1/events?after={after}&wait=30"),
            )
            .token(&cust)
            .send()
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = call(http, &r0, Method::POST, &format!("/v1/orders/{oid}/accept"))
        .token(&nyc_vendor)
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let woke = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the long poll did not wake")
        .unwrap();
    assert_eq!(woke.status, StatusCode::OK, "{}", woke.body);
    assert_eq!(woke.cell(), Some("nyc"));
    assert_eq!(
        woke.body["events"][0]["type"], "order.accepted",
        "{}",
        woke.body
    );

    // Data stays home: the london customer sees nothing of it.
    let r = call(http, &r0, Method::GET, &format!("/v1/orders/{oid}"))
        .token(&lon_cust)
        .send()
        .await;
    assert!(
        matches!(
            r.status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND
        ),
        "{} {}",
        r.status,
        r.body
    );
    let r = call(http, &r1, Method::GET, "/v1/orders")
        .token(&lon_cust)
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.cell(), Some("lon"));
    assert_eq!(r.body["items"], json!([]));
    let r = call(http, &r1, Method::GET, "/v1/orders")
        .token(&nyc_cust)
        .send()
        .await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 1, "{}", r.body);
    let r = call(http, &w.cells["lon"].api_url(1), Method::GET, "/v1/me")
        .token(&nyc_cust)
        .send()
        .await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "a token works only at home"
    );

    // Anonymous browsing: by location, or by the id in the path.
    let r = call(
        http,
        &r0,
        Method::GET,
        &format!("/v1/search?q=noodle&lat={}&lng={}", NYC.0, NYC.1),
    )
    .send()
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.cell(), Some("nyc"));
    // Or by naming the region.
    let r = call(http, &r1, Method::GET, "/v1/search?q=noodle&region=lon")
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.cell(), Some("lon"));
    let r = call(http, &r1, Method::GET, &format!("/v1/vendors/{vid}"))
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["name"], "noodles@nyc.test");

    // One client's search keeps to one node, through either router, so all
    // its pages come from one index; other searches spread over the cell.
    let search_counts = || async {
        let mut counts = Vec::new();
        for id in 1..=3 {
            let m = own_endpoint(http, &w.cells["nyc"].api_url(id), "/metrics").await;
            counts.push(
                m.lines()
                    .filter(|l| {
                        l.starts_with("http_request_duration_seconds_count{")
                            && l.contains("route=\"/v1/search\"")
                    })
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                    .sum::<u64>(),
            );
        }
        counts
    };
    let search = |base: String, q: String| async move {
        let path = format!("/v1/search?{q}&lat={}&lng={}", NYC.0, NYC.1);
        let r = call(http, &base, Method::GET, &path).send().await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    };
    let before = search_counts().await;
    for page in 0..6 {
        let base = if page % 2 == 0 { &r0 } else { &r1 };
        search(base.clone(), format!("q=noodle&limit=1&cursor={page}")).await;
    }
    let paged = search_counts().await;
    let grew: Vec<u64> = paged.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(grew.iter().sum::<u64>(), 6, "{grew:?}");
    assert_eq!(
        grew.iter().filter(|&&g| g > 0).count(),
        1,
        "every page of one search from one node: {grew:?}"
    );
    for q in 0..12 {
        search(r0.clone(), format!("q=dish{q}")).await;
    }
    let spread = search_counts().await;
    assert!(
        spread.iter().zip(&paged).filter(|(s, p)| s > p).count() >= 2,
        "different searches on different nodes: {paged:?} -> {spread:?}"
    );

    // The router's metrics count the traffic per cell.
    let m = own_endpoint(&w.http, &r0, "/metrics").await;
    assert!(m.contains("router_requests_total{cell=\"nyc\""), "{m}");
    assert!(m.contains("router_node_healthy{"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_rejected_at_the_router() {
    let _serial = SERIAL.lock().await;
    let w = World::start(1, 1).await;
    let http = &w.http;
    let r0 = w.router(0);
    let (_, nyc_cust, _, _) = signup(http, &r0, "cat@nyc.test", "customer", at(NYC)).await;

    let rejected_here = |r: &Reply, status: StatusCode, code: &str| {
        assert_eq!(r.status, status, "{}", r.body);
        assert_eq!(r.code(), code, "{}", r.body);
        assert_eq!(r.cell(), None, "should not have reached a cell");
        assert_eq!(
            r.headers["content-type"], "application/problem+json",
            "{:?}",
            r.headers
        );
        assert!(r.body["request_id"].as_str().is_some_and(|s| !s.is_empty()));
    };

    // Malformed and forged tokens.
    let forged = {
        let keys = edge::token::KeySet::generate();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let claims = |cell: &str| edge::token::Claims {
            sub: "nyc.acc_01HZX3N6W9Q8K2M4P5R7T9V1XB".into(),
            role: edge::token::Role::Ops,
            cell: cell.into(),
            exp: now + 600,
            iat: now,
            jti: "x".into(),
            sid: None,
        };
        [keys.sign(&claims("nyc")), keys.sign(&claims("mars"))]
    };
    let mut tampered = nyc_cust.clone();
    tampered.pop();
    tampered.push(if nyc_cust.ends_with('A') { 'B' } else { 'A' });
    for t in [
        "garbage",
        "a.b.c",
        &forged[0],
        &forged[1],
        &tampered,
        &"x".repeat(5000),
    ] {
        let r = call(http, &r0, Method::GET, "/v1/me").token(t).send().await;
        rejected_here(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let r = call(http, &r0, Method::GET, "/v1/me")
        .token(&nyc_cust)
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // Unknown cells and regions; requests with nowhere to go.
    let r = call(
        http,
        &r0,
        Method::GET,
        "/v1/orders/mars.ord_01HZX3N6W9Q8K2M4P5R7T9V1XB",
    )
    .token(&nyc_cust)
    .send()
    .await;
    rejected_here(&r, StatusCode::NOT_FOUND, "unknown_cell");
    let r = call(http, &r0, Method::GET, "/v1/search?q=x&region=mars")
        .send()
        .await;
    rejected_here(&r, StatusCode::NOT_FOUND, "unknown_region");
    let r = call(http, &r0, Method::GET, "/v1/search?q=x").send().await;
    rejected_here(&r, StatusCode::BAD_REQUEST, "region_required");
    let r = call(http, &r0, Method::GET, "/v1/search?q=x&lat=nan&lng=1")
        .send()
        .await;
    rejected_here(&r, StatusCode::BAD_REQUEST, "validation_failed");
    let r = call(http, &r0, Method::POST, "/v1/auth/signup")
        .json(json!({"email": "z@z.test", "password": "a long password", "name": "z", "role": "customer", "location": {"lat": 0.0, "lng": 0.0}}))
        .send()
        .await;
    rejected_here(&r, StatusCode::NOT_FOUND, "no_region");
    let r = call(http, &r0, Method::POST, "/v1/auth/signup")
        .json(json!({"email": "z@z.test", "password": "a long password", "name": "z", "role": "customer"}))
        .send()
        .await;
    rejected_here(&r, StatusCode::BAD_REQUEST, "region_required");
    let r = w
        .http
        .post(format!("{r0}/v1/auth/login"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // Oversized headers and bodies.
    let r = call(http, &r0, Method::GET, "/v1/me")
        .token(&nyc_cust)
        .header("x-padding", &"p".repeat(20 * 1024))
        .send()
        .await;
    rejected_here(
        &r,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
    );
    let big = vec![b'x'; 2 * 1024 * 1024];
    let r = w
        .http
        .post(format!("{r0}/v1/orders"))
        .bearer_auth(&nyc_cust)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.headers().get("x-cell").is_none());
    // The unread body ends the connection, and the client is told so
    // rather than finding out on its next request.
    assert_eq!(r.headers().get("connection").unwrap(), "close");
    // A client that sends a whole upload larger than the socket buffers
    // before reading gets the answer too, not a reset (lingering close).
    let answer = {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let addr = r0.trim_start_matches("http://");
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let len = 32 * 1024 * 1024;
        let head =
            format!("POST /v1/orders HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {len}\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&vec![b'x'; len])
            .await
            .expect("upload not reset");
        let mut back = Vec::new();
        s.read_to_end(&mut back).await.expect("answer not reset");
        String::from_utf8_lossy(&back).into_owned()
    };
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    // More headers than a cell takes (with the router's own added) are
    // refused here: forwarded, the cell dropped the connection and the
    // router took its node out for everyone.
    let mut many = call(http, &r0, Method::GET, "/v1/cell?region=nyc");
    for i in 0..95 {
        many = many.header(&format!("x-h{i}"), "v");
    }
    let r = many.send().await;
    rejected_here(
        &r,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers_too_large",
    );
    let r = call(http, &r0, Method::GET, "/v1/cell?region=nyc")
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    // A request head too large to parse gets an answer, not a bare close.
    let addr = r0.trim_start_matches("http://");
    for (head, status) in cell::local::oversized_heads(addr) {
        let answer = cell::local::raw_exchange(addr, head.as_bytes())
            .await
            .unwrap();
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{status}: {answer:?}"
        );
    }

    // The admin API wants the router's own ops token.
    let spec = json!({"cell": "par", "center": {"lat": PAR.0, "lng": PAR.1}, "radius_km": 50.0, "nodes": ["http://127.0.0.1:1"]});
    let r = call(http, &r0, Method::PUT, "/admin/regions/par")
        .json(spec.clone())
        .send()
        .await;
    rejected_here(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    let r = call(http, &r0, Method::PUT, "/admin/regions/par")
        .token(&nyc_cust)
        .json(spec.clone())
        .send()
        .await;
    rejected_here(&r, StatusCode::FORBIDDEN, "forbidden");
    let ops = w.routers[0].token.clone();
    for bad in [
        json!({"cell": "par", "radius_km": 50.0, "nodes": ["http://127.0.0.1:1"]}),
        json!({"cell": "par", "center": {"lat": 99.0, "lng": 0.0}, "radius_km": 5.0, "nodes": ["http://127.0.0.1:1"]}),
        json!({"cell": "Par!", "center": {"lat": 1.0, "lng": 0.0}, "radius_km": 5.0, "nodes": ["http://127.0.0.1:1"]}),
        json!({"cell": "par", "center": {"lat": 1.0, "lng": 0.0}, "radius_km": 5.0, "nodes": ["file:///etc/passwd"]}),
        json!({"cell": "par", "center": {"lat": 1.0, "lng": 0.0}, "radius_km": 5.0, "nodes": [], "extra": 1}),
    ] {
        let r = call(http, &r0, Method::PUT, "/admin/regions/par")
            .token(&ops)
            .json(bad.clone())
            .send()
            .await;
        rejected_here(&r, StatusCode::BAD_REQUEST, "validation_failed");
    }
    let r = call(http, &r0, Method::PUT, "/admin/regions/other")
        .token(&ops)
        .json(json!({"cell": "nyc", "center": {"lat": 1.0, "lng": 0.0}, "radius_km": 5.0, "nodes": ["http://127.0.0.1:1"]}))
        .send()
        .await;
    rejected_here(&r, StatusCode::CONFLICT, "conflict");
    let r = call(http, &r0, Method::GET, "/admin/regions")
        .token(&ops)
        .send()
        .await;
    assert_eq!(r.body["regions"].as_array().unwrap().len(), 2, "{}", r.body);

    // A region just added is not shown healthy before a check answers (a
    // node that accepts and never answers keeps its first check waiting).
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node = format!("http://{}", silent.local_addr().unwrap());
    let r = call(http, &r0, Method::PUT, "/admin/regions/sil")
        .token(&ops)
        .json(json!({"cell": "sil", "center": {"lat": -40.0, "lng": 170.0}, "radius_km": 5.0, "nodes": [node]}))
        .send()
        .await;
    assert!(r.status.is_success(), "{}", r.body);
    let r = call(http, &r0, Method::GET, "/admin/regions")
        .token(&ops)
        .send()
        .await;
    let sil = r.body["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "sil")
        .cloned()
        .unwrap();
    assert_eq!(
        (&sil["healthy_nodes"], &sil["unchecked_nodes"]),
        (&json!(0), &json!(1)),
        "{sil}"
    );
    let r = call(http, &r0, Method::DELETE, "/admin/regions/sil")
        .token(&ops)
        .send()
        .await;
    assert!(r.status.is_success(), "{}", r.body);
    drop(silent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn regions_are_added_drained_and_removed_at_runtime() {
    let _serial = SERIAL.lock().await;
    let w = World::start(1, 2).await;
    let http = &w.http;
    let (r0, r1) = (w.router(0), w.router(1));
    let par = start_cell(w.dir.path(), "par", 1).await;
    let spec = serde_json::to_value(region(&par, PAR)).unwrap();

    let paris_signup = |email: &'static str, base: String| async move {
        call(http, &base, Method::POST, "/v1/auth/signup")
            .json(json!({"email": email, "password": "a long password", "name": "p", "role": "customer", "location": {"lat": PAR.0, "lng": PAR.1}}))
            .send()
            .await
    };
    assert_eq!(
        paris_signup("a@par.test", r0.clone()).await.code(),
        "no_region"
    );

    // Added on both routers at runtime, no restarts.
    for (i, base) in [&r0, &r1].into_iter().enumerate() {
        let r = call(http, base, Method::PUT, "/admin/regions/par")
            .token(&w.routers[i].token)
            .json(spec.clone())
            .send()
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    let r = paris_signup("a@par.test", r0.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.cell(), Some("par"));
    let par_token = r.body["access_token"].as_str().unwrap().to_string();
    let r = call(http, &r1, Method::GET, "/v1/me")
        .token(&par_token)
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // The directory survives a router restart.
    let mut routers = w.routers;
    routers[0].restart().unwrap();
    routers[0].wait_up(Duration::from_secs(20)).await.unwrap();
    let r = paris_signup("b@par.test", r0.clone()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);

    // Draining: no new sessions, existing ones continue, idle reported.
    let r = call(http, &r0, Method::POST, "/admin/regions/par/drain")
        .token(&routers[0].token)
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["draining"], true);
    let r = paris_signup("c@par.test", r0.clone()).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "region_draining")
    );
    let r = call(http, &r0, Method::POST, "/v1/auth/login")
        .json(json!({"email": "a@par.test", "password": "a long password"}))
        .send()
        .await;
    assert_eq!(r.code(), "region_draining", "{}", r.body);
    let r = call(http, &r0, Method::GET, "/v1/me")
        .token(&par_token)
        .send()
        .await;
    assert_eq!(r.status, StatusCode::OK, "existing sessions keep working");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let r = call(http, &r0, Method::GET, "/admin/regions")
            .token(&routers[0].token)
            .send()
            .await;
        let regions: BTreeMap<String, serde_json::Value> = r.body["regions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| (v["name"].as_str().unwrap().to_string(), v.clone()))
            .collect();
        assert_eq!(
            regions["nyc"]["idle"], false,
            "only draining regions go idle"
        );
        if regions["par"]["idle"] == true {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never idle: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Removed: its tokens and ids are no longer routable.
    let r = call(http, &r0, Method::DELETE, "/admin/regions/par")
        .token(&routers[0].token)
        .send()
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = call(http, &r0, Method::GET, "/v1/me")
        .token(&par_token)
        .send()
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    let r = call(http, &r0, Method::DELETE, "/admin/regions/par")
        .token(&routers[0].token)
        .send()
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    drop(par);
}
