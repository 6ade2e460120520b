//! The binary's exit codes: each way a start can fail that an operator (or a supervisor
//! deciding whether to restart) must tell apart gets its own code.

use mailhook_store::Error as StoreError;

/// The gateway ran and stopped cleanly.
pub const OK: u8 = 0;
/// Any other failure (a port in use, a bad TLS file, a store error that is neither below).
pub const FAILURE: u8 = 1;
/// The config could not be loaded or is invalid; the message names the key.
pub const CONFIG: u8 = 2;
/// Another mailhook process holds the data directory's lock.
pub const DATA_DIR_IN_USE: u8 = 3;
/// The store's data is damaged (a SQLite file that is not a database or fails its checks).
/// Restarting cannot help: restore it from a backup or move it away.
pub const STORE_CORRUPT: u8 = 4;
/// The store cannot be opened or read now (permissions, a directory in the file's place, a
/// full or failing disk, a database server out of reach). Restarting later may help.
pub const STORE_UNAVAILABLE: u8 = 5;
/// A second SIGTERM or Ctrl-C ended the shutdown early.
pub const INTERRUPTED: u8 = 130;

/// Another mailhook process holds the lock of `data_dir`.
#[derive(Debug)]
pub struct DataDirInUse {
    pub data_dir: String,
    pub lock_file: String,
}

impl std::fmt::Display for DataDirInUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "data_dir `{}` is in use by another mailhook process (lock file {})",
            self.data_dir, self.lock_file
        )
    }
}

impl std::error::Error for DataDirInUse {}

/// The exit code for an error that stopped the start.
pub fn for_start_error(err: &anyhow::Error) -> u8 {
    for cause in err.chain() {
        if cause.downcast_ref::<DataDirInUse>().is_some() {
            return DATA_DIR_IN_USE;
        }
        match cause.downcast_ref::<StoreError>() {
            Some(StoreError::Corrupt(_)) => return STORE_CORRUPT,
            Some(StoreError::Unavailable(_)) => return STORE_UNAVAILABLE,
            _ => {}
        }
    }
    FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn each_start_failure_has_its_code() {
        let cases = [
            (
                anyhow::Error::new(DataDirInUse {
                    data_dir: "d".into(),
                    lock_file: "d/mailhook.lock".into(),
                }),
                DATA_DIR_IN_USE,
            ),
            (
                Err::<(), _>(StoreError::Corrupt("file is not a database".into()))
                    .context("cannot open the SQLite store")
                    .unwrap_err(),
                STORE_CORRUPT,
            ),
            (
                Err::<(), _>(StoreError::Unavailable(
                    "unable to open database file".into(),
                ))
                .context("cannot open the SQLite store")
                .unwrap_err(),
                STORE_UNAVAILABLE,
            ),
            (anyhow::anyhow!("cannot listen on 127.0.0.1:1"), FAILURE),
        ];
        for (err, code) in cases {
            assert_eq!(for_start_error(&err), code, "{err:#}");
        }
    }
}
