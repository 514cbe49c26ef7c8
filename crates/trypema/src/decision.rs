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
