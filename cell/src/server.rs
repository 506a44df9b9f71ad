//! Node assembly: storage, Raft, cache, listeners, bootstrap, shutdown.

use edge::token::KeySet;
use std::{collections::BTreeMap, sync::Arc, time::Duration};

use anyhow::Context;
use raft::{NodeConfig, NodeInfo, RaftNode};
use storage::{CacheConfig, ReadCache};
use tokio::{net::TcpListener, sync::Semaphore};

use crate::{
    app::CellApp,
    config::{load_or_create_ops_token, CellConfig},
    http::{self, AppState},
    metrics::Metrics,
    read_models::ReadModels,
};

/// Most requests a node works on at once before it sheds load.
const MAX_INFLIGHT: usize = 2048;

pub async fn run(cfg: CellConfig) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let (ops_token, created) = load_or_create_ops_token(&cfg.ops_token_file)?;
    // Keys from the environment (PEM text) win over the key file.
    let keys = match std::env::var("CELL_JWT_KEYS") {
        Ok(pem) if !pem.trim().is_empty() => KeySet::from_pem(&pem).context("CELL_JWT_KEYS")?,
        _ => {
            KeySet::load_or_create(&cfg.jwt_keys_file)
                .with_context(|| format!("access-token keys in {}", cfg.jwt_keys_file.display()))?
                .0
        }
    };

    let (api_tls, peer_server_tls, peer_client_tls) = match &cfg.tls {
        Some(t) => {
            let api = edge::tls::server_config(&t.cert, &t.key, None)?;
            let peer = edge::tls::server_config(&t.cert, &t.key, t.ca.as_deref())?;
            let ca = t.ca.as_deref().unwrap_or(&t.cert);
            let client = edge::tls::client_config(ca, Some((&t.cert, &t.key)))?;
            (Some(api), Some(peer), Some(client))
        }
        None => (None, None, None),
    };

    let info = NodeInfo {
        api_addr: cfg.advertise.clone(),
        peer_addr: cfg.peer_advertise.clone(),
    };
    if let Some(backup) = &cfg.restore_from {
        let file =
            std::fs::File::open(backup).with_context(|| format!("opening {}", backup.display()))?;
        let same_cell = |txn: &storage::WriteTxn| match crate::identity::cell_of_accounts(txn) {
            Ok(Some(held)) if held != cfg.cell => Err(format!(
                "it holds cell {held}'s accounts: restore it as that cell (--cell {held}, \
                 with the cell's --jwt-keys-file so its tokens and quotes stay good)"
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(format!("reading its accounts: {e}")),
        };
        let r = raft::restore::restore_backup(
            &cfg.raft_dir(),
            cfg.node_id,
            info.clone(),
            file,
            same_cell,
        )
        .with_context(|| format!("restoring from {}", backup.display()))?;
        println!(
            "restored {} entries up to log index {} from {}",
            r.entries,
            r.applied_index,
            backup.display()
        );
    }
    let mut raft_config = NodeConfig::default_raft_config(&cfg.cell);
    raft_config.snapshot_policy = openraft::SnapshotPolicy::LogsSinceLast(cfg.raft_snapshot_every);
    raft_config.max_in_snapshot_log_to_keep = cfg.raft_keep_logs;
    let cache = if cfg.read_cache {
        Some(Arc::new(
            ReadCache::open(&CacheConfig {
                dir: cfg.cache_dir(),
                memory_bytes: 64 * 1024 * 1024,
                disk_bytes: 256 * 1024 * 1024,
            })
            .await?,
        ))
    } else {
        None
    };
    let read_models = Arc::new(ReadModels::new(cache.clone()));
    let app = Arc::new(CellApp::new(read_models.clone()));
    let (index_feed, search_rx) = crate::search_service::IndexFeed::new();
    app.set_search(index_feed.clone());
    let node = RaftNode::start(
        NodeConfig {
            id: cfg.node_id,
            data_dir: cfg.raft_dir(),
            info: info.clone(),
            raft: raft_config,
            peer_tls: peer_client_tls,
            peer_source_ip: cfg.peer_source_ip,
            write_timeout: Duration::from_secs(10),
            state_cache_bytes: cfg.state_cache_bytes,
        },
        app.clone(),
    )
    .await
    .context("starting raft")?;

    // Opening may rebuild the index from state: blocking work.
    let search = tokio::task::block_in_place(|| {
        crate::search_service::start(
            &cfg.data_dir.join("search"),
            node.clone(),
            index_feed.clone(),
            search_rx,
        )
    })
    .context("opening the search index")?;

    let peer_listener = TcpListener::bind(cfg.peer_listen)
        .await
        .with_context(|| format!("binding peer port {}", cfg.peer_listen))?;
    // Peers speak HTTP/2 only: nothing to pipeline.
    tokio::spawn(edge::tls::serve(
        peer_listener,
        raft::peer_router(node.clone()),
        peer_server_tls,
        Arc::from([]),
    ));

    if cfg.bootstrap && !node.is_initialized().await? {
        node.initialize(BTreeMap::from([(cfg.node_id, info)]))
            .await
            .context("initialising a single-node cluster")?;
        tracing::info!(node = cfg.node_id, "initialised a new single-node cell");
    }

    let metrics = Arc::new(Metrics::new());
    let dispatch = Arc::new(crate::dispatch::Dispatcher::default());
    dispatch.clone().start(
        node.clone(),
        cfg.cell.clone(),
        app.subscribe(),
        metrics.clone(),
    );
    let keys = Arc::new(keys);
    crate::webhooks::start(
        node.clone(),
        keys.clone(),
        cfg.webhook_private_targets,
        metrics.clone(),
    );
    let state = AppState::new(http::Shared {
        node: node.clone(),
        app: app.clone(),
        cfg: cfg.clone(),
        ops_token_hash: http::token_hash(&ops_token),
        keys,
        metrics,
        read_models,
        search,
        index_feed,
        inflight: Arc::new(Semaphore::new(MAX_INFLIGHT)),
        long_polls: Arc::new(Semaphore::new(cfg.max_long_polls)),
        limiter: Arc::new(edge::rate_limit::RateLimiter::new(cfg.limits)),
        dispatch: dispatch.clone(),
        verified: Arc::default(),
        request_timeout: http::DEFAULT_TIMEOUT,
        tls: api_tls.is_some(),
        graphql: http::graphql::schema(cfg.graphql_introspection),
        closed_now: Default::default(),
    });
    let api_listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("binding API port {}", cfg.listen))?;
    // Routers (the trusted proxies) pipeline their GETs.
    let pipelining: Arc<[std::net::IpAddr]> = Arc::from(cfg.trusted_proxies.as_slice());
    let api = tokio::spawn(edge::tls::serve(
        api_listener,
        http::router(state),
        api_tls,
        pipelining,
    ));

    println!(
        "cell {} node {} listening on {}://{} (peer port {})",
        cfg.cell,
        cfg.node_id,
        cfg.scheme(),
        cfg.listen,
        cfg.peer_listen
    );
    println!(
        "ops bootstrap token {} {}",
        if created { "written to" } else { "read from" },
        cfg.ops_token_file.display()
    );
    tracing::info!(cell = %cfg.cell, node = cfg.node_id, listen = %cfg.listen, peer = %cfg.peer_listen, "node started");

    tokio::select! {
        _ = shutdown_signal() => tracing::info!("shutting down"),
        r = api => tracing::error!(result = ?r, "API server stopped"),
    }
    node.shutdown().await;
    if let Some(cache) = cache {
        let _ = cache.close().await;
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
