use std::io;

/// Everything that can go wrong below the state machine.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database: {0}")]
    Db(#[from] redb::Error),
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("encoding a value: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    #[error("decoding a value: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    #[error("value has schema version {found}, this build reads {expected}")]
    SchemaVersion { found: u8, expected: u8 },
    #[error("empty value (no schema version byte)")]
    EmptyValue,
    #[error("snapshot stream is corrupt: {0}")]
    CorruptSnapshot(String),
    #[error("cache: {0}")]
    Cache(String),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StorageError {
            fn from(e: $t) -> Self {
                StorageError::Db(e.into())
            }
        }
    )*};
}

from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);
