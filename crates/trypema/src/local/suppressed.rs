use std::sync::Arc;

use crate::{
    cleanup::Sweep,
    limiter::Settings,
    metrics::{Metrics, Provider, Strategy},
    store::{KeyedStore, Tracked},
    suppression::SuppressionLimits,
    window::SlidingWindow,
    Quota, QuotaDecision, RateLimit, RateLimitDecision,
};

/// Suppressed strategy, in-process: above `window × rate` admitted calls, sheds calls at random
/// with a probability that grows with the offered load; above the hard ceiling sheds them all.
pub struct SuppressedLocalRateLimiter {
    settings: Settings,
    store: KeyedStore<SuppressedEntry>,
    metrics: Arc<Metrics>,
}

struct SuppressedEntry {
    limits: SuppressionLimits,
    window: SlidingWindow,
    cached_shedding: f64,
    shedding_valid_until_ms: u64,
    last_seen_ms: u64,
}

impl Tracked for SuppressedEntry {
    fn last_seen_ms(&self) -> u64 {
        self.last_seen_ms
    }
}

impl SuppressedEntry {
    fn new(settings: &Settings, rate: &RateLimit, now_ms: u64) -> Self {
        Self {
            limits: settings.suppression_limits(rate),
            window: SlidingWindow::default(),
            cached_shedding: 0.0,
            shedding_valid_until_ms: 0,
            last_seen_ms: now_ms,
        }
    }

    /// The factor seen by a call when `accepted` calls are admitted in the window.
    fn factor(&mut self, settings: &Settings, now_ms: u64, accepted: u64) -> f64 {
        let (limits, window) = (&self.limits, &self.window);
        let (cached, valid_until) = (&mut self.cached_shedding, &mut self.shedding_valid_until_ms);
        limits.factor(accepted, || {
            if now_ms >= *valid_until {
                *cached = limits.shedding_factor(window, now_ms);
                *valid_until = now_ms + settings.suppression_cache_ms;
            }
            *cached
        })
    }

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
            self.limits = settings.suppression_limits(rate);
            self.shedding_valid_until_ms = 0;
        }
        let accepted = self.window.accepted();
        let admitted_if_allowed = accepted.saturating_add(count) as f64;
        self.window.record(now_ms, settings.group_ms, count);
        if admitted_if_allowed <= self.limits.soft {
            return RateLimitDecision::Allowed;
        }
        let (suppression_factor, is_allowed) = if admitted_if_allowed > self.limits.hard {
            // Admitting this call would break the hard ceiling, whatever the factor says.
            (1.0, false)
        } else {
            let factor = self.factor(settings, now_ms, accepted);
            (factor, rand::random::<f64>() >= factor)
        };
        if !is_allowed {
            self.window.decline_newest(count);
        }
        RateLimitDecision::Suppressed {
            suppression_factor,
            is_allowed,
        }
    }

    fn quota(&self, settings: &Settings, now_ms: u64) -> Quota {
        Quota {
            limit: self.limits.soft,
            remaining: (self.limits.soft - self.window.accepted() as f64).max(0.0) as u64,
            reset_ms: self.window.reset_ms(now_ms, settings.window_ms),
        }
    }
}

impl SuppressedLocalRateLimiter {
    pub(crate) fn new(settings: Settings, metrics: Arc<Metrics>) -> Self {
        Self {
            settings,
            store: KeyedStore::default(),
            metrics,
        }
    }

    /// Records `count` as observed for `key` and decides whether to admit it.
    #[inline]
    pub fn inc(&self, key: &str, rate: &RateLimit, count: u64) -> RateLimitDecision {
        self.inc_then(key, rate, count, |_, _, _| ()).0
    }

    /// Like [`Self::inc`], and also returns the key's quota after the call (`limit` is the soft
    /// capacity).
    pub fn inc_with_quota(&self, key: &str, rate: &RateLimit, count: u64) -> QuotaDecision {
        let (decision, quota) = self.inc_then(key, rate, count, SuppressedEntry::quota);
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
        then: impl FnOnce(&SuppressedEntry, &Settings, u64) -> T,
    ) -> (RateLimitDecision, T) {
        let settings = &self.settings;
        let now_ms = settings.clock.now_ms();
        let mut then = Some(then);
        let mut decide = |entry: &mut SuppressedEntry| {
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
                    let fresh = SuppressedEntry::new(settings, rate, now_ms);
                    (RateLimitDecision::Allowed, then(&fresh, settings, now_ms))
                })
        } else {
            self.store
                .update(key, || SuppressedEntry::new(settings, rate, now_ms), decide)
        };
        self.metrics
            .decision(Provider::Local, Strategy::Suppressed, &outcome.0, false);
        outcome
    }

    /// The key's quota against its soft capacity (for a key without state, from `rate`);
    /// records nothing.
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
                let soft = settings.suppression_limits(rate).soft;
                Quota {
                    limit: soft,
                    remaining: soft as u64,
                    reset_ms: 0,
                }
            })
    }

    /// Takes back up to `count` admitted units, newest first; returns how many.
    pub fn refund(&self, key: &str, count: u64) -> u64 {
        let now_ms = self.settings.clock.now_ms();
        self.store
            .update_existing(key, |entry| {
                // Units that already left the window cannot be taken back.
                entry.window.evict(now_ms, self.settings.window_ms);
                let refunded = entry.window.refund(count);
                entry.window.evict(now_ms, self.settings.window_ms);
                entry.shedding_valid_until_ms = 0;
                refunded
            })
            .unwrap_or(0)
    }

    /// Forgets the key's state.
    pub fn reset(&self, key: &str) {
        self.store.remove(key);
    }

    /// The key's current suppression factor (0 for a key with no state); records nothing.
    pub fn get_suppression_factor(&self, key: &str) -> f64 {
        let now_ms = self.settings.clock.now_ms();
        self.store
            .update_existing(key, |entry| {
                entry.window.evict(now_ms, self.settings.window_ms);
                let accepted = entry.window.accepted();
                entry.factor(&self.settings, now_ms, accepted)
            })
            .unwrap_or(0.0)
    }

    /// How many keys currently have local state.
    pub fn key_count(&self) -> usize {
        self.store.len()
    }
}

impl Sweep for SuppressedLocalRateLimiter {
    fn sweep(&self) {
        self.store
            .drop_idle(self.settings.clock.now_ms(), self.settings.stale_after_ms);
    }
}
