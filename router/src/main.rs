use clap::Parser as _;

// A proxy allocates and frees small buffers on every request from several
// threads; mimalloc's per-thread free lists beat glibc malloc there.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use router::config::{load_or_create_token, Args, RouterConfig};
use router::state::RouterState;

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let threads = args.threads;
    let cfg = RouterConfig::resolve(args)?;
    init_tracing(cfg.log_json);
    edge::fd_limit::raise_fd_limit();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = threads {
        rt.worker_threads(n.max(1));
    }
    rt.build()?.block_on(async move {
        let token = load_or_create_token(&cfg.ops_token_file)?;
        let state = RouterState::new(cfg, token)?;
        router::server::run(state).await
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
