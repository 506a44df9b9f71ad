//! Real `cell` processes on loopback, and a client that talks to them
//! the way an operator or app would.

use std::time::{Duration, Instant};

use cell::local::LocalCell;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::proxy::{source_ip, Network};

pub fn cell_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_cell"))
}

pub struct TestCell {
    pub cell: LocalCell,
    pub net: Option<Network>,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// What a write answered.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub index: Option<u64>,
    pub etag: Option<u64>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or("").to_string()
    }
}

impl TestCell {
    /// A cell of `n` nodes; with `partitionable`, peer traffic goes
    /// through proxies that can cut links.
    pub async fn start(n: u64, partitionable: bool, extra: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut cell = LocalCell::new(&cell_bin(), "test", dir.path())?.with_args(extra);
        let net = if partitionable {
            Some(Network::default())
        } else {
            None
        };
        for id in 1..=n {
            Self::define(&mut cell, net.as_ref(), id).await?;
        }
        let mut tc = Self {
            cell,
            net,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .pool_max_idle_per_host(64)
                .build()?,
            _dir: dir,
        };
        tc.cell.form(n).await?;
        Ok(tc)
    }

    async fn define(cell: &mut LocalCell, net: Option<&Network>, id: u64) -> anyhow::Result<()> {
        cell.define_node(id, None)?;
        if let Some(net) = net {
            let target = cell.nodes[&id].peer_listen;
            let proxy = net.proxy(id, target).await;
            let node = cell.nodes.get_mut(&id).expect("just defined");
            node.peer_advertise = proxy.to_string();
            node.args = vec!["--peer-source-ip".into(), source_ip(id).to_string()];
        }
        Ok(())
    }

    /// Start another node with `--join` (and its proxy) without adding it.
    pub async fn launch_joiner(&mut self, id: u64) -> anyhow::Result<()> {
        Self::define(&mut self.cell, self.net.as_ref(), id).await?;
        self.start_node(id)?;
        self.cell.wait_healthy(id, Duration::from_secs(30)).await
    }

    /// (Re)start node `id` with the cell's flags.
    pub fn start_node(&mut self, id: u64) -> anyhow::Result<()> {
        self.cell.start_node(id, false)
    }

    pub fn url(&self, id: u64) -> String {
        self.cell.api_url(id)
    }

    pub fn running(&self) -> Vec<u64> {
        self.cell
            .nodes
            .iter()
            .filter(|(_, n)| n.is_running())
            .map(|(id, _)| *id)
            .collect()
    }

    pub async fn request(
        &self,
        id: u64,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Answer> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url(id)))
            .bearer_auth(&self.cell.token);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let index = resp
            .headers()
            .get("x-cell-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let etag = resp
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim_matches('"').parse().ok());
        let body = resp.bytes().await?.to_vec();
        Ok(Answer {
            status,
            index,
            etag,
            body,
        })
    }

    pub async fn put(&self, id: u64, key: &str, value: &str) -> anyhow::Result<Answer> {
        self.request(
            id,
            Method::PUT,
            &format!("/v1/kv/{key}"),
            &[],
            Some(value.as_bytes().to_vec()),
        )
        .await
    }

    /// Read `key` from node `id`'s own state once it applied `index`.
    pub async fn get_at(&self, id: u64, key: &str, index: u64) -> anyhow::Result<Answer> {
        self.request(
            id,
            Method::GET,
            &format!("/v1/kv/{key}"),
            &[("x-cell-index", index.to_string())],
            None,
        )
        .await
    }

    pub async fn status(&self, id: u64) -> anyhow::Result<Value> {
        self.cell.cluster_status(id).await
    }

    /// Node `id`'s Prometheus text.
    pub async fn metrics(&self, id: u64) -> String {
        let r = self.http.get(format!("{}/metrics", self.url(id))).send();
        r.await.unwrap().text().await.unwrap()
    }

    /// The value of a counter-like metric line (`name value`) summed over
    /// the nodes `ids`.
    pub async fn metric_sum(&self, ids: impl IntoIterator<Item = u64>, name: &str) -> f64 {
        let mut sum = 0.0;
        for id in ids {
            let text = self.metrics(id).await;
            sum += text
                .lines()
                .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .filter_map(|v| v.trim().parse::<f64>().ok())
                .sum::<f64>();
        }
        sum
    }

    /// Wait until node `id` reports applied ≥ `index`.
    pub async fn wait_applied(&self, id: u64, index: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(s) = self.status(id).await {
                if s["applied"].as_u64().unwrap_or(0) >= index {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                anyhow::bail!("node {id} did not apply {index} within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// All keys with their versions as node `id` has them at `index`.
    pub async fn dump(&self, id: u64, index: u64) -> anyhow::Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut path = "/v1/kv?limit=100".to_string();
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let a = self
                .request(
                    id,
                    Method::GET,
                    &path,
                    &[("x-cell-index", index.to_string())],
                    None,
                )
                .await?;
            anyhow::ensure!(
                a.status == StatusCode::OK,
                "list on node {id}: {} {:?}",
                a.status,
                a.json()
            );
            let v = a.json();
            for item in v["items"].as_array().cloned().unwrap_or_default() {
                out.push((
                    item["key"].as_str().unwrap_or("").to_string(),
                    item["version"].as_u64().unwrap_or(0),
                ));
            }
            match v["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return Ok(out),
            }
        }
    }

    pub async fn admin(
        &self,
        id: u64,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        self.cell.admin(id, method, path, body).await
    }
}

pub fn json_body(v: Value) -> Option<Vec<u8>> {
    Some(serde_json::to_vec(&v).expect("json"))
}

pub fn ct_json() -> (&'static str, String) {
    ("content-type", "application/json".to_string())
}
