//! The one error type of the search crate.

/// Everything that can go wrong while indexing or searching.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// An error reported by tantivy (index, writer, reader, query).
    #[error("tantivy: {0}")]
    Tantivy(#[from] tantivy::TantivyError),
    /// The index directory could not be opened.
    #[error("opening index directory: {0}")]
    OpenDirectory(#[from] tantivy::directory::error::OpenDirectoryError),
    /// Filesystem error (creating the index directory).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A structurally invalid query (non-finite coordinates, negative radius…).
    /// Free text never produces this error.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// The commit payload is not a log index.
    #[error("commit payload is not a log index: {0:?}")]
    BadPayload(String),
    /// The search panicked on its worker and has no result.
    #[error("the search ended without a result")]
    Interrupted,
    /// A writer panicked while holding the writer lock.
    #[error("index writer lock poisoned")]
    Poisoned,
}
