//! HTTP client for a cell's (or router's) API with the ops token.

use std::{path::Path, time::Duration};

use anyhow::{anyhow, bail, Context};
use serde_json::Value;

pub struct Api {
    pub base: String,
    token: Option<String>,
    http: reqwest::Client,
    /// For membership changes, which answer once a new node caught up.
    patient: reqwest::Client,
}

/// How long a response may go without a byte: a stalled backup is given
/// up after it, a long one is not (there is no limit on the whole).
const STALL: Duration = Duration::from_secs(120);
/// A membership change waits for the new node to catch up (the cell
/// allows it ten minutes).
const MEMBERSHIP_STALL: Duration = Duration::from_secs(11 * 60);

fn http_client(ca: Option<&Path>, stall: Duration) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(stall)
        .pool_idle_timeout(edge::tls::CLIENT_POOL_IDLE);
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
    }
    Ok(b.build()?)
}

impl Api {
    pub fn new(base: &str, token: Option<String>, ca: Option<&Path>) -> anyhow::Result<Self> {
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("endpoint must start with http:// or https://, got {base}");
        }
        Ok(Self {
            base,
            token,
            http: http_client(ca, STALL)?,
            patient: http_client(ca, MEMBERSHIP_STALL)?,
        })
    }

    fn req(&self, method: reqwest::Method, path: &str) -> anyhow::Result<reqwest::RequestBuilder> {
        self.req_on(&self.http, method, path)
    }

    fn req_on(
        &self,
        http: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
    ) -> anyhow::Result<reqwest::RequestBuilder> {
        let token = self
            .token
            .as_ref()
            .ok_or_else(|| anyhow!("no token: pass --token, set CELLCTL_TOKEN, or --token-file"))?;
        Ok(http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token))
    }

    /// Send and decode JSON; a problem+json answer becomes a readable error.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        self.call_on(&self.http, method, path, body).await
    }

    /// Like `call`, for a membership change, which may take minutes.
    pub async fn call_patiently(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        self.call_on(&self.patient, method, path, body).await
    }

    async fn call_on(
        &self,
        http: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self.req_on(http, method, path)?;
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.base))?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            if let Ok(p) = serde_json::from_str::<Value>(&text) {
                if let Some(detail) = p.get("detail").and_then(Value::as_str) {
                    let code = p.get("code").and_then(Value::as_str).unwrap_or("error");
                    bail!("{status} {code}: {detail}");
                }
            }
            bail!("{status}: {text}");
        }
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("bad JSON from {path}"))
    }

    /// Stream a response body to `out`; returns the bytes written.
    pub async fn download(&self, path: &str, out: &Path) -> anyhow::Result<u64> {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;
        let resp = self.req(reqwest::Method::GET, path)?.send().await?;
        let status = resp.status();
        if !status.is_success() {
            let text = resp.text().await.unwrap_or_default();
            bail!("{status}: {text}");
        }
        let tmp = out.with_extension("partial");
        let mut file = tokio::fs::File::create(&tmp)
            .await
            .with_context(|| format!("creating {}", tmp.display()))?;
        let mut stream = resp.bytes_stream();
        let mut n = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.context("the transfer broke off; the backup is incomplete")?;
            n += chunk.len() as u64;
            file.write_all(&chunk).await?;
        }
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(&tmp, out).await?;
        Ok(n)
    }
}
