//! A `router` process on loopback: what `cellctl local up`, the benchmarks
//! and the router tests start.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::directory::RegionSpec;
use crate::error::RouterError;

/// The `router` binary next to the running executable (or `ROUTER_BIN`),
/// else from PATH.
pub fn find_router_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ROUTER_BIN") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    exe.ancestors()
        .skip(1)
        .take(3)
        .map(|d| d.join("router"))
        .find(|p| p.is_file())
        .or_else(|| {
            let path = std::env::var_os("PATH")?;
            std::env::split_paths(&path)
                .map(|d| d.join("router"))
                .find(|p| p.is_file())
        })
}

pub struct LocalRouter {
    pub addr: SocketAddr,
    pub dir: PathBuf,
    pub token: String,
    pub log_file: PathBuf,
    bin: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl LocalRouter {
    /// Writes `dir/router.toml` with `regions` and starts the router on
    /// `listen` (default: a free loopback port).
    pub fn start(
        bin: &Path,
        dir: &Path,
        regions: &BTreeMap<String, RegionSpec>,
        listen: Option<SocketAddr>,
        args: &[&str],
    ) -> Result<Self, RouterError> {
        std::fs::create_dir_all(dir).map_err(|e| RouterError::io(dir, e))?;
        let addr = match listen {
            Some(a) => a,
            None => edge::ports::free_loopback_addr().map_err(|e| RouterError::io(dir, e))?,
        };
        #[derive(serde::Serialize)]
        struct File<'a> {
            listen: SocketAddr,
            data_dir: &'a Path,
            regions: &'a BTreeMap<String, RegionSpec>,
        }
        let toml = toml::to_string(&File {
            listen: addr,
            data_dir: dir,
            regions,
        })
        .map_err(|e| RouterError::Config(e.to_string()))?;
        let config = dir.join("router.toml");
        std::fs::write(&config, toml).map_err(|e| RouterError::io(&config, e))?;
        let token_file = dir.join("ops-token");
        let token = crate::config::load_or_create_token(&token_file)?;
        let mut r = LocalRouter {
            addr,
            dir: dir.to_path_buf(),
            token,
            log_file: dir.join("router.log"),
            bin: bin.to_path_buf(),
            args: std::iter::once("--config".to_string())
                .chain(std::iter::once(config.display().to_string()))
                .chain(args.iter().map(|s| s.to_string()))
                .collect(),
            child: None,
        };
        r.restart()?;
        Ok(r)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// (Re)starts the process with the same settings and directory.
    pub fn restart(&mut self) -> Result<(), RouterError> {
        self.kill();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_file)
            .map_err(|e| RouterError::io(&self.log_file, e))?;
        let err_log = log
            .try_clone()
            .map_err(|e| RouterError::io(&self.log_file, e))?;
        let child = Command::new(&self.bin)
            .args(&self.args)
            .env_remove("ROUTER_CONFIG")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log)
            .spawn()
            .map_err(|e| RouterError::io(&self.bin, e))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until `/healthz` answers.
    pub async fn wait_up(&self, timeout: Duration) -> Result<(), RouterError> {
        let deadline = Instant::now() + timeout;
        loop {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(&self.log_file).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                return Err(RouterError::Config(format!(
                    "router on {} did not come up; last log lines: {:?}",
                    self.addr, tail
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Leaves the process running after this handle is dropped (for
    /// `cellctl local up`).
    pub fn detach(mut self) -> Option<u32> {
        self.child.take().map(|c| c.id())
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for LocalRouter {
    fn drop(&mut self) {
        self.kill();
    }
}
