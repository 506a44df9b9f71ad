//! `cellctl bench kv` and `cellctl bench memory`: the config-store write
//! benchmark against etcd in the same run, and the memory check.

use std::{
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use base64::Engine;
use cell::local::{find_cell_binary, which, LocalCell};
use edge::ports::free_loopback_addr;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::output;

/// What one load level measured.
#[derive(Debug, Clone)]
pub struct LevelResult {
    pub clients: usize,
    pub ops: u64,
    pub errors: u64,
    pub seconds: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
}

impl LevelResult {
    pub fn throughput(&self) -> f64 {
        self.ops as f64 / self.seconds
    }

    fn to_json(&self) -> Value {
        json!({
            "clients": self.clients, "ops": self.ops, "errors": self.errors,
            "ops_per_sec": self.throughput(), "p50_us": self.p50_us,
            "p99_us": self.p99_us, "p999_us": self.p999_us,
        })
    }
}

/// A write target: how to turn (key, value) into a request.
#[derive(Clone)]
enum Target {
    Cell { base: String, token: String },
    Etcd { base: String },
}

impl Target {
    fn request(&self, http: &reqwest::Client, key: &str, value: &[u8]) -> reqwest::RequestBuilder {
        match self {
            Target::Cell { base, token } => http
                .put(format!("{base}/v1/kv/{key}"))
                .bearer_auth(token)
                .header("content-type", "application/octet-stream")
                .body(value.to_vec()),
            Target::Etcd { base } => {
                let b64 = base64::engine::general_purpose::STANDARD;
                http.post(format!("{base}/v3/kv/put"))
                    .json(&json!({"key": b64.encode(key), "value": b64.encode(value)}))
            }
        }
    }
}

/// Drive `target` with `clients` closed-loop writers for `duration` after
/// a warm-up, each writer on its own keys.
/// One operation of a closed-loop client: `true` when it succeeded.
pub type Op = Arc<dyn Fn(usize, u64) -> futures::future::BoxFuture<'static, bool> + Send + Sync>;

/// `closed_loop`, and the CPU time (user + system) `pids` spent during it
/// per operation, in µs (`None` without processes or operations).
pub async fn closed_loop_cpu(
    clients: usize,
    duration: Duration,
    op: Op,
    pids: &[u32],
) -> anyhow::Result<(LevelResult, Option<f64>)> {
    let meter = crate::proc_stat::CpuMeter::start(pids);
    let r = closed_loop(clients, duration, op).await?;
    let per_op = meter.per_op_us(r.ops);
    Ok((r, per_op))
}

/// `clients` closed-loop clients run `op` back to back for `duration`
/// after a one-second warm-up; latencies of successful operations are
/// recorded.
pub async fn closed_loop(
    clients: usize,
    duration: Duration,
    op: Op,
) -> anyhow::Result<LevelResult> {
    let start = Instant::now();
    let measure_from = start + Duration::from_millis(1000);
    let end = measure_from + duration;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("static bounds");
            let mut errors = 0u64;
            let mut i = 0u64;
            while Instant::now() < end {
                let sent = Instant::now();
                let ok = op(c, i).await;
                i += 1;
                let done = Instant::now();
                if sent >= measure_from && done <= end {
                    if ok {
                        let _ = hist.record((done - sent).as_micros().max(1) as u64);
                    } else {
                        errors += 1;
                    }
                }
            }
            (hist, errors)
        }));
    }
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await?;
        total.add(h)?;
        errors += e;
    }
    Ok(LevelResult {
        clients,
        ops: total.len(),
        errors,
        seconds: duration.as_secs_f64(),
        p50_us: total.value_at_quantile(0.5),
        p99_us: total.value_at_quantile(0.99),
        p999_us: total.value_at_quantile(0.999),
    })
}

/// An HTTP client for `clients` concurrent connections.
pub fn bench_client(clients: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(clients + 8)
        .pool_idle_timeout(edge::tls::CLIENT_POOL_IDLE)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// Send and drain; success is a 2xx. The first failure of the process is
/// printed, so an ERRORS column comes with a reason.
pub async fn ok(req: reqwest::RequestBuilder) -> bool {
    static REPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let failure = match req.send().await {
        Ok(r) => {
            let status = r.status();
            let body = r.bytes().await.unwrap_or_default();
            if status.is_success() {
                return true;
            }
            let body = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            format!("{status}: {body}")
        }
        Err(e) => e.to_string(),
    };
    if !REPORTED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        eprintln!("first failed request: {failure}");
    }
    false
}

async fn run_level(
    target: &Target,
    clients: usize,
    value_size: usize,
    duration: Duration,
) -> anyhow::Result<LevelResult> {
    let http = bench_client(clients)?;
    let value: Arc<Vec<u8>> = Arc::new((0..value_size).map(|i| b'a' + (i % 26) as u8).collect());
    let target = target.clone();
    let op: Op = Arc::new(move |c, i| {
        let req = target.request(&http, &format!("bench-{c}-{}", i % 128), &value);
        Box::pin(ok(req))
    });
    closed_loop(clients, duration, op).await
}

/// Median and p99 (µs) of a durable 256-byte write on this disk.
#[derive(Clone, Copy)]
pub struct FsyncFloor {
    /// Into a file zero-filled beforehand (the floor under any durable
    /// single-client write: fdatasync writes the data only).
    pub p50: u64,
    pub p99: u64,
    /// At the end of a file, growing it (fdatasync also commits the new
    /// size through the filesystem's journal).
    pub growing_p50: u64,
    pub growing_p99: u64,
}

/// Measures [`FsyncFloor`] with `rounds` writes of each kind.
pub fn fsync_floor(dir: &Path, rounds: usize) -> anyhow::Result<FsyncFloor> {
    let path = dir.join("fsync-probe");
    let probe = |zero_filled: bool| -> anyhow::Result<(u64, u64)> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)?;
        let buf = [7u8; 256];
        if zero_filled {
            f.write_all_at(&vec![0u8; rounds * buf.len()], 0)?;
            f.sync_data()?;
        }
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
        for i in 0..rounds {
            let t = Instant::now();
            f.write_all_at(&buf, (i * buf.len()) as u64)?;
            f.sync_data()?;
            hist.record(t.elapsed().as_micros().max(1) as u64)?;
        }
        Ok((hist.value_at_quantile(0.5), hist.value_at_quantile(0.99)))
    };
    let (p50, p99) = probe(true)?;
    let (growing_p50, growing_p99) = probe(false)?;
    let _ = std::fs::remove_file(&path);
    Ok(FsyncFloor {
        p50,
        p99,
        growing_p50,
        growing_p99,
    })
}

struct EtcdCluster {
    children: Vec<Child>,
    clients: Vec<String>,
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn start_etcd(bin: &Path, dir: &Path, threads: Option<usize>) -> anyhow::Result<EtcdCluster> {
    let mut peers = Vec::new();
    let mut clients = Vec::new();
    for _ in 0..3 {
        peers.push(format!("http://{}", free_loopback_addr()?));
        clients.push(format!("http://{}", free_loopback_addr()?));
    }
    let initial: Vec<String> = (0..3).map(|i| format!("e{i}={}", peers[i])).collect();
    let initial = initial.join(",");
    let mut children = Vec::new();
    for i in 0..3 {
        let data = dir.join(format!("etcd{i}"));
        std::fs::create_dir_all(&data)?;
        let log = std::fs::File::create(dir.join(format!("etcd{i}.log")))?;
        let mut cmd = Command::new(bin);
        if let Some(n) = threads {
            cmd.env("GOMAXPROCS", n.to_string());
        }
        let child = cmd
            .args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &clients[i]])
            .args(["--advertise-client-urls", &clients[i]])
            .args(["--listen-peer-urls", &peers[i]])
            .args(["--initial-advertise-peer-urls", &peers[i]])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "marketcell-bench"])
            .args(["--log-level", "error"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        children.push(child);
    }
    let cluster = EtcdCluster { children, clients };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    for c in &cluster.clients {
        loop {
            let ok = http
                .get(format!("{c}/health"))
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .is_some();
            if ok {
                break;
            }
            if Instant::now() > deadline {
                bail!("etcd at {c} did not become healthy; see {}", dir.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(cluster)
}

/// The client URL of etcd's current leader.
async fn etcd_leader(cluster: &EtcdCluster) -> anyhow::Result<String> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for c in &cluster.clients {
            if let Ok(r) = http
                .post(format!("{c}/v3/maintenance/status"))
                .json(&json!({}))
                .send()
                .await
            {
                if let Ok(v) = r.json::<Value>().await {
                    let me = &v["header"]["member_id"];
                    if !me.is_null() && me == &v["leader"] {
                        return Ok(c.clone());
                    }
                }
            }
        }
        if Instant::now() > deadline {
            bail!("etcd has no leader");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub struct KvBenchOptions {
    pub clients: Vec<usize>,
    pub seconds: u64,
    pub value_size: usize,
    pub etcd: bool,
    pub etcd_bin: Option<PathBuf>,
    pub dir: Option<PathBuf>,
    pub json: bool,
    /// Nodes in the marketcell cell (etcd always runs 3).
    pub nodes: u64,
    /// Alternating rounds per level; medians are reported.
    pub rounds: usize,
    /// Worker threads per process for both systems (`--threads` for cell
    /// nodes, GOMAXPROCS for etcd); default: each takes every core.
    pub threads: Option<usize>,
}

pub fn median_f64(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// The round with the median throughput.
pub fn median_round(mut rounds: Vec<LevelResult>) -> LevelResult {
    rounds.sort_by(|a, b| a.throughput().total_cmp(&b.throughput()));
    let mid = rounds.len() / 2;
    rounds.swap_remove(mid)
}

pub fn us(v: u64) -> String {
    if v >= 10_000 {
        format!("{:.1}ms", v as f64 / 1000.0)
    } else {
        format!("{:.2}ms", v as f64 / 1000.0)
    }
}

pub async fn kv(opts: KvBenchOptions) -> anyhow::Result<()> {
    let tmp;
    let dir = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = TempDir::new("marketcell-bench")?;
            tmp.path.clone()
        }
    };
    let duration = Duration::from_secs(opts.seconds);
    let floor = fsync_floor(&dir, 300)?;
    let (floor_p50, floor_p99) = (floor.p50, floor.p99);
    eprintln!(
        "fsync floor on {}: p50 {} p99 {} (growing the file: p50 {} p99 {})",
        dir.display(),
        us(floor_p50),
        us(floor_p99),
        us(floor.growing_p50),
        us(floor.growing_p99)
    );

    let etcd_bin = if opts.etcd {
        Some(match &opts.etcd_bin {
            Some(p) => p.clone(),
            None => which("etcd")
                .context("etcd not found: apt-get install etcd-server, or pass --no-etcd")?,
        })
    } else {
        None
    };

    // Both clusters run side by side (idle but for heartbeats while the
    // other is measured); each level alternates between them `rounds`
    // times and reports the median round, so machine noise hits both.
    let threads = opts.threads.map(|n| n.to_string());
    let mut cell = LocalCell::new(&find_cell_binary()?, "bench", &dir.join("cell"))?.with_args(
        &threads
            .as_deref()
            .map(|n| vec!["--threads", n])
            .unwrap_or_default(),
    );
    cell.form(opts.nodes).await?;
    let leader = cell.wait_leader(Duration::from_secs(30)).await?;
    let ours_target = Target::Cell {
        base: cell.api_url(leader),
        token: cell.token.clone(),
    };
    let etcd = match &etcd_bin {
        Some(bin) => {
            let cluster = start_etcd(bin, &dir.join("etcd"), opts.threads).await?;
            let leader = etcd_leader(&cluster).await?;
            Some((cluster, Target::Etcd { base: leader }))
        }
        None => None,
    };
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    let mut ratios = Vec::new();
    for &c in &opts.clients {
        let mut o_rounds = Vec::new();
        let mut e_rounds = Vec::new();
        for round in 0..opts.rounds.max(1) {
            let o = run_level(&ours_target, c, opts.value_size, duration).await?;
            eprintln!(
                "round {round} marketcell {c:>4} clients: {:>9.0} ops/s  p50 {}  p99 {}",
                o.throughput(),
                us(o.p50_us),
                us(o.p99_us)
            );
            if let Some((_, target)) = &etcd {
                let e = run_level(target, c, opts.value_size, duration).await?;
                eprintln!(
                    "round {round} etcd       {c:>4} clients: {:>9.0} ops/s  p50 {}  p99 {}",
                    e.throughput(),
                    us(e.p50_us),
                    us(e.p99_us)
                );
                e_rounds.push(e);
            }
            o_rounds.push(o);
        }
        if !e_rounds.is_empty() {
            let mut t: Vec<f64> = o_rounds
                .iter()
                .zip(&e_rounds)
                .map(|(o, e)| o.throughput() / e.throughput().max(1e-9))
                .collect();
            let mut p: Vec<f64> = o_rounds
                .iter()
                .zip(&e_rounds)
                .map(|(o, e)| o.p99_us as f64 / e.p99_us.max(1) as f64)
                .collect();
            ratios.push((median_f64(&mut t), median_f64(&mut p)));
            theirs.push(median_round(e_rounds));
        }
        ours.push(median_round(o_rounds));
    }
    cell.stop_all();
    drop(etcd);

    if opts.json {
        output::json(&json!({
            "value_size": opts.value_size,
            "seconds": opts.seconds,
            "fsync_floor_us": {"p50": floor_p50, "p99": floor_p99,
                "growing_p50": floor.growing_p50, "growing_p99": floor.growing_p99},
            "marketcell": ours.iter().map(LevelResult::to_json).collect::<Vec<_>>(),
            "etcd": theirs.iter().map(LevelResult::to_json).collect::<Vec<_>>(),
            "median_ratios": ratios.iter().map(|(t, p)| json!({"throughput": t, "p99": p})).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    println!(
        "\nconfig-store writes, {} marketcell nodes vs 3 etcd nodes on loopback, fsync on, {}-byte values,\n\
         {} s per level, {} alternating rounds (median round shown; ratios are medians of per-round ratios)",
        opts.nodes, opts.value_size, opts.seconds, opts.rounds
    );
    println!(
        "fsync floor (256 B write into a zero-filled file + fdatasync): p50 {}  p99 {}\n\
         (256 B write growing the file + fdatasync: p50 {}  p99 {})\n",
        us(floor_p50),
        us(floor_p99),
        us(floor.growing_p50),
        us(floor.growing_p99)
    );
    let mut rows = Vec::new();
    for (i, o) in ours.iter().enumerate() {
        let e = theirs.get(i);
        rows.push(vec![
            o.clients.to_string(),
            format!("{:.0}", o.throughput()),
            us(o.p50_us),
            us(o.p99_us),
            us(o.p999_us),
            e.map(|e| format!("{:.0}", e.throughput()))
                .unwrap_or("-".into()),
            e.map(|e| us(e.p50_us)).unwrap_or("-".into()),
            e.map(|e| us(e.p99_us)).unwrap_or("-".into()),
            e.map(|e| format!("{:.2}x", o.throughput() / e.throughput().max(1e-9)))
                .unwrap_or("-".into()),
            e.map(|e| format!("{:.2}x", o.p99_us as f64 / e.p99_us.max(1) as f64))
                .unwrap_or("-".into()),
            o.errors.to_string(),
        ]);
    }
    output::table(
        &[
            "CLIENTS",
            "OPS/S",
            "P50",
            "P99",
            "P999",
            "ETCD OPS/S",
            "ETCD P50",
            "ETCD P99",
            "THRPT RATIO",
            "P99 RATIO",
            "ERRORS",
        ],
        &rows,
    );
    if let Some(single) = ours.iter().find(|r| r.clients == 1) {
        println!(
            "\nsingle-client p50 / fsync-floor p50 = {:.2}x",
            single.p50_us as f64 / floor_p50.max(1) as f64
        );
    }
    Ok(())
}

/// Load `megabytes` of state into a single-node cell and report its RSS.
pub async fn memory(megabytes: u64, as_json: bool) -> anyhow::Result<()> {
    let tmp = TempDir::new("marketcell-mem")?;
    let mut cell = LocalCell::new(&find_cell_binary()?, "mem", &tmp.path)?;
    cell.form(1).await?;
    let base = cell.api_url(1);
    let token = cell.token.clone();
    let value_size = 60 * 1024;
    let total_keys = (megabytes * 1024 * 1024).div_ceil(value_size as u64);
    let http = reqwest::Client::new();
    let writers = 16u64;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let http = http.clone();
        let base = base.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let value: Vec<u8> = (0..value_size)
                .map(|i| (i * 31 + w as usize) as u8)
                .collect();
            let mut k = w;
            while k < total_keys {
                let r = http
                    .put(format!("{base}/v1/kv/mem/{k:08}"))
                    .bearer_auth(&token)
                    .body(value.clone())
                    .send()
                    .await?;
                if !r.status().is_success() {
                    bail!("write failed: {}", r.status());
                }
                k += writers;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let load_secs = started.elapsed().as_secs_f64();
    let rss_loaded = cell.rss_bytes(1).unwrap_or(0);
    let snap = cell
        .admin(1, reqwest::Method::POST, "/admin/snapshot", None)
        .await?;
    let rss_after_snapshot = cell.rss_bytes(1).unwrap_or(0);
    let state_bytes = std::fs::metadata(cell.nodes[&1].data_dir.join("raft/state.redb"))
        .map(|m| m.len())
        .unwrap_or(0);
    let report = json!({
        "state_mb": megabytes, "keys": total_keys, "load_seconds": load_secs,
        "state_file_bytes": state_bytes, "rss_bytes_loaded": rss_loaded,
        "rss_bytes_after_snapshot": rss_after_snapshot, "snapshot_index": snap["snapshot_index"],
        "target_rss_bytes": 500u64 * 1024 * 1024,
    });
    if as_json {
        output::json(&report);
    } else {
        println!(
            "loaded {megabytes} MB ({total_keys} keys of {value_size} B) in {load_secs:.1} s; state.redb {:.0} MB",
            state_bytes as f64 / 1e6
        );
        println!(
            "RSS after load {:.0} MB, after snapshot {:.0} MB (target < 500 MB)",
            rss_loaded as f64 / 1e6,
            rss_after_snapshot as f64 / 1e6
        );
    }
    cell.stop_all();
    Ok(())
}

/// A directory removed on drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{:x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
