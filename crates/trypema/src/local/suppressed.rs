use crate::{
    cleanup::Sweep,
    limiter::Settings,
    store::{KeyedStore, Tracked},
    suppression::SuppressionLimits,
    window::SlidingWindow,
    RateLimit, RateLimitDecision,
};

/// Suppressed strategy, in-process: above `window × rate` admitted calls, sheds calls at random
/// with a probability that grows with the offered load; above the hard ceiling sheds them all.
pub struct SuppressedLocalRateLimiter {
    settings: Settings,
    store: KeyedStore<SuppressedEntry>,
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
}

impl SuppressedLocalRateLimiter {
    pub(crate) fn new(settings: Settings) -> Self {
        Self {
            settings,
            store: KeyedStore::default(),
        }
    }

    /// Records `count` as observed for `key` and decides whether to admit it.
    #[inline]
    pub fn inc(&self, key: &str, rate: &RateLimit, count: u64) -> RateLimitDecision {
        let settings = &self.settings;
        let now_ms = settings.clock.now_ms();
        self.store.update(
            key,
            || SuppressedEntry::new(settings, rate, now_ms),
            |entry| entry.inc(settings, now_ms, rate, count),
        )
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
