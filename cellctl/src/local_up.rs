//! `cellctl local up|down`: a router and several multi-node cells on
//! loopback, left running in the background, described in
//! `<dir>/local.json` so that `local down` can stop them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use cell::local::{find_cell_binary, LocalCell};
use router::directory::{Location, RegionSpec};
use router::local::{find_router_binary, LocalRouter};
use serde::{Deserialize, Serialize};

use crate::output;

/// Demo regions, in the order cells are created.
const DEMO_REGIONS: [(&str, f64, f64); 4] = [
    ("nyc", 40.73, -73.99),
    ("lon", 51.51, -0.13),
    ("par", 48.86, 2.35),
    ("sfo", 37.77, -122.42),
];

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    router: ProcessInfo,
    router_token_file: PathBuf,
    cells: Vec<CellInfo>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CellInfo {
    name: String,
    token_file: PathBuf,
    nodes: Vec<ProcessInfo>,
}

#[derive(Debug, Serialize, Deserialize)]
struct ProcessInfo {
    url: String,
    pid: u32,
}

fn manifest_path(dir: &Path) -> PathBuf {
    dir.join("local.json")
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

pub async fn up(
    dir: &Path,
    cells: usize,
    nodes: u64,
    listen: SocketAddr,
    json_out: bool,
) -> anyhow::Result<()> {
    if !(1..=DEMO_REGIONS.len()).contains(&cells) {
        bail!("--cells must be 1 to {}", DEMO_REGIONS.len());
    }
    if !matches!(nodes, 1 | 3 | 5) {
        bail!("--nodes must be 1, 3 or 5");
    }
    if let Ok(text) = std::fs::read_to_string(manifest_path(dir)) {
        let m: Manifest = serde_json::from_str(&text)?;
        if alive(m.router.pid) {
            bail!(
                "a local setup is already running from {} (router {}); `cellctl local down` first",
                dir.display(),
                m.router.url
            );
        }
    }
    let cell_bin = find_cell_binary()?;
    let router_bin = find_router_binary().ok_or_else(|| {
        anyhow!("cannot find the `router` binary (cargo build --release, or set ROUTER_BIN)")
    })?;
    std::fs::create_dir_all(dir)?;
    let dir = dir.canonicalize()?;

    let mut started = Vec::new();
    let mut regions = BTreeMap::new();
    for &(name, lat, lng) in &DEMO_REGIONS[..cells] {
        eprintln!("starting cell {name} ({nodes} nodes)…");
        let mut cell = LocalCell::new(&cell_bin, name, &dir.join(name))?.with_args(&[
            "--region",
            name,
            "--trusted-proxy",
            "127.0.0.1",
        ]);
        cell.form(nodes)
            .await
            .with_context(|| format!("forming cell {name}"))?;
        regions.insert(
            name.to_string(),
            RegionSpec {
                cell: name.to_string(),
                center: Some(Location { lat, lng }),
                radius_km: Some(60.0),
                bbox: None,
                nodes: cell.nodes.keys().map(|id| cell.api_url(*id)).collect(),
            },
        );
        started.push(cell);
    }
    eprintln!("starting the router on {listen}…");
    let router = LocalRouter::start(
        &router_bin,
        &dir.join("router"),
        &regions,
        Some(listen),
        &[],
    )
    .map_err(|e| anyhow!("{e}"))?;
    router
        .wait_up(Duration::from_secs(20))
        .await
        .map_err(|e| anyhow!("{e}"))?;

    let router_url = router.url();
    let router_token_file = router.dir.join("ops-token");
    let router_pid = router
        .detach()
        .ok_or_else(|| anyhow!("router did not start"))?;
    let mut infos = Vec::new();
    for cell in started {
        let name = cell.name.clone();
        let token_file = cell.token_file.clone();
        let urls: BTreeMap<u64, String> = cell
            .nodes
            .keys()
            .map(|id| (*id, cell.api_url(*id)))
            .collect();
        let pids = cell.detach();
        infos.push(CellInfo {
            name,
            token_file,
            nodes: pids
                .into_iter()
                .map(|(id, pid)| ProcessInfo {
                    url: urls[&id].clone(),
                    pid,
                })
                .collect(),
        });
    }
    let manifest = Manifest {
        router: ProcessInfo {
            url: router_url,
            pid: router_pid,
        },
        router_token_file,
        cells: infos,
    };
    std::fs::write(manifest_path(&dir), serde_json::to_vec_pretty(&manifest)?)?;
    if json_out {
        output::json(&serde_json::to_value(&manifest)?);
        return Ok(());
    }
    println!(
        "router {} (ops token in {})",
        manifest.router.url,
        manifest.router_token_file.display()
    );
    let rows: Vec<Vec<String>> = manifest
        .cells
        .iter()
        .flat_map(|c| {
            c.nodes.iter().map(move |n| {
                vec![
                    c.name.clone(),
                    n.url.clone(),
                    n.pid.to_string(),
                    c.token_file.display().to_string(),
                ]
            })
        })
        .collect();
    output::table(&["CELL", "NODE", "PID", "OPS TOKEN FILE"], &rows);
    println!("stop with: cellctl local down --dir {}", dir.display());
    Ok(())
}

pub async fn down(dir: &Path) -> anyhow::Result<()> {
    let path = manifest_path(dir);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("no local setup in {} ({})", dir.display(), path.display()))?;
    let m: Manifest = serde_json::from_str(&text)?;
    let pids: Vec<u32> = std::iter::once(m.router.pid)
        .chain(m.cells.iter().flat_map(|c| c.nodes.iter().map(|n| n.pid)))
        .collect();
    for &pid in &pids {
        if alive(pid) {
            // SAFETY: plain kill(2) with SIGTERM on a pid we started.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while pids.iter().any(|&p| alive(p)) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for &pid in pids.iter().filter(|&&p| alive(p)) {
        // SAFETY: as above; the process ignored SIGTERM for 15 s.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    }
    std::fs::remove_file(&path)?;
    println!(
        "stopped {} processes (data kept in {})",
        pids.len(),
        dir.display()
    );
    Ok(())
}
