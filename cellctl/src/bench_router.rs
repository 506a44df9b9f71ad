//! `cellctl bench router`: the router's proxy overhead against nginx
//! proxying the same cell in the same run, and the router's CPU and memory
//! with thousands of idle long polls.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use cell::local::{find_cell_binary, which, LocalCell};
use edge::ports::free_loopback_addr;
use router::directory::{Location, RegionSpec};
use router::local::{find_router_binary, LocalRouter};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::bench::{bench_client, closed_loop, closed_loop_cpu, LevelResult, Op, TempDir};
use crate::bench_get::product_reads;
use crate::bench_market::{median_f64, post, report_line, seed_shop, NO_LIMITS};
use crate::output;
use crate::proc_stat::{children_of, cpu_seconds, rss_bytes, CpuMeter, MachineTicks};

pub struct RouterBenchOptions {
    pub clients: usize,
    pub seconds: u64,
    pub rounds: usize,
    pub products: usize,
    /// Idle long polls to hold open (0: skip that part).
    pub idle: usize,
    pub no_nginx: bool,
    pub nginx_bin: Option<PathBuf>,
    pub json: bool,
}

const CENTER: (f64, f64) = (40.7, -74.0);

/// nginx as a reverse proxy for one upstream, tuned as one would in
/// production: upstream keep-alive, no access log, workers per core, and no
/// cap on requests per kept-alive connection (nginx's default of 1,000
/// closes every connection, client and upstream, every second or two at
/// this load; the router has no such cap).
struct Nginx {
    child: Child,
    port: u16,
}

impl Nginx {
    fn start(bin: &Path, dir: &Path, upstream: &str) -> anyhow::Result<Self> {
        let port = free_loopback_addr()?.port();
        let prefix = dir.join("nginx");
        std::fs::create_dir_all(prefix.join("logs"))?;
        let conf = format!(
            r#"
worker_processes auto;
worker_rlimit_nofile 20000;
daemon off;
pid {p}/nginx.pid;
error_log {p}/logs/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {p}/body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    upstream cell {{
        server {upstream};
        keepalive 256;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://cell;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 90s;
            proxy_buffering off;
        }}
    }}
}}
"#,
            p = prefix.display(),
        );
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let log = std::fs::File::create(prefix.join("logs/stderr.log"))?;
        let child = Command::new(bin)
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        Ok(Nginx { child, port })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The master and its workers.
    fn pids(&self) -> Vec<u32> {
        let master = self.child.id();
        let mut pids = vec![master];
        pids.extend(children_of(master));
        pids
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM makes the master stop its workers too (SIGKILL would
        // orphan them).
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_port(url: &str) -> anyhow::Result<()> {
    let addr = url.trim_start_matches("http://").to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    while tokio::net::TcpStream::connect(&addr).await.is_err() {
        if Instant::now() > deadline {
            bail!("{url} did not come up");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// What holding `n` idle long polls cost a proxy, and the cell behind it
/// (one HTTP/2 stream a poll behind the router, one HTTP/1.1 connection a
/// poll behind nginx).
struct IdleCost {
    target: &'static str,
    connections: usize,
    waiting: usize,
    rss_before: u64,
    rss_after: u64,
    cpu_percent: f64,
    cell_rss_before: u64,
    cell_rss_after: u64,
}

/// Opens `n` connections to `base`, each with a long poll for `token`'s
/// events that will not be answered for a minute, then measures the
/// processes' memory and CPU while they sit idle.
async fn idle_cost(
    target: &'static str,
    base: &str,
    pids: &dyn Fn() -> Vec<u32>,
    cell_pids: &[u32],
    n: usize,
    token: &str,
    after: u64,
) -> anyhow::Result<IdleCost> {
    let addr = base.trim_start_matches("http://").to_string();
    let rss = |pids: &[u32]| pids.iter().map(|p| rss_bytes(*p)).sum::<u64>();
    let rss_before = rss(&pids());
    let cell_rss_before = rss(cell_pids);
    let request = format!(
        "GET /v1/events?after={after}&wait=60 HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .with_context(|| format!("connection {i} to {target}"))?;
        s.write_all(request.as_bytes()).await?;
        conns.push(s);
        if i % 500 == 499 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Let every poll reach the cell and settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pids_now = pids();
    let (t0, started) = (cpu_seconds(&pids_now), Instant::now());
    tokio::time::sleep(Duration::from_secs(10)).await;
    let cpu_percent = (cpu_seconds(&pids_now) - t0) / started.elapsed().as_secs_f64() * 100.0;
    let rss_after = rss(&pids_now);
    let cell_rss_after = rss(cell_pids);
    // A poll still waiting has had no answer yet.
    let mut waiting = 0;
    let mut buf = [0u8; 256];
    for s in &mut conns {
        if tokio::time::timeout(Duration::from_micros(1), s.read(&mut buf))
            .await
            .is_err()
        {
            waiting += 1;
        }
    }
    drop(conns);
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(IdleCost {
        target,
        connections: n,
        waiting,
        rss_before,
        rss_after,
        cell_rss_before,
        cell_rss_after,
        cpu_percent,
    })
}

pub async fn run(opts: RouterBenchOptions) -> anyhow::Result<()> {
    let tmp = TempDir::new("marketcell-router-bench")?;
    let mut cell_args = NO_LIMITS.to_vec();
    cell_args.extend(["--trusted-proxy", "127.0.0.1"]);
    let mut cell = LocalCell::new(&find_cell_binary()?, "bench", &tmp.path.join("cell"))?
        .with_args(&cell_args);
    cell.form(1).await?;
    let cell_url = cell.api_url(1);
    let http = bench_client(opts.clients)?;
    eprintln!("seeding {} products…", opts.products);
    let (_, ids) = seed_shop(&http, &cell_url, opts.products).await?;

    let router_bin =
        find_router_binary().ok_or_else(|| anyhow!("cannot find the `router` binary"))?;
    let mut regions = BTreeMap::new();
    regions.insert(
        "bench".to_string(),
        RegionSpec {
            cell: "bench".into(),
            center: Some(Location {
                lat: CENTER.0,
                lng: CENTER.1,
            }),
            radius_km: Some(50.0),
            bbox: None,
            nodes: vec![cell_url.clone()],
        },
    );
    let router = LocalRouter::start(
        &router_bin,
        &tmp.path.join("router"),
        &regions,
        None,
        &NO_LIMITS,
    )
    .map_err(|e| anyhow!("{e}"))?;
    router
        .wait_up(Duration::from_secs(20))
        .await
        .map_err(|e| anyhow!("{e}"))?;

    let nginx = if opts.no_nginx {
        None
    } else {
        let bin = opts
            .nginx_bin
            .clone()
            .or_else(|| which("nginx"))
            .or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.is_file()))
            .ok_or_else(|| anyhow!("nginx not found (apt-get install nginx, or --no-nginx)"))?;
        let upstream = cell_url.trim_start_matches("http://").to_string();
        let n = Nginx::start(&bin, &tmp.path, &upstream)?;
        wait_port(&n.url()).await?;
        Some(n)
    };

    let mut targets: Vec<(&'static str, String)> =
        vec![("direct", cell_url.clone()), ("router", router.url())];
    if let Some(n) = &nginx {
        targets.push(("nginx", n.url()));
    }
    let ids = Arc::new(ids);
    let op_for =
        |base: String| -> anyhow::Result<Op> { product_reads(&base, opts.clients, ids.clone()) };
    // Warm every path (caches, pools) before measuring.
    for (_, base) in &targets {
        closed_loop(opts.clients, Duration::from_secs(1), op_for(base.clone())?).await?;
    }
    let duration = Duration::from_secs(opts.seconds);
    let mut runs: BTreeMap<&str, Vec<LevelResult>> = BTreeMap::new();
    let mut ratios = Vec::new();
    // The proxies' own CPU per request: steadier than throughput on a
    // shared machine, where the client and the cell compete for the cores.
    let router_pid = router.pid().context("router pid")?;
    let proxy_pids = |name: &str| match name {
        "router" => vec![router_pid],
        "nginx" => nginx.as_ref().map(Nginx::pids).unwrap_or_default(),
        _ => Vec::new(),
    };
    let mut cpu_us: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    // What the cell and the machine did meanwhile: a proxy can cost the
    // cell work (how its requests arrive) and leave cores idle (how fast
    // it passes work on), neither of which its own CPU shows.
    let cell_pids = cell.pids();
    let mut cell_cpu_us: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut idle_share: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for round in 0..opts.rounds.max(1) {
        let mut this = BTreeMap::new();
        // Each round starts with the next path, so that no path always
        // runs right after the same other one.
        let n = targets.len();
        for (name, base) in targets.iter().cycle().skip(round % n).take(n) {
            let (cell_meter, machine_before) = (CpuMeter::start(&cell_pids), MachineTicks::now());
            let (r, cpu) = closed_loop_cpu(
                opts.clients,
                duration,
                op_for(base.clone())?,
                &proxy_pids(name),
            )
            .await?;
            if let Some(us) = cpu {
                cpu_us.entry(name).or_default().push(us);
            }
            if let Some(us) = cell_meter.per_op_us(r.ops) {
                cell_cpu_us.entry(name).or_default().push(us);
            }
            idle_share
                .entry(name)
                .or_default()
                .push(MachineTicks::now().idle_share_since(&machine_before));
            eprintln!(
                "round {round}: {name:<6} {:>7.0}/s p50 {:.2}ms p99 {:.2}ms errors {}",
                r.throughput(),
                r.p50_us as f64 / 1000.0,
                r.p99_us as f64 / 1000.0,
                r.errors
            );
            this.insert(*name, r.clone());
            runs.entry(name).or_default().push(r);
        }
        if let (Some(r), Some(n)) = (this.get("router"), this.get("nginx")) {
            ratios.push(r.throughput() / n.throughput().max(1e-9));
        }
    }
    let median = |v: &[LevelResult]| {
        let mut v = v.to_vec();
        v.sort_by(|a, b| a.throughput().total_cmp(&b.throughput()));
        v[v.len() / 2].clone()
    };
    let results: BTreeMap<&str, LevelResult> = runs.iter().map(|(k, v)| (*k, median(v))).collect();
    let direct = results["direct"].clone();
    let added = |r: &LevelResult| {
        (
            r.p50_us as f64 - direct.p50_us as f64,
            r.p99_us as f64 - direct.p99_us as f64,
        )
    };

    let mut idle = Vec::new();
    if opts.idle > 0 {
        let customer = post(
            &http,
            format!("{}/v1/auth/signup", router.url()),
            None,
            json!({"email": "idle@bench.test", "password": "benchmark password", "name": "idle", "role": "customer", "location": {"lat": CENTER.0, "lng": CENTER.1}}),
        )
        .await?;
        let token = customer["access_token"]
            .as_str()
            .context("token")?
            .to_string();
        let feed: Value = http
            .get(format!("{cell_url}/v1/events"))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        let after = feed["next"].as_u64().unwrap_or(0);
        eprintln!("holding {} idle long polls through the router…", opts.idle);
        idle.push(
            idle_cost(
                "router",
                &router.url(),
                &|| vec![router_pid],
                &cell_pids,
                opts.idle,
                &token,
                after,
            )
            .await?,
        );
        if let Some(n) = &nginx {
            eprintln!("holding {} idle long polls through nginx…", opts.idle);
            let (url, pids) = (n.url(), || n.pids());
            let cost = idle_cost("nginx", &url, &pids, &cell_pids, opts.idle, &token, after);
            idle.push(cost.await?);
        }
    }
    drop(nginx);
    drop(router);
    cell.stop_all();

    let ratio = (!ratios.is_empty()).then(|| median_f64(ratios));
    let medians = |m: BTreeMap<&'static str, Vec<f64>>| -> BTreeMap<&'static str, f64> {
        m.into_iter()
            .map(|(name, v)| (name, median_f64(v)))
            .collect()
    };
    let cpu_us = medians(cpu_us);
    let cell_cpu_us = medians(cell_cpu_us);
    let idle_share = medians(idle_share);
    if opts.json {
        let mut out = json!({
            "clients": opts.clients, "seconds": opts.seconds, "rounds": opts.rounds, "products": opts.products,
            "throughput_ratio_router_over_nginx": ratio,
            "proxy_cpu_us_per_request": cpu_us,
            "cell_cpu_us_per_request": cell_cpu_us,
            "machine_idle_share": idle_share,
        });
        for (name, r) in &results {
            let (a50, a99) = added(r);
            out[*name] = json!({"ops_per_sec": r.throughput(), "p50_us": r.p50_us, "p99_us": r.p99_us, "errors": r.errors, "added_p50_us": a50, "added_p99_us": a99});
        }
        out["idle"] =
            json!(idle.iter().map(|c| json!({
            "target": c.target, "connections": c.connections, "waiting": c.waiting,
            "rss_before": c.rss_before, "rss_after": c.rss_after, "cpu_percent": c.cpu_percent,
            "cell_rss_before": c.cell_rss_before, "cell_rss_after": c.cell_rss_after,
        })).collect::<Vec<_>>());
        output::json(&out);
        return Ok(());
    }
    println!(
        "\nGET /v1/products/{{id}} (cached reads, Zipf over {} products), {} connections, single-node cell, {} s per run, {} rounds (median)\n",
        opts.products, opts.clients, opts.seconds, opts.rounds
    );
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|(name, r)| {
            let mut row = report_line(name, r);
            let (a50, a99) = added(r);
            row.push(format!("{:+.2}ms", a50 / 1000.0));
            row.push(format!("{:+.2}ms", a99 / 1000.0));
            row
        })
        .collect();
    output::table(
        &[
            "PATH",
            "CLIENTS",
            "OPS/S",
            "P50",
            "P99",
            "ERRORS",
            "ADDED P50",
            "ADDED P99",
        ],
        &rows,
    );
    if let Some(ratio) = ratio {
        let (_, router_added) = added(&results["router"]);
        let (_, nginx_added) = added(&results["nginx"]);
        println!(
            "\nrouter / nginx throughput = {ratio:.2}x (median of per-round ratios); added p99: router {:.2}ms, nginx {:.2}ms",
            router_added / 1000.0,
            nginx_added / 1000.0
        );
    }
    if !cpu_us.is_empty() {
        let each: Vec<String> = cpu_us
            .iter()
            .map(|(name, us)| format!("{name} {us:.1} µs"))
            .collect();
        println!(
            "proxy CPU per request (user + system, median of rounds): {}",
            each.join(", ")
        );
    }
    let each: Vec<String> = cell_cpu_us
        .iter()
        .map(|(name, us)| {
            let idle = idle_share.get(name).copied().unwrap_or(0.0) * 100.0;
            format!("{name} {us:.1} µs (machine idle {idle:.1}%)")
        })
        .collect();
    println!(
        "cell CPU per request by path (median of rounds): {}",
        each.join(", ")
    );
    if !idle.is_empty() {
        println!();
        let rows: Vec<Vec<String>> = idle
            .iter()
            .map(|c| {
                let per_conn = |before: u64, after: u64| {
                    let kib = after.saturating_sub(before) as f64 / c.connections.max(1) as f64;
                    format!("{:.1} KiB", kib / 1024.0)
                };
                vec![
                    c.target.to_string(),
                    c.connections.to_string(),
                    c.waiting.to_string(),
                    format!("{:.1} MiB", c.rss_before as f64 / 1048576.0),
                    format!("{:.1} MiB", c.rss_after as f64 / 1048576.0),
                    per_conn(c.rss_before, c.rss_after),
                    format!("{:.2}%", c.cpu_percent),
                    per_conn(c.cell_rss_before, c.cell_rss_after),
                ]
            })
            .collect();
        output::table(
            &[
                "PROXY",
                "IDLE POLLS",
                "STILL WAITING",
                "RSS BEFORE",
                "RSS HOLDING",
                "PER POLL",
                "CPU WHILE IDLE",
                "CELL PER POLL",
            ],
            &rows,
        );
    }
    Ok(())
}
