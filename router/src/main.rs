use clap::Parser as _;

// A proxy allocates and frees small buffers on every request from several
// threads; mimalloc's per-thread free lists beat glibc malloc there.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use router::config::{load_or_create_token, Args, RouterConfig};
use router::state::RouterState;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let cfg = RouterConfig::resolve(args)?;
    init_tracing(cfg.log_json);
    edge::fd_limit::raise_fd_limit();
    let loops = cfg.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    // Client connections run on their own event loops (`router::loops`);
    // this runtime only accepts and does the background work.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            let token = load_or_create_token(&cfg.ops_token_file)?;
            let state = RouterState::new(cfg, token)?;
            router::server::run(state, loops).await
        })
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        b.json().init();
    } else {
        b.init();
    }
}
