//! Hot reload: plugin files are polled, and a changed file is loaded and swapped in (see
//! `Inner::refresh`). Polling the metadata of a few files is cheap and works on every
//! filesystem, including the bind mounts and network shares inotify misses.

use std::path::Path;
use std::sync::Weak;
use std::time::{Duration, SystemTime};

use crate::Inner;
use crate::error::{Error, Result};

/// What says a file changed: its modification time, length and inode (a file replaced by
/// a rename keeps neither).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Stamp {
    /// `None` when the file cannot be read (missing): a change too, once it appears.
    pub fn of(path: &Path) -> Option<Stamp> {
        let meta = std::fs::metadata(path).ok()?;
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let inode = 0;
        Some(Stamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode,
        })
    }
}

/// Starts the watcher thread; it ends when the host is dropped.
pub(crate) fn start(host: Weak<Inner>, every: Duration) -> Result<()> {
    std::thread::Builder::new()
        .name("plugin-watch".to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                let Some(inner) = host.upgrade() else { return };
                for slot in inner.slots.values() {
                    inner.refresh(slot, false);
                }
            }
        })
        .map_err(|source| Error::Thread {
            what: "watch",
            source,
        })?;
    Ok(())
}
