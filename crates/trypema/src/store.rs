//! Concurrent per-key state for the providers that decide in-process.

use dashmap::DashMap;

/// Per-key state that remembers when it was last used, so cleanup can find idle keys.
pub(crate) trait Tracked {
    fn last_seen_ms(&self) -> u64;
}

pub(crate) struct KeyedStore<E> {
    entries: DashMap<Box<str>, E, ahash::RandomState>,
}

impl<E> Default for KeyedStore<E> {
    fn default() -> Self {
        Self {
            entries: DashMap::with_hasher(ahash::RandomState::new()),
        }
    }
}

impl<E> KeyedStore<E> {
    /// Runs `update` on the key's state, creating it with `create` first if the key is new.
    /// The shard stays write-locked for the duration, which is what makes a decision atomic.
    #[inline]
    pub(crate) fn update<R>(
        &self,
        key: &str,
        create: impl FnOnce() -> E,
        update: impl FnOnce(&mut E) -> R,
    ) -> R {
        if let Some(mut entry) = self.entries.get_mut(key) {
            return update(&mut entry);
        }
        let mut entry = self.entries.entry(Box::from(key)).or_insert_with(create);
        update(&mut entry)
    }

    /// Runs `update` on the key's state if it has any.
    #[inline]
    pub(crate) fn update_existing<R>(
        &self,
        key: &str,
        update: impl FnOnce(&mut E) -> R,
    ) -> Option<R> {
        self.entries
            .get_mut(key)
            .map(|mut entry| update(&mut entry))
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn remove(&self, key: &str) {
        self.entries.remove(key);
    }

    /// Gives memory back after a sweep removed most keys: a map keeps its capacity otherwise,
    /// so a burst of two million keys would hold its memory for the life of the process.
    pub(crate) fn shrink_if_sparse(&self) {
        if self.entries.capacity() > 1024 && self.entries.len() * 4 < self.entries.capacity() {
            self.entries.shrink_to_fit();
        }
    }
}

impl<E: Tracked> KeyedStore<E> {
    /// Drops every key idle for longer than `stale_after_ms`.
    pub(crate) fn drop_idle(&self, now_ms: u64, stale_after_ms: u64) {
        self.entries
            .retain(|_, entry| now_ms.saturating_sub(entry.last_seen_ms()) <= stale_after_ms);
        self.shrink_if_sparse();
    }
}
