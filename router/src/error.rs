use std::path::{Path, PathBuf};

/// Everything the router library can fail with outside a request (requests
/// fail with a `Problem`, see `problem`).
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration: {0}")]
    Config(String),
    #[error("invalid region {name:?}: {why}")]
    InvalidRegion { name: String, why: String },
    #[error("region directory {}: {why}", path.display())]
    Directory { path: PathBuf, why: String },
    #[error("TLS: {0}")]
    Tls(String),
}

impl RouterError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        RouterError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
