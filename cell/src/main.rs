// Requests, Raft batches and redb transactions allocate and free many small
// buffers across the worker threads; glibc malloc spent a fifth of a
// checkout's CPU in malloc/free, mimalloc's per-thread free lists far less.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let args = cell::config::Args::parse();
    let cfg = cell::config::CellConfig::resolve(args)?;
    let threads = cfg.threads;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn,foyer_storage=warn,foyer=warn"));
    if cfg.log_json {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .json()
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads.filter(|n| *n > 0) {
        builder.worker_threads(n);
    }
    // Every waiting long poll holds a socket.
    edge::fd_limit::raise_fd_limit();
    let runtime = builder.enable_all().thread_name("cell").build()?;
    runtime.block_on(cell::server::run(cfg))
}
