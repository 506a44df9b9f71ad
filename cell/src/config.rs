//! Node configuration: defaults < config file < `CELL_*` environment < flags.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context};
use clap::Parser;
use serde::Deserialize;

use edge::rate_limit::{Limit, Limits};

/// A marketcell node. With no arguments: a single-node cell named `local`
/// on http://127.0.0.1:8080 with its data in ./data/local.
#[derive(Debug, Parser, Default)]
#[command(name = "cell", version, about)]
pub struct Args {
    /// TOML file with any of the settings below (snake_case keys).
    #[arg(long, env = "CELL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Cell name: [a-z][a-z0-9-]{0,31}.
    #[arg(long, env = "CELL_CELL")]
    pub cell: Option<String>,
    /// Region this cell serves (default: the cell name).
    #[arg(long, env = "CELL_REGION")]
    pub region: Option<String>,
    /// ISO 4217 currency of the cell.
    #[arg(long, env = "CELL_CURRENCY")]
    pub currency: Option<String>,
    /// This node's id within the cell (a positive integer).
    #[arg(long, env = "CELL_NODE_ID")]
    pub node_id: Option<u64>,
    /// Where this node keeps its data.
    #[arg(long, env = "CELL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the public and admin API.
    #[arg(long, env = "CELL_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address of the node-to-node (Raft) port.
    #[arg(long, env = "CELL_PEER_LISTEN")]
    pub peer_listen: Option<SocketAddr>,
    /// API address other nodes and clients use to reach this node (host:port).
    #[arg(long, env = "CELL_ADVERTISE")]
    pub advertise: Option<String>,
    /// Peer address other nodes use to reach this node (host:port).
    #[arg(long, env = "CELL_PEER_ADVERTISE")]
    pub peer_advertise: Option<String>,
    /// PEM certificate of this node (enables TLS on both ports).
    #[arg(long, env = "CELL_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key matching --tls-cert.
    #[arg(long, env = "CELL_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// PEM internal CA: peers must present certificates it issued (mTLS).
    #[arg(long, env = "CELL_CA")]
    pub ca: Option<PathBuf>,
    /// Allow plain HTTP on non-loopback addresses.
    #[arg(long, env = "CELL_INSECURE_HTTP")]
    pub insecure_http: bool,
    /// Accept peer (Raft) connections without client certificates on a
    /// non-loopback peer port: whoever reaches it can write to the log.
    #[arg(long, env = "CELL_INSECURE_PEERS")]
    pub insecure_peers: bool,
    /// File holding the ops bootstrap token (created on first start if absent).
    #[arg(long, env = "CELL_OPS_TOKEN_FILE")]
    pub ops_token_file: Option<PathBuf>,
    /// Do not form a single-node cluster on first start: wait to be added
    /// to an existing cell (or for `cellctl cluster init`).
    #[arg(long, env = "CELL_JOIN")]
    pub join: bool,
    /// Log as JSON lines.
    #[arg(long, env = "CELL_LOG_JSON")]
    pub log_json: bool,
    /// Local IP to dial peers from (multi-homed hosts).
    #[arg(long, env = "CELL_PEER_SOURCE_IP")]
    pub peer_source_ip: Option<std::net::IpAddr>,
    /// Build a snapshot after this many log entries.
    #[arg(long, env = "CELL_RAFT_SNAPSHOT_EVERY")]
    pub raft_snapshot_every: Option<u64>,
    /// Log entries kept behind a snapshot for lagging followers.
    #[arg(long, env = "CELL_RAFT_KEEP_LOGS")]
    pub raft_keep_logs: Option<u64>,
    /// MiB of page cache for the applied state (`state.redb`).
    #[arg(long, env = "CELL_STATE_CACHE_MB")]
    pub state_cache_mb: Option<usize>,
    /// PEM file of Ed25519 access-token keys (first = signing key, the rest
    /// verify only); created on first start. All nodes of a cell share it.
    #[arg(long, env = "CELL_JWT_KEYS_FILE")]
    pub jwt_keys_file: Option<PathBuf>,
    /// Requests per second per client IP for unauthenticated calls.
    #[arg(long, env = "CELL_RATE_LIMIT_IP")]
    pub rate_limit_ip: Option<f64>,
    /// Requests per second per client IP on /v1/auth/*.
    #[arg(long, env = "CELL_RATE_LIMIT_AUTH")]
    pub rate_limit_auth: Option<f64>,
    /// Requests per second per authenticated principal (ops is exempt).
    #[arg(long, env = "CELL_RATE_LIMIT_PRINCIPAL")]
    pub rate_limit_principal: Option<f64>,
    /// Serve vendor and product reads straight from redb, without the
    /// read cache (for comparisons).
    #[arg(long, env = "CELL_NO_READ_CACHE")]
    pub no_read_cache: bool,
    /// Refuse GraphQL introspection (`__schema`, `__type`) on /graphql;
    /// the SDL stays published at /graphql/schema.graphql.
    #[arg(long, env = "CELL_NO_GRAPHQL_INTROSPECTION")]
    pub no_graphql_introspection: bool,
    /// Let webhooks go to loopback, private and link-local addresses
    /// (development, tests); by default a vendor's URL may only reach the
    /// public internet, so it cannot make the leader call internal services.
    #[arg(long, env = "CELL_WEBHOOK_PRIVATE_TARGETS")]
    pub webhook_private_targets: bool,
    /// Long polls (`/v1/events?wait=`) waiting at once on this node; more
    /// are refused with `503 overloaded`, so waiters cannot grow memory
    /// without bound (default 16384, at most 16777216).
    #[arg(long, env = "CELL_MAX_LONG_POLLS")]
    pub max_long_polls: Option<usize>,
    /// Async worker threads (default: one per core). Nodes sharing a
    /// machine should split its cores.
    #[arg(long, env = "CELL_THREADS")]
    pub threads: Option<usize>,
    /// Seed this (empty) node from a backup file, as a single-voter cell.
    #[arg(long, env = "CELL_RESTORE_FROM")]
    pub restore_from: Option<PathBuf>,
    /// Address of a router (or other proxy) whose `X-Forwarded-For` is
    /// believed for per-IP rate limits; repeatable. Without it every request
    /// through a router would share the router's IP bucket.
    #[arg(
        long = "trusted-proxy",
        env = "CELL_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

/// The same settings as read from a config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    cell: Option<String>,
    region: Option<String>,
    currency: Option<String>,
    node_id: Option<u64>,
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    peer_listen: Option<SocketAddr>,
    advertise: Option<String>,
    peer_advertise: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    ca: Option<PathBuf>,
    insecure_http: Option<bool>,
    insecure_peers: Option<bool>,
    graphql_introspection: Option<bool>,
    webhook_private_targets: Option<bool>,
    max_long_polls: Option<usize>,
    ops_token_file: Option<PathBuf>,
    join: Option<bool>,
    log_json: Option<bool>,
    peer_source_ip: Option<std::net::IpAddr>,
    raft_snapshot_every: Option<u64>,
    raft_keep_logs: Option<u64>,
    state_cache_mb: Option<usize>,
    jwt_keys_file: Option<PathBuf>,
    rate_limit_ip: Option<f64>,
    rate_limit_auth: Option<f64>,
    rate_limit_principal: Option<f64>,
    trusted_proxies: Option<Vec<std::net::IpAddr>>,
    threads: Option<usize>,
    no_read_cache: Option<bool>,
    restore_from: Option<PathBuf>,
}

/// TLS material of a node.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

/// Resolved, validated configuration.
#[derive(Debug, Clone)]
pub struct CellConfig {
    pub cell: String,
    pub region: String,
    pub currency: String,
    pub node_id: u64,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub peer_listen: SocketAddr,
    pub advertise: String,
    pub peer_advertise: String,
    pub tls: Option<TlsFiles>,
    pub ops_token_file: PathBuf,
    pub bootstrap: bool,
    pub log_json: bool,
    pub peer_source_ip: Option<std::net::IpAddr>,
    pub raft_snapshot_every: u64,
    pub raft_keep_logs: u64,
    pub state_cache_bytes: usize,
    /// Async worker threads (`None`: one per core).
    pub threads: Option<usize>,
    pub restore_from: Option<PathBuf>,
    pub jwt_keys_file: PathBuf,
    pub limits: Limits,
    pub read_cache: bool,
    /// Answer GraphQL introspection queries.
    pub graphql_introspection: bool,
    /// Webhooks may target non-public addresses.
    pub webhook_private_targets: bool,
    /// Long polls waiting at once (more get `503`).
    pub max_long_polls: usize,
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

pub fn valid_cell_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some('a'..='z'))
        && name.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

impl CellConfig {
    pub fn resolve(args: Args) -> anyhow::Result<Self> {
        let file: FileConfig = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let cell = args.cell.or(file.cell).unwrap_or_else(|| "local".into());
        if !valid_cell_name(&cell) {
            bail!("cell name {cell:?} must match [a-z][a-z0-9-]{{0,31}}");
        }
        let region = args.region.or(file.region).unwrap_or_else(|| cell.clone());
        let currency = args
            .currency
            .or(file.currency)
            .unwrap_or_else(|| "USD".into());
        if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_uppercase()) {
            bail!("currency {currency:?} must be a 3-letter ISO 4217 code");
        }
        let node_id = args.node_id.or(file.node_id).unwrap_or(1);
        if node_id == 0 {
            bail!("node id must be positive");
        }
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("data").join(&cell));
        let listen = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".parse().expect("literal address"));
        let peer_listen = args.peer_listen.or(file.peer_listen).unwrap_or_else(|| {
            let mut a = listen;
            a.set_port(listen.port().wrapping_add(1000));
            a
        });
        let advertise = args
            .advertise
            .or(file.advertise)
            .unwrap_or_else(|| listen.to_string());
        let peer_advertise = args
            .peer_advertise
            .or(file.peer_advertise)
            .unwrap_or_else(|| peer_listen.to_string());
        if listen.ip().is_unspecified() && advertise == listen.to_string() {
            bail!("--listen {listen} needs --advertise with a reachable address");
        }
        if peer_listen.ip().is_unspecified() && peer_advertise == peer_listen.to_string() {
            bail!("--peer-listen {peer_listen} needs --peer-advertise with a reachable address");
        }
        let tls = match (
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert,
                key,
                ca: args.ca.or(file.ca),
            }),
            (None, None) => None,
            _ => bail!("--tls-cert and --tls-key go together"),
        };
        let insecure = args.insecure_http || file.insecure_http.unwrap_or(false);
        if tls.is_none() && !insecure {
            for addr in [listen, peer_listen] {
                if !addr.ip().is_loopback() {
                    bail!(
                        "refusing plain HTTP on {addr}: give --tls-cert/--tls-key, \
                         or --insecure-http to accept it knowingly"
                    );
                }
            }
        }
        // The peer port takes appends, votes, snapshots and forwarded
        // writes with no further check: only nodes may reach it.
        let peers_authenticated = tls.as_ref().is_some_and(|t| t.ca.is_some());
        let insecure_peers = args.insecure_peers || file.insecure_peers.unwrap_or(false);
        if !(peer_listen.ip().is_loopback() || peers_authenticated || insecure_peers) {
            bail!(
                "refusing an unauthenticated peer port on {peer_listen}: whoever reaches it \
                 can write to the cell's log; give --ca with --tls-cert/--tls-key (mTLS \
                 between nodes), or --insecure-peers to accept it knowingly"
            );
        }
        let ops_token_file = args
            .ops_token_file
            .or(file.ops_token_file)
            .unwrap_or_else(|| data_dir.join("ops-token"));
        let data_dir_for_keys = data_dir.clone();
        let mut limits = Limits::default();
        let rate = |v: Option<f64>, name: &str| -> anyhow::Result<Option<f64>> {
            match v {
                Some(r) if !(r > 0.0 && r.is_finite()) => bail!("{name} must be a positive number"),
                other => Ok(other),
            }
        };
        if let Some(r) = rate(args.rate_limit_ip.or(file.rate_limit_ip), "--rate-limit-ip")? {
            limits.ip = Limit {
                per_second: r,
                burst: 2.0 * r,
            };
        }
        if let Some(r) = rate(
            args.rate_limit_auth.or(file.rate_limit_auth),
            "--rate-limit-auth",
        )? {
            limits.auth_ip = Limit {
                per_second: r,
                burst: 6.0 * r,
            };
        }
        if let Some(r) = rate(
            args.rate_limit_principal.or(file.rate_limit_principal),
            "--rate-limit-principal",
        )? {
            limits.principal = Limit {
                per_second: r,
                burst: 2.0 * r,
            };
        }
        Ok(Self {
            cell,
            region,
            currency,
            node_id,
            data_dir,
            listen,
            peer_listen,
            advertise,
            peer_advertise,
            tls,
            ops_token_file,
            bootstrap: !(args.join || file.join.unwrap_or(false)),
            log_json: args.log_json || file.log_json.unwrap_or(false),
            peer_source_ip: args.peer_source_ip.or(file.peer_source_ip),
            raft_snapshot_every: args
                .raft_snapshot_every
                .or(file.raft_snapshot_every)
                .unwrap_or(20_000)
                .max(1),
            raft_keep_logs: args.raft_keep_logs.or(file.raft_keep_logs).unwrap_or(5_000),
            state_cache_bytes: args
                .state_cache_mb
                .or(file.state_cache_mb)
                .unwrap_or(128)
                .clamp(1, 1 << 20)
                << 20,
            restore_from: args.restore_from.or(file.restore_from),
            threads: args.threads.or(file.threads),
            jwt_keys_file: args
                .jwt_keys_file
                .or(file.jwt_keys_file)
                .unwrap_or_else(|| data_dir_for_keys.join("jwt-keys.pem")),
            limits,
            read_cache: !(args.no_read_cache || file.no_read_cache.unwrap_or(false)),
            graphql_introspection: !args.no_graphql_introspection
                && file.graphql_introspection.unwrap_or(true),
            webhook_private_targets: args.webhook_private_targets
                || file.webhook_private_targets.unwrap_or(false),
            max_long_polls: args
                .max_long_polls
                .or(file.max_long_polls)
                .unwrap_or(16_384)
                // A semaphore takes at most usize::MAX >> 3 permits.
                .clamp(1, 1 << 24),
            trusted_proxies: if args.trusted_proxies.is_empty() {
                file.trusted_proxies.unwrap_or_default()
            } else {
                args.trusted_proxies
            },
        })
    }

    pub fn raft_dir(&self) -> PathBuf {
        self.data_dir.join("raft")
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.data_dir.join("cache")
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// Read the ops bootstrap token, creating it (mode 0600) if absent.
pub fn load_or_create_ops_token(path: &Path) -> anyhow::Result<(String, bool)> {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let token = s.trim().to_string();
            if token.len() < 32 {
                bail!(
                    "ops token in {} is shorter than 32 characters",
                    path.display()
                );
            }
            Ok((token, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let bytes: [u8; 32] = rand::random();
            let token = format!("mc_ops_{}", hex::encode(bytes));
            write_private(path, token.as_bytes())?;
            Ok((token, true))
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Create a file readable only by its owner.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_embedded_single_node_cell() {
        let c = CellConfig::resolve(Args::default()).unwrap();
        assert_eq!(c.cell, "local");
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("data/local"));
        assert!(c.bootstrap);
    }

    #[test]
    fn every_setting_can_come_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cell.toml");
        std::fs::write(
            &path,
            "threads = 3\nno_read_cache = true\nrestore_from = \"/backups/b.bin\"\nstate_cache_mb = 16\n",
        )
        .unwrap();
        let c = CellConfig::resolve(Args {
            config: Some(path),
            ..Args::default()
        })
        .unwrap();
        assert_eq!(c.threads, Some(3));
        assert!(!c.read_cache);
        assert_eq!(c.restore_from, Some(PathBuf::from("/backups/b.bin")));
        assert_eq!(c.state_cache_bytes, 16 << 20);
    }

    #[test]
    fn plain_http_off_loopback_needs_consent() {
        let args = Args {
            listen: Some("0.0.0.0:8080".parse().unwrap()),
            advertise: Some("10.0.0.1:8080".into()),
            ..Default::default()
        };
        assert!(CellConfig::resolve(args).is_err());
        let args = Args {
            listen: Some("0.0.0.0:8080".parse().unwrap()),
            advertise: Some("10.0.0.1:8080".into()),
            peer_listen: Some("127.0.0.1:9080".parse().unwrap()),
            insecure_http: true,
            ..Default::default()
        };
        assert!(CellConfig::resolve(args).is_ok());
    }

    #[test]
    fn a_peer_port_off_loopback_needs_mtls_or_consent() {
        let off_loopback = || Args {
            listen: Some("127.0.0.1:8080".parse().unwrap()),
            peer_listen: Some("0.0.0.0:9080".parse().unwrap()),
            peer_advertise: Some("10.0.0.1:9080".into()),
            tls_cert: Some("n1.pem".into()),
            tls_key: Some("n1-key.pem".into()),
            ..Default::default()
        };
        let err = CellConfig::resolve(off_loopback()).unwrap_err().to_string();
        assert!(err.contains("--insecure-peers"), "{err}");
        // Plain HTTP consented to is still no authentication.
        let args = Args {
            tls_cert: None,
            tls_key: None,
            insecure_http: true,
            ..off_loopback()
        };
        assert!(CellConfig::resolve(args).is_err());
        let args = Args {
            ca: Some("ca.pem".into()),
            ..off_loopback()
        };
        assert!(CellConfig::resolve(args).is_ok());
        let args = Args {
            insecure_peers: true,
            ..off_loopback()
        };
        assert!(CellConfig::resolve(args).is_ok());
    }

    #[test]
    fn cell_names() {
        assert!(valid_cell_name("nyc"));
        assert!(valid_cell_name("a-1"));
        assert!(!valid_cell_name("1a"));
        assert!(!valid_cell_name("Nyc"));
        assert!(!valid_cell_name(""));
        assert!(!valid_cell_name(&"a".repeat(33)));
    }
}
