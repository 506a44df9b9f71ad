//! Router settings: flags, `ROUTER_*` environment variables and a TOML file
//! (flags win over the file).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edge::rate_limit::{Limit, Limits};
use serde::Deserialize;

use crate::directory::RegionSpec;
use crate::error::RouterError;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "router", about = "marketcell global router", version)]
pub struct Args {
    /// TOML file with the settings below and `[regions.<name>]` tables.
    #[arg(long, env = "ROUTER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Public listen address.
    #[arg(long, env = "ROUTER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Where the region directory is persisted.
    #[arg(long, env = "ROUTER_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Ops token for `/admin/*` (created in the data dir if absent).
    #[arg(long, env = "ROUTER_OPS_TOKEN_FILE")]
    pub ops_token_file: Option<PathBuf>,
    /// Public TLS certificate chain (PEM).
    #[arg(long, env = "ROUTER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// Public TLS private key (PEM).
    #[arg(long, env = "ROUTER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The cells' internal CA (PEM), trusted for `https://` node addresses.
    #[arg(long, env = "ROUTER_CA")]
    pub ca: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address.
    #[arg(long, env = "ROUTER_INSECURE_HTTP")]
    pub insecure_http: bool,
    /// Requests per second per client IP for unauthenticated calls.
    #[arg(long, env = "ROUTER_RATE_LIMIT_IP")]
    pub rate_limit_ip: Option<f64>,
    /// Requests per second per client IP on /v1/auth/*.
    #[arg(long, env = "ROUTER_RATE_LIMIT_AUTH")]
    pub rate_limit_auth: Option<f64>,
    /// Requests per second per authenticated principal.
    #[arg(long, env = "ROUTER_RATE_LIMIT_PRINCIPAL")]
    pub rate_limit_principal: Option<f64>,
    /// Milliseconds between health checks of each node.
    #[arg(long, env = "ROUTER_HEALTH_INTERVAL_MS")]
    pub health_interval_ms: Option<u64>,
    /// Milliseconds between pings on the HTTP/2 connections that carry long
    /// polls to nodes, and how long a pong may take before the connection
    /// and the polls waiting on it are given up (default 20000).
    #[arg(long, env = "ROUTER_POLL_KEEPALIVE_MS")]
    pub poll_keepalive_ms: Option<u64>,
    /// Event loops serving client connections (default: one per core).
    #[arg(long, env = "ROUTER_THREADS")]
    pub threads: Option<usize>,
    /// Requests being forwarded at once (long polls aside); more are shed
    /// with `503 overloaded` (default 8192).
    #[arg(long, env = "ROUTER_MAX_INFLIGHT")]
    pub max_inflight: Option<usize>,
    /// Send each bodiless GET/HEAD on a connection of its own client
    /// connection instead of pipelining it on connections the event loop
    /// shares.
    #[arg(long, env = "ROUTER_NO_PIPELINE")]
    pub no_pipeline: bool,
    /// Log as JSON lines.
    #[arg(long, env = "ROUTER_LOG_JSON")]
    pub log_json: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    ops_token_file: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    ca: Option<PathBuf>,
    insecure_http: Option<bool>,
    rate_limit_ip: Option<f64>,
    rate_limit_auth: Option<f64>,
    rate_limit_principal: Option<f64>,
    health_interval_ms: Option<u64>,
    poll_keepalive_ms: Option<u64>,
    log_json: Option<bool>,
    max_inflight: Option<usize>,
    no_pipeline: Option<bool>,
    threads: Option<usize>,
    #[serde(default)]
    regions: std::collections::BTreeMap<String, RegionSpec>,
}

#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub ops_token_file: PathBuf,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub ca: Option<PathBuf>,
    pub limits: Limits,
    pub health_interval: Duration,
    /// Ping interval and pong deadline on long polls' shared connections.
    pub poll_keepalive: Duration,
    pub log_json: bool,
    /// Requests forwarded at once before the router sheds load.
    pub max_inflight: usize,
    /// Event loops serving client connections (`None`: one per core).
    pub threads: Option<usize>,
    /// Bodiless GET/HEAD requests are pipelined on shared upstream
    /// connections (`pipeline`).
    pub pipeline: bool,
    /// Regions from the config file; merged into the persisted directory on
    /// start (the file wins for the regions it names).
    pub regions: Vec<(String, RegionSpec)>,
}

impl RouterConfig {
    pub fn resolve(args: Args) -> Result<Self, RouterError> {
        let file: FileConfig = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| RouterError::io(path, e))?;
                toml::from_str(&text)
                    .map_err(|e| RouterError::Config(format!("parsing {}: {e}", path.display())))?
            }
            None => FileConfig::default(),
        };
        let listen = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8000)));
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("data/router"));
        let ops_token_file = args
            .ops_token_file
            .or(file.ops_token_file)
            .unwrap_or_else(|| data_dir.join("ops-token"));
        let tls = match (
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(RouterError::Config(
                    "--tls-cert and --tls-key go together".into(),
                ))
            }
        };
        let insecure = args.insecure_http || file.insecure_http.unwrap_or(false);
        if tls.is_none() && !listen.ip().is_loopback() && !insecure {
            return Err(RouterError::Config(format!(
                "refusing plain HTTP on {listen}: give --tls-cert/--tls-key, or --insecure-http"
            )));
        }
        let mut limits = Limits::default();
        let rate = |v: Option<f64>, name: &str| match v {
            Some(r) if !(r > 0.0 && r.is_finite()) => Err(RouterError::Config(format!(
                "{name} must be a positive number"
            ))),
            other => Ok(other),
        };
        if let Some(r) = rate(args.rate_limit_ip.or(file.rate_limit_ip), "--rate-limit-ip")? {
            limits.ip = burst_of(r, 2.0);
        }
        if let Some(r) = rate(
            args.rate_limit_auth.or(file.rate_limit_auth),
            "--rate-limit-auth",
        )? {
            limits.auth_ip = burst_of(r, 6.0);
        }
        if let Some(r) = rate(
            args.rate_limit_principal.or(file.rate_limit_principal),
            "--rate-limit-principal",
        )? {
            limits.principal = burst_of(r, 2.0);
        }
        let health_ms = args
            .health_interval_ms
            .or(file.health_interval_ms)
            .unwrap_or(500)
            .clamp(50, 60_000);
        let keepalive_ms = args
            .poll_keepalive_ms
            .or(file.poll_keepalive_ms)
            .unwrap_or(20_000)
            .clamp(100, 300_000);
        Ok(RouterConfig {
            listen,
            data_dir,
            ops_token_file,
            tls,
            ca: args.ca.or(file.ca),
            limits,
            health_interval: Duration::from_millis(health_ms),
            poll_keepalive: Duration::from_millis(keepalive_ms),
            log_json: args.log_json || file.log_json.unwrap_or(false),
            max_inflight: args
                .max_inflight
                .or(file.max_inflight)
                .unwrap_or(8192)
                .max(1),
            pipeline: !(args.no_pipeline || file.no_pipeline.unwrap_or(false)),
            threads: args.threads.or(file.threads).map(|n| n.max(1)),
            regions: file.regions.into_iter().collect(),
        })
    }

    pub fn directory_file(&self) -> PathBuf {
        self.data_dir.join("regions.json")
    }
}

fn burst_of(per_second: f64, seconds: f64) -> Limit {
    Limit {
        per_second,
        burst: per_second * seconds,
    }
}

/// Reads the ops token, creating a random one (mode 0600) if the file does
/// not exist.
pub fn load_or_create_token(path: &Path) -> Result<String, RouterError> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
        Ok(_) => Err(RouterError::Config(format!("{} is empty", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = format!("mr_ops_{}", hex::encode(rand::random::<[u8; 32]>()));
            write_private(path, token.as_bytes())?;
            Ok(token)
        }
        Err(e) => Err(RouterError::io(path, e)),
    }
}

/// Writes a file readable by its owner only, atomically (temp + rename).
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), RouterError> {
    use std::io::Write as _;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| RouterError::io(dir, e))?;
    }
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp).map_err(|e| RouterError::io(&tmp, e))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .map_err(|e| RouterError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| RouterError::io(path, e))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[test]
    fn every_setting_but_the_config_path_may_come_from_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("router.toml");
        std::fs::write(
            &path,
            "threads = 2\nmax_inflight = 10\nno_pipeline = true\nhealth_interval_ms = 1000\n",
        )
        .unwrap();
        let data = dir.path().join("data");
        let with = |flags: &[&str]| {
            let base = ["router", "--config", path.to_str().unwrap()];
            let data = ["--data-dir", data.to_str().unwrap()];
            let args = Args::parse_from(base.iter().chain(&data).chain(flags));
            RouterConfig::resolve(args).unwrap()
        };
        let c = with(&[]);
        assert_eq!(c.threads, Some(2));
        assert_eq!(c.max_inflight, 10);
        assert!(!c.pipeline);
        assert_eq!(c.health_interval, Duration::from_secs(1));
        // A flag wins over the file.
        assert_eq!(with(&["--threads", "3"]).threads, Some(3));
    }
}
