use crate::{
    cleanup::Sweep,
    limiter::Settings,
    store::{KeyedStore, Tracked},
    window::SlidingWindow,
    RateLimit, RateLimitDecision,
};

/// Absolute strategy, in-process: at most `floor(window × rate)` per sliding window.
pub struct AbsoluteLocalRateLimiter {
    settings: Settings,
    store: KeyedStore<AbsoluteEntry>,
}

struct AbsoluteEntry {
    capacity: u64,
    window: SlidingWindow,
    last_seen_ms: u64,
}

impl Tracked for AbsoluteEntry {
    fn last_seen_ms(&self) -> u64 {
        self.last_seen_ms
    }
}

impl AbsoluteEntry {
    fn inc(
        &mut self,
        settings: &Settings,
        now_ms: u64,
        rate: &RateLimit,
        count: u64,
    ) -> RateLimitDecision {
        self.window.evict(now_ms, settings.window_ms);
        self.last_seen_ms = now_ms;
        if self.window.is_empty() {
            // The key's state has fully expired, so the rate it was created with no longer sticks.
            self.capacity = settings.capacity(rate);
        }
        match self.window.observed().checked_add(count) {
            Some(total) if total <= self.capacity => {
                self.window.record(now_ms, settings.group_ms, count);
                RateLimitDecision::Allowed
            }
            _ => self.window.rejection(now_ms, settings.window_ms),
        }
    }

    fn is_allowed(&mut self, settings: &Settings, now_ms: u64) -> RateLimitDecision {
        self.window.evict(now_ms, settings.window_ms);
        if self.window.is_empty() || self.window.observed() < self.capacity {
            RateLimitDecision::Allowed
        } else {
            self.window.rejection(now_ms, settings.window_ms)
        }
    }
}

impl AbsoluteLocalRateLimiter {
    pub(crate) fn new(settings: Settings) -> Self {
        Self {
            settings,
            store: KeyedStore::default(),
        }
    }

    /// Records `count` for `key` and returns `Allowed`, or records nothing and returns
    /// `Rejected` if that would take the window over capacity.
    #[inline]
    pub fn inc(&self, key: &str, rate: &RateLimit, count: u64) -> RateLimitDecision {
        let settings = &self.settings;
        let now_ms = settings.clock.now_ms();
        self.store.update(
            key,
            || AbsoluteEntry {
                capacity: settings.capacity(rate),
                window: SlidingWindow::default(),
                last_seen_ms: now_ms,
            },
            |entry| entry.inc(settings, now_ms, rate, count),
        )
    }

    /// Whether one more call would currently be admitted; records nothing.
    #[inline]
    pub fn is_allowed(&self, key: &str) -> RateLimitDecision {
        let now_ms = self.settings.clock.now_ms();
        self.store
            .update_existing(key, |entry| entry.is_allowed(&self.settings, now_ms))
            .unwrap_or(RateLimitDecision::Allowed)
    }

    pub(crate) fn window_size_seconds(&self) -> u64 {
        self.settings.window.get()
    }

    /// How many keys currently have local state.
    pub fn key_count(&self) -> usize {
        self.store.len()
    }
}

impl Sweep for AbsoluteLocalRateLimiter {
    fn sweep(&self) {
        self.store
            .drop_idle(self.settings.clock.now_ms(), self.settings.stale_after_ms);
    }
}
