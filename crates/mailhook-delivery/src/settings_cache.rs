//! Account settings as the dispatcher reads them: cached, so a burst of events for one
//! account costs one store read, and dropped on every change this node makes. Entries also
//! expire after `ttl`, so a change made through another node is seen within it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailhook_core::AccountId;
use mailhook_store::{Result, Store, StoredSettings};
use tokio::time::Instant;

/// Accounts cached at most; past it the cache is cleared (cheap, and bounded).
const ENTRIES_MAX: usize = 10_000;

/// When an entry was read, and what was read (`None`: never saved).
type Entry = (Instant, Option<Arc<StoredSettings>>);

pub struct SettingsCache {
    store: Arc<dyn Store>,
    ttl: Duration,
    entries: Mutex<HashMap<String, Entry>>,
}

impl SettingsCache {
    pub fn new(store: Arc<dyn Store>, ttl: Duration) -> SettingsCache {
        SettingsCache {
            store,
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub async fn get(&self, account: &AccountId) -> Result<Option<Arc<StoredSettings>>> {
        if let Some((at, settings)) = self.lock().get(account.as_str())
            && at.elapsed() < self.ttl
        {
            return Ok(settings.clone());
        }
        let settings = self.store.get_settings(account).await?.map(Arc::new);
        let mut entries = self.lock();
        if entries.len() >= ENTRIES_MAX {
            entries.clear();
        }
        entries.insert(
            account.as_str().to_owned(),
            (Instant::now(), settings.clone()),
        );
        Ok(settings)
    }

    /// Forgets an account's settings after they changed.
    pub fn invalidate(&self, account: &AccountId) {
        self.lock().remove(account.as_str());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding this lock cannot leave the map half-updated.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
