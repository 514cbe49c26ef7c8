use thiserror::Error;

/// Every way a trypema call or setting can fail.
///
/// [`TrypemaError::code`] gives a stable machine-readable name for each variant; the Node binding
/// exposes it as `error.code`.
#[derive(Debug, Error)]
pub enum TrypemaError {
    #[error("invalid rate limit {0}: must be a finite number greater than 0")]
    InvalidRateLimit(f64),
    #[error("invalid window size {0} s: must be at least 1")]
    InvalidWindowSize(u64),
    #[error("invalid rate group size {0} ms: must be at least 1")]
    InvalidRateGroupSize(u64),
    #[error("invalid hard limit factor {0}: must be a finite number of at least 1.0")]
    InvalidHardLimitFactor(f64),
    #[error("invalid suppression factor cache duration {0} ms: must be at least 1")]
    InvalidSuppressionFactorCache(u64),
    #[error("invalid sync interval {0} ms: must be at least 1")]
    InvalidSyncInterval(u64),
    #[error("invalid cleanup interval {0} ms: must be at least 1")]
    InvalidCleanupInterval(u64),
    #[error("invalid stale-after duration {0} ms: must be at least 1")]
    InvalidStaleAfter(u64),
    #[error("invalid count {0}: must be a whole number from 0 to 2^53 - 1")]
    InvalidCount(f64),
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("invalid redis key: {0}")]
    InvalidRedisKey(String),
    #[error("invalid redis prefix: {0}")]
    InvalidRedisPrefix(String),
    #[error("this rate limiter was built without a Redis connection")]
    RedisNotConfigured,
    #[cfg(feature = "redis-tokio")]
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected result from a trypema redis script: {0}")]
    UnexpectedScriptResult(String),
}

impl TrypemaError {
    /// A stable name for the kind of error, e.g. `TRYPEMA_INVALID_RATE_LIMIT`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRateLimit(_) => "TRYPEMA_INVALID_RATE_LIMIT",
            Self::InvalidWindowSize(_) => "TRYPEMA_INVALID_WINDOW_SIZE",
            Self::InvalidRateGroupSize(_) => "TRYPEMA_INVALID_RATE_GROUP_SIZE",
            Self::InvalidHardLimitFactor(_) => "TRYPEMA_INVALID_HARD_LIMIT_FACTOR",
            Self::InvalidSuppressionFactorCache(_) => "TRYPEMA_INVALID_SUPPRESSION_FACTOR_CACHE",
            Self::InvalidSyncInterval(_) => "TRYPEMA_INVALID_SYNC_INTERVAL",
            Self::InvalidCleanupInterval(_) => "TRYPEMA_INVALID_CLEANUP_INTERVAL",
            Self::InvalidStaleAfter(_) => "TRYPEMA_INVALID_STALE_AFTER",
            Self::InvalidCount(_) => "TRYPEMA_INVALID_COUNT",
            Self::InvalidKey(_) => "TRYPEMA_INVALID_KEY",
            Self::InvalidRedisKey(_) => "TRYPEMA_INVALID_REDIS_KEY",
            Self::InvalidRedisPrefix(_) => "TRYPEMA_INVALID_REDIS_PREFIX",
            Self::RedisNotConfigured => "TRYPEMA_REDIS_NOT_CONFIGURED",
            #[cfg(feature = "redis-tokio")]
            Self::Redis(_) => "TRYPEMA_REDIS",
            Self::UnexpectedScriptResult(_) => "TRYPEMA_UNEXPECTED_SCRIPT_RESULT",
        }
    }
}
