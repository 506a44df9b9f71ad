//! Real cells and routers on loopback, and an app-like client.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use cell::local::LocalCell;
use reqwest::{header::HeaderMap, Method, StatusCode};
use router::directory::{Location, RegionSpec};
use router::local::LocalRouter;
use serde_json::{json, Value};

/// Tests in one file share two cores; one world at a time.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub const NYC: (f64, f64) = (40.71, -74.0);
pub const LON: (f64, f64) = (51.5, -0.12);
pub const PAR: (f64, f64) = (48.85, 2.35);

pub fn router_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_router"))
}

pub fn cell_bin() -> PathBuf {
    // Built by `cargo test --workspace` next to the test executables.
    cell::local::find_cell_binary()
        .expect("the `cell` binary: run the tests with `cargo test --workspace`")
}

/// Cell flags for cells behind routers: believe the routers' forwarded
/// client addresses, and do not let one test client's IP throttle itself.
pub const CELL_ARGS: [&str; 8] = [
    "--trusted-proxy",
    "127.0.0.1",
    "--rate-limit-auth",
    "1000",
    "--rate-limit-ip",
    "10000",
    "--rate-limit-principal",
    "10000",
];
pub const ROUTER_ARGS: [&str; 8] = [
    "--rate-limit-auth",
    "1000",
    "--rate-limit-ip",
    "10000",
    "--rate-limit-principal",
    "10000",
    "--health-interval-ms",
    "200",
];

pub fn region(cell: &LocalCell, center: (f64, f64)) -> RegionSpec {
    RegionSpec {
        cell: cell.name.clone(),
        center: Some(Location {
            lat: center.0,
            lng: center.1,
        }),
        radius_km: Some(60.0),
        bbox: None,
        nodes: cell.nodes.keys().map(|id| cell.api_url(*id)).collect(),
    }
}

pub async fn start_cell(dir: &std::path::Path, name: &str, nodes: u64) -> LocalCell {
    let mut args = vec!["--region", name];
    args.extend(CELL_ARGS);
    let mut c = LocalCell::new(&cell_bin(), name, &dir.join(name))
        .unwrap()
        .with_args(&args);
    c.form(nodes).await.unwrap();
    c
}

/// A test client: no proxies, a `timeout` per request.
pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .build()
        .unwrap()
}

/// A router at `dir` knowing `regions`, up and answering.
pub async fn start_router(
    dir: &std::path::Path,
    regions: &BTreeMap<String, RegionSpec>,
    args: &[&str],
) -> LocalRouter {
    let r = LocalRouter::start(&router_bin(), dir, regions, None, args).unwrap();
    r.wait_up(Duration::from_secs(20)).await.unwrap();
    r
}

pub struct World {
    pub cells: BTreeMap<String, LocalCell>,
    pub routers: Vec<LocalRouter>,
    pub http: reqwest::Client,
    pub dir: tempfile::TempDir,
}

impl World {
    /// Cells `nyc` and `lon` with `nodes` nodes each, and `routers`
    /// routers that know both regions.
    pub async fn start(nodes: u64, routers: usize) -> World {
        let dir = tempfile::tempdir().unwrap();
        let nyc = start_cell(dir.path(), "nyc", nodes).await;
        let lon = start_cell(dir.path(), "lon", nodes).await;
        let mut regions = BTreeMap::new();
        regions.insert("nyc".to_string(), region(&nyc, NYC));
        regions.insert("lon".to_string(), region(&lon, LON));
        let mut rs = Vec::new();
        for i in 0..routers {
            let dir = dir.path().join(format!("router{i}"));
            rs.push(start_router(&dir, &regions, &ROUTER_ARGS).await);
        }
        let mut cells = BTreeMap::new();
        cells.insert("nyc".to_string(), nyc);
        cells.insert("lon".to_string(), lon);
        World {
            cells,
            routers: rs,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(90))
                .no_proxy()
                .build()
                .unwrap(),
            dir,
        }
    }

    pub fn router(&self, i: usize) -> String {
        self.routers[i % self.routers.len()].url()
    }
}

/// What came back.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    pub fn cell(&self) -> Option<&str> {
        self.headers.get("x-cell").and_then(|v| v.to_str().ok())
    }
}

pub struct Call<'a> {
    pub http: &'a reqwest::Client,
    pub base: String,
    pub method: Method,
    pub path: String,
    pub token: Option<String>,
    pub body: Option<Value>,
    pub headers: Vec<(String, String)>,
}

pub fn call<'a>(http: &'a reqwest::Client, base: &str, method: Method, path: &str) -> Call<'a> {
    Call {
        http,
        base: base.to_string(),
        method,
        path: path.to_string(),
        token: None,
        body: None,
        headers: Vec::new(),
    }
}

impl Call<'_> {
    pub fn token(mut self, t: &str) -> Self {
        self.token = Some(t.to_string());
        self
    }

    pub fn json(mut self, v: Value) -> Self {
        self.body = Some(v);
        self
    }

    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }

    pub async fn try_send(self) -> reqwest::Result<Reply> {
        let mut rb = self
            .http
            .request(self.method, format!("{}{}", self.base, self.path));
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = &self.body {
            rb = rb.json(b);
        }
        for (k, v) in &self.headers {
            rb = rb.header(k, v);
        }
        let resp = rb.send().await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Reply {
            status,
            headers,
            body,
        })
    }

    pub async fn send(self) -> Reply {
        let what = format!("{} {}", self.method, self.path);
        self.try_send()
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }
}

/// The body of a GET to one of the router's own endpoints (`/metrics`,
/// `/readyz`).
pub async fn own_endpoint(http: &reqwest::Client, base: &str, path: &str) -> String {
    http.get(format!("{base}{path}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The router's `/readyz` answer.
pub async fn readyz(http: &reqwest::Client, base: &str) -> Value {
    serde_json::from_str(&own_endpoint(http, base, "/readyz").await).unwrap()
}

/// Signs up through a router; returns (account id, access token, refresh
/// token, cell).
pub async fn signup(
    http: &reqwest::Client,
    base: &str,
    email: &str,
    role: &str,
    at: Value,
) -> (String, String, String, String) {
    let mut body =
        json!({"email": email, "password": "a long password", "name": email, "role": role});
    for (k, v) in at.as_object().unwrap() {
        body[k] = v.clone();
    }
    let r = call(http, base, Method::POST, "/v1/auth/signup")
        .json(body)
        .send()
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    (
        r.body["account"]["id"].as_str().unwrap().to_string(),
        r.body["access_token"].as_str().unwrap().to_string(),
        r.body["refresh_token"].as_str().unwrap().to_string(),
        r.body["account"]["cell"].as_str().unwrap().to_string(),
    )
}

pub fn at(p: (f64, f64)) -> Value {
    json!({"location": {"lat": p.0, "lng": p.1}})
}

/// A vendor with one unlimited product near `p`; returns (token, vendor
/// id, product id).
pub async fn shop(
    http: &reqwest::Client,
    base: &str,
    email: &str,
    p: (f64, f64),
) -> (String, String, String) {
    let (_, token, _, _) = signup(http, base, email, "vendor", at(p)).await;
    let v = call(http, base, Method::POST, "/v1/vendors")
        .token(&token)
        .json(json!({"name": email, "kind": "restaurant", "location": {"lat": p.0, "lng": p.1}, "address": "1 Main St", "prep_minutes": 10}))
        .send()
        .await;
    assert_eq!(v.status, StatusCode::CREATED, "{}", v.body);
    let vid = v.body["id"].as_str().unwrap().to_string();
    let p = call(http, base, Method::POST, &format!("/v1/vendors/{vid}/products"))
        .token(&token)
        .json(json!({"name": "Noodle Soup", "category": "soups", "price": {"amount": 1000, "currency": "USD"}, "stock": null}))
        .send()
        .await;
    assert_eq!(p.status, StatusCode::CREATED, "{}", p.body);
    (token, vid, p.body["id"].as_str().unwrap().to_string())
}

pub fn order_body(quote: &str, pid: &str, p: (f64, f64)) -> Value {
    json!({
        "quote_id": quote, "items": [{"product_id": pid, "quantity": 1}],
        "dropoff": {"location": {"lat": p.0 + 0.01, "lng": p.1 + 0.01}, "address": "2 Side St"}
    })
}

pub fn quote_body(vid: &str, p: (f64, f64)) -> Value {
    json!({"vendor_id": vid, "dropoff": {"lat": p.0 + 0.01, "lng": p.1 + 0.01}, "mode": "on_demand"})
}
