/// The outcome of an `inc` or `is_allowed` call.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RateLimitDecision {
    /// The call is within the limit (and, for `inc`, was recorded).
    Allowed,
    /// Absolute strategy: the limit is reached; nothing was recorded.
    Rejected {
        /// The window the limit applies to.
        window_size_seconds: u64,
        /// Milliseconds until the oldest counted bucket leaves the window.
        retry_after_ms: u64,
        /// What the window will hold once that bucket has left.
        remaining_after_waiting: u64,
    },
    /// Suppressed strategy: the key is over its soft capacity, so calls are shed at random.
    Suppressed {
        /// Probability in `[0, 1]` that a call is declined right now.
        suppression_factor: f64,
        /// Whether this call was admitted.
        is_allowed: bool,
    },
}

impl RateLimitDecision {
    /// Whether the caller may go ahead: `Allowed`, or `Suppressed` with `is_allowed`.
    pub fn is_allowed(&self) -> bool {
        match self {
            Self::Allowed => true,
            Self::Rejected { .. } => false,
            Self::Suppressed { is_allowed, .. } => *is_allowed,
        }
    }
}

/// A key's quota in one strategy: what `get` reports and `inc_with_quota` adds to a decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    /// The capacity: `floor(window × rate)` for absolute, the soft capacity `window × rate` for
    /// suppressed (the key's sticky rate when it has state).
    pub limit: f64,
    /// What is left of the limit: `limit − recorded`, never below 0, rounded down.
    pub remaining: u64,
    /// Milliseconds until the oldest recorded bucket leaves the window (0 without state).
    pub reset_ms: u64,
}

impl Quota {
    /// All of `limit` left, nothing recorded.
    #[cfg_attr(not(trypema_redis), allow(dead_code))]
    pub(crate) fn full(limit: f64) -> Self {
        Self {
            limit,
            remaining: limit.max(0.0) as u64,
            reset_ms: 0,
        }
    }
}

/// The outcome of `inc_with_quota`: the decision `inc` would return, with the quota after it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuotaDecision {
    pub decision: RateLimitDecision,
    pub quota: Quota,
    /// Decided by the outage policy while Redis was unreachable, not by the shared state.
    pub degraded: bool,
}
