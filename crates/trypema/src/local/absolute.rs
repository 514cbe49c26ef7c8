use std::sync::Arc;

use crate::{
    cleanup::Sweep,
    limiter::Settings,
    metrics::{Metrics, Provider, Strategy},
    store::{KeyedStore, Tracked},
    window::SlidingWindow,
    Quota, QuotaDecision, RateLimit, RateLimitDecision,
};

/// Absolute strategy, in-process: at most `floor(window × rate)` per sliding window.
pub struct AbsoluteLocalRateLimiter {
    settings: Settings,
    store: KeyedStore<AbsoluteEntry>,
    metrics: Arc<Metrics>,
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
            _ => self
                .window
                .rejection(now_ms, settings.window_ms, count <= self.capacity),
        }
    }

    fn is_allowed(&mut self, settings: &Settings, now_ms: u64) -> RateLimitDecision {
        self.window.evict(now_ms, settings.window_ms);
        if self.window.is_empty() || self.window.observed() < self.capacity {
            RateLimitDecision::Allowed
        } else {
            self.window.rejection(now_ms, settings.window_ms, true)
        }
    }

    fn quota(&self, settings: &Settings, now_ms: u64) -> Quota {
        Quota {
            limit: self.capacity as f64,
            remaining: self.capacity.saturating_sub(self.window.observed()),
            reset_ms: self.window.reset_ms(now_ms, settings.window_ms),
        }
    }
}

impl AbsoluteLocalRateLimiter {
    pub(crate) fn new(settings: Settings, metrics: Arc<Metrics>) -> Self {
        Self {
            settings,
            store: KeyedStore::default(),
            metrics,
        }
    }

    /// Records `count` for `key` and returns `Allowed`, or records nothing and returns
    /// `Rejected` if that would take the window over capacity.
    #[inline]
    pub fn inc(&self, key: &str, rate: &RateLimit, count: u64) -> RateLimitDecision {
        self.inc_then(key, rate, count, |_, _, _| ()).0
    }

    /// Like [`Self::inc`], and also returns the key's quota after the call.
    pub fn inc_with_quota(&self, key: &str, rate: &RateLimit, count: u64) -> QuotaDecision {
        let (decision, quota) = self.inc_then(key, rate, count, AbsoluteEntry::quota);
        QuotaDecision {
            decision,
            quota,
            degraded: false,
        }
    }

    #[inline]
    fn inc_then<T>(
        &self,
        key: &str,
        rate: &RateLimit,
        count: u64,
        then: impl FnOnce(&AbsoluteEntry, &Settings, u64) -> T,
    ) -> (RateLimitDecision, T) {
        let settings = &self.settings;
        let now_ms = settings.clock.now_ms();
        let mut then = Some(then);
        let mut decide = |entry: &mut AbsoluteEntry| {
            let decision = entry.inc(settings, now_ms, rate, count);
            let then = then.take().expect("decided once");
            (decision, then(entry, settings, now_ms))
        };
        let outcome = if count == 0 {
            // A count of 0 records nothing, so it creates no state either.
            self.store
                .update_existing(key, &mut decide)
                .unwrap_or_else(|| {
                    let then = then.take().expect("decided once");
                    let fresh = AbsoluteEntry {
                        capacity: settings.capacity(rate),
                        window: SlidingWindow::default(),
                        last_seen_ms: now_ms,
                    };
                    (RateLimitDecision::Allowed, then(&fresh, settings, now_ms))
                })
        } else {
            self.store.update(
                key,
                || AbsoluteEntry {
                    capacity: settings.capacity(rate),
                    window: SlidingWindow::default(),
                    last_seen_ms: now_ms,
                },
                decide,
            )
        };
        self.metrics
            .decision(Provider::Local, Strategy::Absolute, &outcome.0, false);
        outcome
    }

    /// The key's quota (for a key without state, from `rate`); records nothing.
    pub fn get(&self, key: &str, rate: &RateLimit) -> Quota {
        let settings = &self.settings;
        let now_ms = settings.clock.now_ms();
        self.store
            .update_existing(key, |entry| {
                entry.window.evict(now_ms, settings.window_ms);
                (!entry.window.is_empty()).then(|| entry.quota(settings, now_ms))
            })
            .flatten()
            .unwrap_or_else(|| {
                let capacity = settings.capacity(rate);
                Quota {
                    limit: capacity as f64,
                    remaining: capacity,
                    reset_ms: 0,
                }
            })
    }

    /// Takes back up to `count` recorded units, newest first; returns how many.
    pub fn refund(&self, key: &str, count: u64) -> u64 {
        let now_ms = self.settings.clock.now_ms();
        self.store
            .update_existing(key, |entry| {
                // Units that already left the window cannot be taken back.
                entry.window.evict(now_ms, self.settings.window_ms);
                let refunded = entry.window.refund(count);
                entry.window.evict(now_ms, self.settings.window_ms);
                refunded
            })
            .unwrap_or(0)
    }

    /// Forgets the key's state.
    pub fn reset(&self, key: &str) {
        self.store.remove(key);
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
