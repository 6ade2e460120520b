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
    /// The backend does not implement this call (yet); the API answers 501.
    #[error("this store does not support {0}")]
    Unsupported(String),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A PostgreSQL error that is not about reaching the server (those are `Unavailable`,
    /// see `postgres::classify`): a bug or a schema that is not ours.
    #[error("postgres: {0}")]
    Postgres(#[source] tokio_postgres::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
