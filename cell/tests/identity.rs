//! Identity through HTTP against a real 3-node cell: signup, login on
//! another node, refresh rotation and reuse detection, logout, JWKS,
//! token minting, and every way a token can be wrong.

mod common;

use std::time::Duration;

use base64::Engine;
use common::harness::{ct_json, json_body, TestCell};
use edge::token::{Claims, KeySet, Role};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn call(
    tc: &TestCell,
    node: u64,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = tc.http.request(method, format!("{}{path}", tc.url(node)));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("request");
    let status = r.status();
    let v = r.json::<Value>().await.unwrap_or(Value::Null);
    (status, v)
}

/// Ada logs in on `node`.
async fn login(tc: &TestCell, node: u64) -> (StatusCode, Value) {
    let body = json!({"email": "ada@example.com", "password": "correct horse battery"});
    call(tc, node, Method::POST, "/v1/auth/login", None, Some(body)).await
}

async fn refresh(tc: &TestCell, node: u64, token: &str) -> (StatusCode, Value) {
    let body = json!({"refresh_token": token});
    call(tc, node, Method::POST, "/v1/auth/refresh", None, Some(body)).await
}

fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signup_login_refresh_logout_and_token_attacks() {
    // Many auth calls from one IP in a few seconds: lift that limit here
    // (it has a test of its own below).
    let tc = TestCell::start(3, false, &["--rate-limit-auth", "1000"])
        .await
        .expect("cell");
    let leader = tc.cell.wait_leader(Duration::from_secs(10)).await.unwrap();
    let other = (1..=3).find(|&i| i != leader).unwrap();

    let (s, v) = call(&tc, leader, Method::POST, "/v1/auth/signup", None, Some(json!({
        "email": "Ada@Example.com", "password": "correct horse battery", "name": "Ada", "role": "customer"
    }))).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let id = v["account"]["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("test.acc_"), "{id}");
    assert_eq!(v["account"]["email"], "ada@example.com");
    assert_eq!(v["account"]["role"], "customer");
    assert_eq!(v["account"]["cell"], "test");
    assert!(v["expires_in"].as_u64().unwrap() > 0);
    let access = v["access_token"].as_str().unwrap().to_string();

    // Duplicate email, ops role, weak password, unknown field, bad role.
    for (body, status) in [
        (
            json!({"email": "ada@example.com", "password": "another password", "name": "A2", "role": "vendor"}),
            StatusCode::CONFLICT,
        ),
        (
            json!({"email": "op@example.com", "password": "long enough pw", "name": "Op", "role": "ops"}),
            StatusCode::FORBIDDEN,
        ),
        (
            json!({"email": "b@example.com", "password": "short", "name": "B", "role": "driver"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"email": "b@example.com", "password": "long enough pw", "name": "B", "role": "driver", "admin": true}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"email": "b@example.com", "password": "long enough pw", "name": "B", "role": "king"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"email": "not-an-email", "password": "long enough pw", "name": "B", "role": "driver"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"email": "b@example.com", "password": "long enough pw", "name": "B", "role": "driver", "region": "elsewhere"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"email": "b@example.com", "password": "long enough pw", "name": "B", "role": "driver", "location": {"lat": 91.0, "lng": 0.0}}),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (s, v) = call(
            &tc,
            leader,
            Method::POST,
            "/v1/auth/signup",
            None,
            Some(body),
        )
        .await;
        assert_eq!(s, status, "{v}");
        assert!(v["code"].is_string() && v["request_id"].is_string(), "{v}");
    }

    // Login on another node right after signup; wrong credentials are 401.
    let (s, v) = login(&tc, other).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["account"]["id"], id.as_str());
    let refresh1 = v["refresh_token"].as_str().unwrap().to_string();
    for body in [
        json!({"email": "ada@example.com", "password": "wrong password!"}),
        json!({"email": "nobody@example.com", "password": "correct horse battery"}),
    ] {
        let (s, v) = call(&tc, other, Method::POST, "/v1/auth/login", None, Some(body)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    }

    // /v1/me with the token on every node.
    for node in 1..=3 {
        let (s, v) = call(&tc, node, Method::GET, "/v1/me", Some(&access), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["id"], id.as_str());
        assert!(v.get("password_hash").is_none());
    }
    // It honours the read-consistency headers like every read.
    for (header, value, expected) in [
        ("x-consistency", "linearizable", StatusCode::OK),
        ("x-consistency", "sometimes", StatusCode::BAD_REQUEST),
        ("x-cell-index", "not-a-number", StatusCode::BAD_REQUEST),
    ] {
        let r = tc
            .http
            .get(format!("{}/v1/me", tc.url(other)))
            .bearer_auth(&access)
            .header(header, value)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), expected, "{header}: {value}");
    }

    // Refresh rotates; reusing the old token revokes the family.
    let (s, v) = refresh(&tc, leader, &refresh1).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let refresh2 = v["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(refresh1, refresh2);
    let (s, _) = refresh(&tc, leader, &refresh1).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = refresh(&tc, leader, &refresh2).await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "family not revoked after reuse"
    );

    // Logout revokes the family of the given refresh token.
    let (_, v) = login(&tc, leader).await;
    let refresh3 = v["refresh_token"].as_str().unwrap().to_string();
    let (s, _) = call(
        &tc,
        leader,
        Method::POST,
        "/v1/auth/logout",
        Some(&access),
        Some(json!({"refresh_token": refresh3})),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = refresh(&tc, leader, &refresh3).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Without a body, logout ends the session the access token came from,
    // and only that one.
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let (_, v) = login(&tc, leader).await;
        sessions.push((
            v["access_token"].as_str().unwrap().to_string(),
            v["refresh_token"].as_str().unwrap().to_string(),
        ));
    }
    let (s, _) = call(
        &tc,
        other,
        Method::POST,
        "/v1/auth/logout",
        Some(&sessions[0].0),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    for ((_, token), expected) in sessions
        .iter()
        .zip([StatusCode::UNAUTHORIZED, StatusCode::OK])
    {
        let (s, v) = refresh(&tc, leader, token).await;
        assert_eq!(s, expected, "{v}");
    }

    // JWKS.
    let (s, jwks) = call(
        &tc,
        other,
        Method::GET,
        "/.well-known/jwks.json",
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(access.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    let kid = header["kid"].as_str().unwrap();
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == kid && k["crv"] == "Ed25519"),
        "{jwks}"
    );

    // Authorization: a customer is not ops.
    let (s, v) = call(
        &tc,
        leader,
        Method::GET,
        "/admin/cluster",
        Some(&access),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, _) = call(&tc, leader, Method::GET, "/v1/kv/x", Some(&access), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Minted ops tokens work on admin endpoints but cannot mint.
    let (s, v) = call(
        &tc,
        leader,
        Method::POST,
        "/admin/tokens",
        Some(&tc.cell.token),
        Some(json!({"role": "ops", "ttl_seconds": 60})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let ops = v["access_token"].as_str().unwrap().to_string();
    let (s, v) = call(&tc, other, Method::GET, "/admin/cluster", Some(&ops), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _) = call(
        &tc,
        other,
        Method::POST,
        "/admin/tokens",
        Some(&ops),
        Some(json!({"role": "ops"})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = call(
        &tc,
        other,
        Method::POST,
        "/admin/tokens",
        Some(&access),
        Some(json!({"role": "ops"})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Bad tokens: expired, wrong signature, unknown kid, alg none, tampered.
    let keys = KeySet::load_or_create(&tc.cell.dir.join("jwt-keys.pem"))
        .unwrap()
        .0;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = |exp: i64, role: Role| Claims {
        sub: id.clone(),
        role,
        cell: "test".into(),
        exp,
        iat: now - 10,
        jti: "j".into(),
        sid: None,
    };
    let valid = keys.sign(&claims(now + 600, Role::Customer));
    let (s, _) = call(&tc, leader, Method::GET, "/v1/me", Some(&valid), None).await;
    assert_eq!(s, StatusCode::OK, "control token should work");
    let expired = keys.sign(&claims(now - 3600, Role::Customer));
    let stranger = KeySet::from_pem(&test_key_pem())
        .unwrap()
        .sign(&claims(now + 600, Role::Customer));
    let parts: Vec<&str> = valid.split('.').collect();
    let mut sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts[2])
        .unwrap();
    sig[0] ^= 1;
    let bad_sig = format!("{}.{}.{}", parts[0], parts[1], b64(&sig));
    let none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    let mut payload: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1])
            .unwrap(),
    )
    .unwrap();
    payload["role"] = json!("ops");
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(&serde_json::to_vec(&payload).unwrap()),
        parts[2]
    );
    let wrong_kid = {
        let mut h: Value = header.clone();
        h["kid"] = json!("0000000000000000");
        format!(
            "{}.{}.{}",
            b64(&serde_json::to_vec(&h).unwrap()),
            parts[1],
            parts[2]
        )
    };
    for (name, bad) in [
        ("expired", expired),
        ("unknown key", stranger),
        ("bad signature", bad_sig),
        ("alg none", none),
        ("tampered", tampered.clone()),
        ("wrong kid", wrong_kid),
        ("garbage", "a.b.c".to_string()),
    ] {
        let (s, v) = call(&tc, other, Method::GET, "/v1/me", Some(&bad), None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{name}: {v}");
        assert_eq!(v["code"], "unauthorized", "{name}");
    }
    let (s, _) = call(
        &tc,
        other,
        Method::GET,
        "/admin/cluster",
        Some(&tampered),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // Malformed bodies on every auth endpoint change nothing.
    for path in [
        "/v1/auth/signup",
        "/v1/auth/login",
        "/v1/auth/refresh",
        "/v1/auth/logout",
    ] {
        let a = tc
            .request(
                leader,
                Method::POST,
                path,
                &[ct_json()],
                Some(b"{oops".to_vec()),
            )
            .await
            .unwrap();
        assert!(a.status.is_client_error(), "{path}: {}", a.status);
        let a = tc
            .request(
                leader,
                Method::POST,
                path,
                &[ct_json()],
                json_body(json!({"unexpected": 1})),
            )
            .await
            .unwrap();
        assert!(a.status.is_client_error(), "{path}: {}", a.status);
    }
}

/// A fixed Ed25519 key that the cell has never seen.
fn test_key_pem() -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("k.pem");
    KeySet::load_or_create(&path).unwrap();
    std::fs::read_to_string(path).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_endpoints_are_rate_limited_per_ip_and_ops_is_not() {
    let tc = TestCell::start(
        1,
        false,
        &["--rate-limit-auth", "1", "--rate-limit-ip", "5"],
    )
    .await
    .expect("cell");
    // Malformed logins are cheap to answer, so the loop measures the
    // limiter rather than password hashing.
    let mut limited = None;
    for _ in 0..20 {
        let r = tc
            .http
            .post(format!("{}/v1/auth/login", tc.url(1)))
            .json(&json!({"email": "x@example.com"}))
            .send()
            .await
            .unwrap();
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }
    let r = limited.expect("20 quick logins from one IP were never limited");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "rate_limited");
    // Ops traffic is not limited.
    for _ in 0..50 {
        let (s, _) = call(
            &tc,
            1,
            Method::GET,
            "/admin/cluster",
            Some(&tc.cell.token),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK);
    }
    // Anonymous traffic has its own, looser per-IP bucket.
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(
            tc.http
                .get(format!("{}/v1/cell", tc.url(1)))
                .send()
                .await
                .unwrap()
                .status(),
        );
    }
    assert!(
        statuses.contains(&StatusCode::OK) && statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
}

/// A rotation staged ahead and rolled out one node at a time: every token
/// any node issues verifies on every node throughout, and the new key
/// signs on all of them from its time on. (Prepending a key that signs at
/// once made the first restarted node's tokens unknown to the others.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_key_rotation_rolls_out_without_refused_tokens() {
    let mut tc = TestCell::start(3, false, &["--rate-limit-auth", "1000"])
        .await
        .expect("cell");
    let leader = tc.cell.wait_leader(Duration::from_secs(10)).await.unwrap();
    let (s, v) = call(&tc, leader, Method::POST, "/v1/auth/signup", None, Some(json!({
        "email": "ada@example.com", "password": "correct horse battery", "name": "Ada", "role": "customer"
    }))).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let first = v["access_token"].as_str().unwrap().to_string();
    let keys_file = tc.cell.dir.join("jwt-keys.pem");
    let old_kid = KeySet::load_or_create(&keys_file)
        .unwrap()
        .0
        .active_kid()
        .to_owned();
    let unix_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    let switch_at = unix_now() + 30;
    let new_kid = KeySet::rotate_file_staged(&keys_file, Some(switch_at), None).unwrap();

    let mut issued = vec![first];
    for id in 1..=3 {
        tc.cell.stop(id);
        tc.start_node(id).unwrap();
        tc.cell
            .wait_healthy(id, Duration::from_secs(30))
            .await
            .unwrap();
        // The node just restarted holds the new key; its tokens are the
        // ones the others did not know under an unstaged rotation.
        let (s, v) = login(&tc, id).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let token = v["access_token"].as_str().unwrap().to_string();
        assert_eq!(kid_of(&token), old_kid, "signed before its time");
        issued.push(token);
        accepted_everywhere(&tc, &issued).await;
    }
    assert!(
        unix_now() < switch_at,
        "the rollout outran the staging time"
    );
    let wait = (switch_at + 1 - unix_now()).max(0) as u64;
    tokio::time::sleep(Duration::from_secs(wait)).await;
    for node in 1..=3 {
        let (s, v) = login(&tc, node).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        let token = v["access_token"].as_str().unwrap().to_string();
        assert_eq!(
            kid_of(&token),
            new_kid,
            "node {node} still signs with the old key"
        );
        issued.push(token);
    }
    accepted_everywhere(&tc, &issued).await;
    let (_, jwks) = call(&tc, 1, Method::GET, "/.well-known/jwks.json", None, None).await;
    assert_eq!(jwks["keys"][0]["kid"], new_kid.as_str(), "{jwks}");
}

/// Every token in `tokens` is accepted by every node.
async fn accepted_everywhere(tc: &TestCell, tokens: &[String]) {
    for t in tokens {
        for node in 1..=3 {
            let (s, v) = call(tc, node, Method::GET, "/v1/me", Some(t), None).await;
            assert_eq!(s, StatusCode::OK, "node {node}: {v}");
        }
    }
}

/// The `kid` in a token's header.
fn kid_of(token: &str) -> String {
    let header = token.split('.').next().unwrap();
    let header: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    header["kid"].as_str().unwrap().to_string()
}
