//! Local multi-node cells as child processes on loopback: what
//! `cellctl local`, the benchmarks and the cluster tests start.
//!
//! Each node is a real `cell` process with its own data directory; nodes
//! find each other through the admin API exactly as an operator's would.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context};
use edge::ports::free_loopback_addr;
use serde_json::{json, Value};

/// One `cell` process.
pub struct NodeProc {
    pub id: u64,
    pub api: SocketAddr,
    pub peer_listen: SocketAddr,
    /// What other nodes dial to reach this node's peer port (may be a
    /// fault-injecting proxy in tests).
    pub peer_advertise: String,
    pub data_dir: PathBuf,
    pub log_file: PathBuf,
    /// Flags for this node only, on every start.
    pub args: Vec<String>,
    child: Option<Child>,
}

impl NodeProc {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// A cell made of local processes.
pub struct LocalCell {
    pub name: String,
    pub dir: PathBuf,
    pub token: String,
    pub token_file: PathBuf,
    pub nodes: BTreeMap<u64, NodeProc>,
    bin: PathBuf,
    http: reqwest::Client,
    extra_args: Vec<String>,
    scheme: &'static str,
}

/// The `cell` binary next to the running executable, else from PATH.
pub fn find_cell_binary() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("CELL_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join("cell");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    which("cell")
        .ok_or_else(|| anyhow!("cannot find the `cell` binary (build it, or set CELL_BIN)"))
}

pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

impl LocalCell {
    /// Prepare a cell in `dir` (created) with a shared ops token.
    pub fn new(bin: &Path, name: &str, dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let token_file = dir.join("ops-token");
        let token = match std::fs::read_to_string(&token_file) {
            Ok(t) => t.trim().to_string(),
            Err(_) => {
                let token = format!("mc_ops_{}", hex::encode(rand::random::<[u8; 32]>()));
                crate::config::write_private(&token_file, token.as_bytes())?;
                token
            }
        };
        // One access-token key set for the whole cell.
        let keys_file = dir.join("jwt-keys.pem");
        edge::token::KeySet::load_or_create(&keys_file)
            .map_err(|e| anyhow!("access-token keys: {e}"))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_idle_timeout(edge::tls::CLIENT_POOL_IDLE)
            .build()?;
        Ok(Self {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            token,
            token_file,
            nodes: BTreeMap::new(),
            bin: bin.to_path_buf(),
            http,
            extra_args: Vec::new(),
            scheme: "http",
        })
    }

    /// Talk HTTPS to the nodes, trusting `ca` (nodes must be started with
    /// certificates issued by it).
    pub fn use_tls(&mut self, ca: &Path) -> anyhow::Result<()> {
        let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        self.http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_idle_timeout(edge::tls::CLIENT_POOL_IDLE)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
            .build()?;
        self.scheme = "https";
        Ok(())
    }

    /// Extra flags given to every node started from now on.
    pub fn with_args(mut self, args: &[&str]) -> Self {
        self.extra_args = args.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn api_url(&self, id: u64) -> String {
        format!("{}://{}", self.scheme, self.nodes[&id].api)
    }

    /// Register node `id` (ports chosen now) without starting it.
    pub fn define_node(&mut self, id: u64, peer_advertise: Option<String>) -> anyhow::Result<()> {
        let api = free_loopback_addr()?;
        let peer_listen = free_loopback_addr()?;
        let data_dir = self.dir.join(format!("node{id}"));
        self.nodes.insert(
            id,
            NodeProc {
                id,
                api,
                peer_listen,
                peer_advertise: peer_advertise.unwrap_or_else(|| peer_listen.to_string()),
                log_file: self.dir.join(format!("node{id}.log")),
                data_dir,
                args: Vec::new(),
                child: None,
            },
        );
        Ok(())
    }

    /// Start (or restart) node `id`. `bootstrap` forms a single-node
    /// cluster on first start.
    pub fn start_node(&mut self, id: u64, bootstrap: bool) -> anyhow::Result<()> {
        let n = self
            .nodes
            .get_mut(&id)
            .ok_or_else(|| anyhow!("node {id} is not defined"))?;
        if n.child.is_some() {
            bail!("node {id} is already running");
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log_file)?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--cell")
            .arg(&self.name)
            .arg("--node-id")
            .arg(id.to_string())
            .arg("--data-dir")
            .arg(&n.data_dir)
            .arg("--listen")
            .arg(n.api.to_string())
            .arg("--peer-listen")
            .arg(n.peer_listen.to_string())
            .arg("--peer-advertise")
            .arg(&n.peer_advertise)
            .arg("--ops-token-file")
            .arg(&self.token_file)
            .arg("--jwt-keys-file")
            .arg(self.dir.join("jwt-keys.pem"))
            .args(&self.extra_args)
            .args(&n.args)
            .env_remove("CELL_CONFIG")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if !bootstrap {
            cmd.arg("--join");
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        n.child = Some(child);
        Ok(())
    }

    /// How node `id`'s process ended, once it has (it is then no longer
    /// running); `None` while it runs or was never started.
    pub fn exit_status(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let n = self.nodes.get_mut(&id)?;
        let status = n.child.as_mut()?.try_wait().ok()??;
        n.child = None;
        Some(status)
    }

    /// kill -9.
    pub fn kill(&mut self, id: u64) {
        if let Some(n) = self.nodes.get_mut(&id) {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self, id: u64) {
        if let Some(n) = self.nodes.get_mut(&id) {
            if let Some(mut c) = n.child.take() {
                #[cfg(unix)]
                unsafe {
                    // SAFETY: plain kill(2) on our own child's pid.
                    libc::kill(c.id() as i32, libc::SIGTERM);
                }
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    match c.try_wait() {
                        Ok(Some(_)) => break,
                        _ if Instant::now() > deadline => {
                            let _ = c.kill();
                            let _ = c.wait();
                            break;
                        }
                        _ => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            }
        }
    }

    pub async fn wait_healthy(&self, id: u64, timeout: Duration) -> anyhow::Result<()> {
        let url = format!("{}/healthz", self.api_url(id));
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(r) = self.http.get(&url).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                // The log is usually in a temp dir that is gone by the time
                // anyone looks. A node that failed to start printed why
                // before its backtrace: quote that, else the log's end.
                let log = std::fs::read_to_string(&self.nodes[&id].log_file).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let why = lines
                    .iter()
                    .rposition(|l| l.starts_with("Error: ") || l.contains("panicked at"));
                let quoted: Vec<&str> = match why {
                    Some(i) => lines[i..].iter().take(6).copied().collect(),
                    None => lines.iter().rev().take(8).rev().copied().collect(),
                };
                bail!("node {id} not healthy after {timeout:?}; its log says: {quoted:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Call an admin endpoint of node `id` with the ops token.
    pub async fn admin(
        &self,
        id: u64,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.api_url(id)))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if !status.is_success() {
            bail!("{path} on node {id}: {status}: {text}");
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn cluster_status(&self, id: u64) -> anyhow::Result<Value> {
        self.admin(id, reqwest::Method::GET, "/admin/cluster", None)
            .await
    }

    /// The leader id as seen by any running node.
    pub async fn leader(&self) -> Option<u64> {
        for (&id, n) in &self.nodes {
            if !n.is_running() {
                continue;
            }
            if let Ok(s) = self.cluster_status(id).await {
                if let Some(l) = s["leader"].as_u64() {
                    return Some(l);
                }
            }
        }
        None
    }

    /// Wait until some running node reports a leader among `candidates`.
    pub async fn wait_leader(&self, timeout: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader().await {
                if self.nodes.get(&l).is_some_and(|n| n.is_running()) {
                    if let Ok(s) = self.cluster_status(l).await {
                        if s["role"] == "leader" {
                            return Ok(l);
                        }
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("no leader after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Add node `id` (already started with `--join`) as a learner, then
    /// make `voters` the voting set.
    pub async fn add_node(&self, via: u64, id: u64) -> anyhow::Result<()> {
        let n = &self.nodes[&id];
        self.admin(
            via,
            reqwest::Method::POST,
            "/admin/cluster/nodes",
            Some(json!({"id": id, "api_addr": n.api.to_string(), "peer_addr": n.peer_advertise})),
        )
        .await?;
        Ok(())
    }

    pub async fn set_voters(&self, via: u64, voters: &[u64]) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self
                .admin(
                    via,
                    reqwest::Method::POST,
                    "/admin/cluster/membership",
                    Some(json!({ "voters": voters })),
                )
                .await
            {
                Ok(_) => return Ok(()),
                // A previous change still committing: retry, as openraft asks.
                Err(e)
                    if e.to_string().contains("membership_in_progress")
                        && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Start an `n`-node cell: node 1 bootstraps, the others join as
    /// learners and are then promoted.
    pub async fn form(&mut self, n: u64) -> anyhow::Result<()> {
        for id in 1..=n {
            if !self.nodes.contains_key(&id) {
                self.define_node(id, None)?;
            }
        }
        self.start_node(1, true)?;
        self.wait_healthy(1, Duration::from_secs(30)).await?;
        self.wait_leader(Duration::from_secs(30)).await?;
        for id in 2..=n {
            self.start_node(id, false)?;
            self.wait_healthy(id, Duration::from_secs(30)).await?;
            self.add_node(1, id).await?;
        }
        if n > 1 {
            let voters: Vec<u64> = (1..=n).collect();
            self.set_voters(1, &voters).await?;
        }
        self.wait_command_version(1, Duration::from_secs(30)).await
    }

    /// Waits until node `id` records that the cell applies its build's
    /// command version (a new cell's leader writes it within a second or
    /// so), so that what the caller does next starts from a settled log.
    pub async fn wait_command_version(&self, id: u64, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let url = format!("{}/v1/cell", self.api_url(id));
            // As ops: anonymous calls would spend the per-IP allowance
            // that tests of it count on.
            if let Ok(r) = self.http.get(&url).bearer_auth(&self.token).send().await {
                let v: Value = r.json().await.unwrap_or(Value::Null);
                let versions = &v["versions"];
                // (A build from before command versions says none.)
                let settled = versions["cell"].is_u64() && versions["cell"] == versions["commands"];
                if settled || (v["node_id"].is_u64() && versions.is_null()) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("node {id} did not record the cell's command version within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The running nodes' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.values().filter_map(NodeProc::pid).collect()
    }

    /// Resident set size of a node's process in bytes (Linux).
    pub fn rss_bytes(&self, id: u64) -> Option<u64> {
        let pid = self.nodes.get(&id)?.pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }

    /// Leaves the node processes running after this handle is dropped (for
    /// `cellctl local up`); returns their (id, pid).
    pub fn detach(mut self) -> Vec<(u64, u32)> {
        self.nodes
            .values_mut()
            .filter_map(|n| n.child.take().map(|c| (n.id, c.id())))
            .collect()
    }

    pub fn stop_all(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
    }
}

impl Drop for LocalCell {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Request heads hyper cannot parse, for `addr`, with the status each must
/// get (not a bare close): more headers than it takes, and a URI past its
/// limit.
pub fn oversized_heads(addr: &str) -> [(String, &'static str); 2] {
    let headers: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
    let uri = format!("/v1/vendors/{}", "a".repeat(70_000));
    [
        (
            format!("GET /v1/cell HTTP/1.1\r\nhost: {addr}\r\n{headers}\r\n"),
            "431",
        ),
        (format!("GET {uri} HTTP/1.1\r\nhost: {addr}\r\n\r\n"), "414"),
    ]
}

/// Sends `request` on a connection of its own and reads until the server
/// closes it (what came back, possibly nothing).
pub async fn raw_exchange(addr: &str, request: &[u8]) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(request).await?;
    let mut back = Vec::new();
    let _ = s.read_to_end(&mut back).await;
    Ok(String::from_utf8_lossy(&back).into_owned())
}
