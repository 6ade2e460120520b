//! Delivery errors.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] mailhook_store::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
