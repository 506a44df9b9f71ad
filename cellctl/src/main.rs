//! cellctl: operate marketcell cells (and routers) from the command line.

// `bench apply` runs a node's apply in this process: it should allocate the
// way a node does (and the load generators gain from it too).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod bench_apply;
mod bench_dispatch;
mod bench_get;
mod bench_graphql;
mod bench_longpoll;
mod bench_market;
mod bench_router;
mod bench_search;
mod client;
mod cluster;
mod local_up;
mod output;
mod proc_stat;
mod region;
mod seed;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cellctl", version, about = "Operate marketcell cells")]
struct Cli {
    /// Base URL of a cell node (any node: admin work is forwarded to the leader).
    #[arg(
        long,
        global = true,
        env = "CELLCTL_ENDPOINT",
        default_value = "http://127.0.0.1:8080"
    )]
    endpoint: String,
    /// Ops token (bootstrap token or a minted ops JWT).
    #[arg(long, global = true, env = "CELLCTL_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the ops token from this file (default: ./data/local/ops-token if present).
    #[arg(long, global = true, env = "CELLCTL_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// CA certificate to trust for https endpoints.
    #[arg(long, global = true, env = "CELLCTL_CA")]
    ca: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Cluster membership and status.
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
    /// Build a snapshot on the node now (the log behind it gets purged).
    Snapshot,
    /// Stream a consistent backup of the cell's state to a file.
    Backup {
        #[arg(long)]
        out: PathBuf,
    },
    /// Load demo data through the public API.
    Seed {
        /// A believable demo region: vendors of every kind, products, customers,
        /// and drivers approved, online and located (needs the ops token).
        #[arg(long, required = true)]
        demo: bool,
        /// The region's centre (west and south are negative: `--lng -73.99`).
        #[arg(long, default_value_t = 40.73, allow_negative_numbers = true)]
        lat: f64,
        #[arg(long, default_value_t = -73.99, allow_negative_numbers = true)]
        lng: f64,
        #[arg(long, default_value_t = 30)]
        customers: usize,
        #[arg(long, default_value_t = 15)]
        drivers: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value = "demo password 1")]
        password: String,
        /// Stay running after seeding and keep the drivers located: each
        /// pings its position every `--ping-every` seconds until Ctrl-C
        /// (dispatch forgets a position after a minute).
        #[arg(long)]
        keep_pinging: bool,
        #[arg(long, default_value_t = 20.0, requires = "keep_pinging")]
        ping_every: f64,
    },
    /// Ledger checks.
    Ledger {
        #[command(subcommand)]
        cmd: LedgerCmd,
    },
    /// Access tokens.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Internal CA and node certificates.
    Certs {
        #[command(subcommand)]
        cmd: CertsCmd,
    },
    /// Access-token signing keys (a cell's key file, shared by its nodes).
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// The routers' region directory (`--endpoint` = router URL(s),
    /// comma-separated; `--token` = the routers' ops token).
    Region {
        #[command(subcommand)]
        cmd: RegionCmd,
    },
    /// A local multi-cell setup with a router, on loopback.
    Local {
        #[command(subcommand)]
        cmd: LocalCmd,
    },
    /// Benchmarks (start their own local clusters).
    Bench {
        #[command(subcommand)]
        cmd: BenchCmd,
    },
}

#[derive(Subcommand)]
enum RegionCmd {
    /// Add (or redefine) a region on every router given.
    Add {
        name: String,
        /// The cell serving the region.
        #[arg(long)]
        cell: String,
        /// Center of a circular region: LAT,LNG.
        #[arg(long, allow_hyphen_values = true)]
        center: Option<String>,
        #[arg(long)]
        radius_km: Option<f64>,
        /// A box instead: MIN_LAT,MIN_LNG,MAX_LAT,MAX_LNG.
        #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
        bbox: Option<Vec<f64>>,
        /// API base URL of one of the cell's nodes (repeat for each node).
        #[arg(long = "node", required = true)]
        nodes: Vec<String>,
    },
    /// List regions with health, leader and drain state.
    List,
    /// Stop sending the region new sessions; `list` shows when it is idle.
    Drain { name: String },
    /// Forget a region.
    Remove { name: String },
}

#[derive(Subcommand)]
enum LocalCmd {
    /// Start a router and N cells of M nodes on loopback, in the background.
    Up {
        #[arg(long, default_value_t = 2)]
        cells: usize,
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        #[arg(long, default_value = "data/multi")]
        dir: PathBuf,
        /// Where the router listens.
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: std::net::SocketAddr,
    },
    /// Stop what `local up` started (data is kept).
    Down {
        #[arg(long, default_value = "data/multi")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Show the node's view of the cluster.
    Status,
    /// Form a new cluster from the endpoint's node (plus --node ID=API,PEER ...).
    Init {
        #[arg(long = "node")]
        nodes: Vec<String>,
    },
    /// Add a running node (started with --join) as a learner; waits until it caught up.
    AddNode {
        #[arg(long)]
        id: u64,
        /// Its API address, host:port.
        #[arg(long)]
        api: String,
        /// Its peer address, host:port.
        #[arg(long)]
        peer: String,
    },
    /// Make learners voters (keeps the current voters).
    Promote {
        #[arg(long = "id", required = true)]
        ids: Vec<u64>,
    },
    /// Set the exact voter set.
    Voters {
        #[arg(required = true)]
        ids: Vec<u64>,
    },
    /// Remove a node from the cluster.
    RemoveNode {
        #[arg(long)]
        id: u64,
    },
}

#[derive(Subcommand)]
enum LedgerCmd {
    /// Verify that every transaction balances, all postings sum to zero and
    /// stored balances match the postings (exit code 1 if not).
    Check,
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Mint a short-lived access token with the ops bootstrap token.
    Mint {
        #[arg(long, default_value = "ops")]
        role: String,
        /// Lifetime in seconds (at most a day).
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// Subject of the token (default: a fresh ops-<id>).
        #[arg(long)]
        sub: Option<String>,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Add a new signing key, staged to take over at a set time: copy the
    /// file to every node of the cell and restart them (one at a time)
    /// before then. Old keys keep verifying.
    Rotate {
        /// The cell's key file (`--jwt-keys-file` of its nodes).
        #[arg(long, default_value = "data/local/jwt-keys.pem")]
        file: PathBuf,
        /// Seconds until the new key signs: time to roll the file out.
        #[arg(long, default_value_t = 900)]
        activate_in: u64,
        /// Stop the old key verifying this many seconds after the switch
        /// (at least the access-token lifetime); by default it verifies
        /// until removed from the file.
        #[arg(long)]
        retire_old_after: Option<u64>,
    },
}

#[derive(Subcommand)]
enum CertsCmd {
    /// Create an internal CA (ca.pem, ca-key.pem).
    Init {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        #[arg(long, default_value = "marketcell internal CA")]
        name: String,
        #[arg(long, default_value_t = 3650)]
        days: u32,
        #[arg(long)]
        force: bool,
    },
    /// Issue a node certificate (server + client use) signed by the CA.
    Issue {
        #[arg(long, default_value = "certs")]
        ca_dir: PathBuf,
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// File name stem: <name>.pem and <name>-key.pem.
        #[arg(long)]
        name: String,
        /// DNS names or IP addresses the certificate is valid for.
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        #[arg(long, default_value_t = 825)]
        days: u32,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Config-store writes on a local 3-node cell vs a local 3-node etcd.
    Kv {
        #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
        clients: Vec<usize>,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 256)]
        value_size: usize,
        /// Skip the etcd reference.
        #[arg(long)]
        no_etcd: bool,
        #[arg(long)]
        etcd_bin: Option<PathBuf>,
        /// Where to put the clusters' data (default: a temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Nodes in the marketcell cell (the etcd reference always has 3).
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Alternating rounds per level (medians are reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Worker threads per process for both systems (cell --threads,
        /// etcd GOMAXPROCS), e.g. 1 when six processes share two cores.
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Checkout (quote + order) throughput vs config-store puts on a 3-node cell.
    Checkout {
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// A checkout's state-machine work vs a config-store put's, in process
    /// on redb (no HTTP, no Raft; thread CPU time).
    Apply {
        /// Orders (and puts) timed per round, after as many warm-up orders.
        #[arg(long, default_value_t = 20_000)]
        orders: usize,
        #[arg(long, default_value_t = 64)]
        customers: usize,
        #[arg(long, default_value_t = 1000)]
        products: usize,
        /// Commands per transaction.
        #[arg(long, default_value_t = 19)]
        batch: usize,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// redb page cache in MiB (the cell's default).
        #[arg(long, default_value_t = 128)]
        cache_mb: usize,
    },
    /// Product reads with a Zipf key distribution, read cache on vs off.
    Reads {
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 1000)]
        products: usize,
    },
    /// Router proxy overhead vs nginx on the same cell, and the cost of
    /// idle long polls.
    Router {
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        #[arg(long, default_value_t = 1000)]
        products: usize,
        /// Idle long polls to hold open through each proxy (0 skips).
        #[arg(long, default_value_t = 10_000)]
        idle: usize,
        /// Skip the nginx reference.
        #[arg(long)]
        no_nginx: bool,
        #[arg(long)]
        nginx_bin: Option<PathBuf>,
    },
    /// Search: our index in-process vs PostgreSQL full-text search, same catalog and queries.
    Search {
        /// Catalog sizes to run.
        #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
        products: Vec<usize>,
        #[arg(long, value_delimiter = ',', default_value = "1,16")]
        clients: Vec<usize>,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Alternating rounds per level (medians are reported).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Skip the PostgreSQL reference.
        #[arg(long)]
        no_pg: bool,
        /// Use this PostgreSQL (libpq key=value or URL) instead of a scratch server.
        #[arg(long)]
        pg_url: Option<String>,
        /// Where to put the indexes and the scratch server (default: a temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Changes per index commit while indexing.
        #[arg(long, default_value_t = 10000)]
        batch: usize,
        /// Distinct queries in the mix.
        #[arg(long, default_value_t = 2000)]
        queries: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Location ingest, dispatch latency with many online drivers, and
    /// deferred route matching inside the apply.
    Dispatch {
        #[arg(long, default_value_t = 10_000)]
        drivers: usize,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 100)]
        orders: usize,
        #[arg(long, default_value_t = 1000)]
        routes: usize,
        #[arg(long, default_value_t = 5000)]
        claims: usize,
        /// Nodes in the cell; pings and orders go to its leader, which
        /// replicates the positions to the others once a second (on one
        /// small machine the others compete with it for the CPU).
        #[arg(long, default_value_t = 1)]
        nodes: u64,
        /// Pings per driver per second while orders are dispatched.
        #[arg(long, default_value_t = 1.0)]
        ping_hz: f64,
    },
    /// The order-tracking screen: one GraphQL query vs the REST calls for
    /// the same data, same node, same run.
    Graphql {
        #[arg(long, value_delimiter = ',', default_value = "1,16")]
        clients: Vec<usize>,
        /// Network round-trip times to emulate, in ms (0: plain loopback).
        #[arg(long, value_delimiter = ',', default_value = "0,20")]
        rtt_ms: Vec<u64>,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Many long polls on one node's event feed: memory per waiter and how
    /// soon one change answers them all.
    Longpoll {
        #[arg(long, default_value_t = 10_000)]
        waiters: usize,
    },
    /// Load state into a single node and report its memory.
    Memory {
        #[arg(long, default_value_t = 1024)]
        megabytes: u64,
    },
}

fn token(cli: &Cli) -> anyhow::Result<Option<String>> {
    if let Some(t) = &cli.token {
        return Ok(Some(t.clone()));
    }
    let file = cli
        .token_file
        .clone()
        .or_else(|| Some(PathBuf::from("data/local/ops-token")).filter(|p| p.is_file()));
    match file {
        Some(f) => Ok(Some(
            std::fs::read_to_string(&f)
                .with_context(|| format!("reading {}", f.display()))?
                .trim()
                .to_string(),
        )),
        None => Ok(None),
    }
}

#[tokio::main]
async fn main() {
    // Like other command-line tools, end quietly when the reader of our
    // output goes away (`cellctl ... | head`).
    #[cfg(unix)]
    unsafe {
        // SAFETY: restoring the default disposition of one signal at start-up.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let api = || client::Api::new(&cli.endpoint, token(&cli)?, cli.ca.as_deref());
    let j = cli.json;
    match &cli.cmd {
        Cmd::Cluster { cmd } => {
            let api = api()?;
            match cmd {
                ClusterCmd::Status => cluster::status(&api, j).await,
                ClusterCmd::Init { nodes } => cluster::init(&api, nodes, j).await,
                ClusterCmd::AddNode { id, api: a, peer } => {
                    cluster::add_node(&api, *id, a, peer, j).await
                }
                ClusterCmd::Promote { ids } => cluster::promote(&api, ids, j).await,
                ClusterCmd::Voters { ids } => cluster::set_voters(&api, ids, j).await,
                ClusterCmd::RemoveNode { id } => cluster::remove_node(&api, *id, j).await,
            }
        }
        Cmd::Seed {
            demo: _,
            lat,
            lng,
            customers,
            drivers,
            seed,
            password,
            keep_pinging,
            ping_every,
        } => {
            if !(ping_every.is_finite() && (0.1..=55.0).contains(ping_every)) {
                anyhow::bail!("--ping-every is in seconds, from 0.1 to 55 (dispatch forgets a position after 60)");
            }
            seed::demo(
                seed::SeedOptions {
                    base: cli.endpoint.clone(),
                    ops_token: token(&cli)?,
                    lat: *lat,
                    lng: *lng,
                    customers: *customers,
                    drivers: *drivers,
                    seed: *seed,
                    password: password.clone(),
                    keep_pinging: keep_pinging
                        .then(|| std::time::Duration::from_secs_f64(*ping_every)),
                },
                j,
            )
            .await
        }
        Cmd::Snapshot => cluster::snapshot(&api()?, j).await,
        Cmd::Ledger {
            cmd: LedgerCmd::Check,
        } => {
            let r = api()?
                .call(reqwest::Method::GET, "/admin/ledger/check", None)
                .await?;
            if j {
                output::json(&r);
            } else {
                println!(
                    "{} transactions, {} postings, sum of postings {}, unbalanced {}, balance mismatches {}",
                    output::show(&r["transactions"]),
                    output::show(&r["postings"]),
                    output::show(&r["postings_sum"]),
                    r["unbalanced"].as_array().map(|a| a.len()).unwrap_or(0),
                    r["balance_mismatches"].as_array().map(|a| a.len()).unwrap_or(0),
                );
            }
            if r["ok"] != serde_json::Value::Bool(true) {
                anyhow::bail!("the ledger does not balance");
            }
            if !j {
                println!("ledger ok");
            }
            Ok(())
        }
        Cmd::Token {
            cmd: TokenCmd::Mint { role, ttl, sub },
        } => {
            let r = api()?
                .call(
                    reqwest::Method::POST,
                    "/admin/tokens",
                    Some(serde_json::json!({"role": role, "ttl_seconds": ttl, "sub": sub})),
                )
                .await?;
            if j {
                output::json(&r);
            } else {
                println!("{}", output::show(&r["access_token"]));
            }
            Ok(())
        }
        Cmd::Backup { out } => cluster::backup(&api()?, out, j).await,
        Cmd::Keys {
            cmd:
                KeysCmd::Rotate {
                    file,
                    activate_in,
                    retire_old_after,
                },
        } => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs() as i64;
            let activate_at = now.saturating_add(i64::try_from(*activate_in)?);
            let retire_at = retire_old_after
                .map(|s| i64::try_from(s).map(|s| activate_at.saturating_add(s)))
                .transpose()?;
            let kid = edge::token::KeySet::rotate_file_staged(file, Some(activate_at), retire_at)?;
            if j {
                println!(
                    "{}",
                    serde_json::json!({"kid": kid, "active_after": activate_at, "old_retire_after": retire_at})
                );
            } else {
                println!(
                    "new key {kid} in {}: it signs from {} (unix {activate_at}); copy the file to every node and restart them before then",
                    file.display(),
                    cell::http::identity_api::rfc3339(activate_at.saturating_mul(1000)),
                );
            }
            Ok(())
        }
        Cmd::Certs { cmd } => match cmd {
            CertsCmd::Init {
                dir,
                name,
                days,
                force,
            } => {
                cell::certs::init_ca(dir, name, *days, *force)?;
                println!(
                    "CA written to {}/ca.pem (key: ca-key.pem, keep it private)",
                    dir.display()
                );
                Ok(())
            }
            CertsCmd::Issue {
                ca_dir,
                out_dir,
                name,
                hosts,
                days,
                force,
            } => {
                let out = out_dir.clone().unwrap_or_else(|| ca_dir.clone());
                let (cert, key) = cell::certs::issue(ca_dir, &out, name, hosts, *days, *force)?;
                println!("certificate {} key {}", cert.display(), key.display());
                Ok(())
            }
        },
        Cmd::Region { cmd } => {
            let routers = cli
                .endpoint
                .split(',')
                .map(|e| client::Api::new(e.trim(), token(&cli)?, cli.ca.as_deref()))
                .collect::<anyhow::Result<Vec<_>>>()?;
            match cmd {
                RegionCmd::Add {
                    name,
                    cell,
                    center,
                    radius_km,
                    bbox,
                    nodes,
                } => {
                    let def = region::RegionDef {
                        cell: cell.clone(),
                        center: center.as_deref().map(region::parse_point).transpose()?,
                        radius_km: *radius_km,
                        bbox: bbox.clone(),
                        nodes: nodes.clone(),
                    };
                    region::add(&routers, name, &def, j).await
                }
                RegionCmd::List => region::list(&routers, j).await,
                RegionCmd::Drain { name } => region::drain(&routers, name, j).await,
                RegionCmd::Remove { name } => region::remove(&routers, name).await,
            }
        }
        Cmd::Local { cmd } => match cmd {
            LocalCmd::Up {
                cells,
                nodes,
                dir,
                listen,
            } => local_up::up(dir, *cells, *nodes, *listen, j).await,
            LocalCmd::Down { dir } => local_up::down(dir).await,
        },
        Cmd::Bench { cmd } => match cmd {
            BenchCmd::Apply {
                orders,
                customers,
                products,
                batch,
                rounds,
                cache_mb,
            } => bench_apply::run(bench_apply::ApplyBenchOptions {
                orders: *orders,
                customers: *customers,
                products: *products,
                batch: *batch,
                rounds: *rounds,
                cache_bytes: cache_mb * 1024 * 1024,
                json: j,
            }),
            BenchCmd::Kv {
                clients,
                seconds,
                value_size,
                no_etcd,
                etcd_bin,
                dir,
                nodes,
                rounds,
                threads,
            } => {
                bench::kv(bench::KvBenchOptions {
                    clients: clients.clone(),
                    seconds: *seconds,
                    value_size: *value_size,
                    etcd: !no_etcd,
                    etcd_bin: etcd_bin.clone(),
                    dir: dir.clone(),
                    json: j,
                    nodes: *nodes,
                    rounds: *rounds,
                    threads: *threads,
                })
                .await
            }
            BenchCmd::Router {
                clients,
                seconds,
                rounds,
                products,
                idle,
                no_nginx,
                nginx_bin,
            } => {
                bench_router::run(bench_router::RouterBenchOptions {
                    clients: *clients,
                    seconds: *seconds,
                    rounds: *rounds,
                    products: *products,
                    idle: *idle,
                    no_nginx: *no_nginx,
                    nginx_bin: nginx_bin.clone(),
                    json: j,
                })
                .await
            }
            BenchCmd::Dispatch {
                drivers,
                clients,
                seconds,
                orders,
                routes,
                claims,
                nodes,
                ping_hz,
            } => {
                bench_dispatch::run(bench_dispatch::DispatchBenchOptions {
                    nodes: *nodes,
                    ping_hz: *ping_hz,
                    drivers: *drivers,
                    clients: *clients,
                    seconds: *seconds,
                    orders: *orders,
                    routes: *routes,
                    claims: *claims,
                    json: j,
                })
                .await
            }
            BenchCmd::Graphql {
                clients,
                rtt_ms,
                seconds,
                rounds,
            } => {
                bench_graphql::run(bench_graphql::GraphqlBenchOptions {
                    clients: clients.clone(),
                    rtt_ms: rtt_ms.clone(),
                    seconds: *seconds,
                    rounds: *rounds,
                    json: j,
                })
                .await
            }
            BenchCmd::Longpoll { waiters } => {
                bench_longpoll::run(bench_longpoll::LongPollBenchOptions {
                    waiters: *waiters,
                    json: j,
                })
                .await
            }
            BenchCmd::Memory { megabytes } => bench::memory(*megabytes, j).await,
            BenchCmd::Checkout {
                clients,
                seconds,
                rounds,
            } => bench_market::checkout(*clients, *seconds, *rounds, j).await,
            BenchCmd::Reads {
                clients,
                seconds,
                rounds,
                products,
            } => bench_market::reads(*clients, *seconds, *rounds, *products, j).await,
            BenchCmd::Search {
                products,
                clients,
                seconds,
                rounds,
                no_pg,
                pg_url,
                dir,
                batch,
                queries,
                seed,
            } => {
                bench_search::run(bench_search::SearchBenchOptions {
                    products: products.clone(),
                    clients: clients.clone(),
                    seconds: *seconds,
                    rounds: *rounds,
                    no_pg: *no_pg,
                    pg_url: pg_url.clone(),
                    dir: dir.clone(),
                    batch: *batch,
                    queries: *queries,
                    seed: *seed,
                    json: j,
                })
                .await
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn western_and_southern_coordinates_parse_as_numbers() {
        let cli = Cli::try_parse_from([
            "cellctl", "seed", "--demo", "--lat", "-33.9", "--lng", "-70.6",
        ])
        .unwrap();
        match cli.cmd {
            Cmd::Seed { lat, lng, .. } => assert_eq!((lat, lng), (-33.9, -70.6)),
            _ => panic!("not a seed"),
        }
    }
}
