//! Store errors.

/// What went wrong in the store. Callers map `Unavailable` and `Closed` to 503.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("store is unavailable: {0}")]
    Unavailable(String),
    #[error("store is closed")]
    Closed,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
