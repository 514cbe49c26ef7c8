//! The suppressed strategy's arithmetic, shared by every provider that decides locally.

use crate::window::SlidingWindow;

/// Soft and hard capacity of one key, fixed by its sticky rate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SuppressionLimits {
    pub(crate) rate: f64,
    pub(crate) window_seconds: f64,
    pub(crate) soft: f64,
    pub(crate) hard: f64,
}

impl SuppressionLimits {
    pub(crate) fn new(rate: f64, window_seconds: u64, hard_limit_factor: f64) -> Self {
        let window_seconds = window_seconds as f64;
        let soft = window_seconds * rate;
        Self {
            rate,
            window_seconds,
            soft,
            hard: soft * hard_limit_factor,
        }
    }

    /// `1 − rate / perceived_rate`, clamped, where the perceived rate is the larger of the
    /// window average and the last second's count. This is the part worth caching.
    pub(crate) fn shedding_factor(&self, window: &SlidingWindow, now_ms: u64) -> f64 {
        let average = window.observed() as f64 / self.window_seconds;
        // The last second is the buckets with now - start < 1000. Before the first full second
        // every bucket qualifies; `saturating_sub` would leave out the ones that started at 0.
        let last_second = match now_ms.checked_sub(1000) {
            Some(after_ms) => window.observed_after(after_ms),
            None => window.observed(),
        } as f64;
        let perceived = average.max(last_second);
        if perceived <= 0.0 {
            return 0.0;
        }
        (1.0 - self.rate / perceived).clamp(0.0, 1.0)
    }

    /// The factor callers see: 0 below the soft capacity, 1 at the hard ceiling, else shedding.
    pub(crate) fn factor(&self, accepted: u64, shedding: impl FnOnce() -> f64) -> f64 {
        let accepted = accepted as f64;
        if accepted < self.soft {
            0.0
        } else if accepted >= self.hard {
            1.0
        } else {
            shedding()
        }
    }
}
