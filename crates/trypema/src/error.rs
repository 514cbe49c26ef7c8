use thiserror::Error;

/// Every way a trypema call or setting can fail.
///
/// [`TrypemaError::code`] gives a stable machine-readable name for each variant; the Node binding
/// exposes it as `error.code`. Messages never contain credentials.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum TrypemaError {
    #[error("invalid rate limit {0}: must be a finite number greater than 0")]
    InvalidRateLimit(f64),
    #[error("invalid window size {0} s: must be a whole number from 1 to {max}", max = crate::settings::MAX_WINDOW_SECONDS)]
    InvalidWindowSize(u64),
    #[error("invalid rate group size {0} ms: must be at least 1 and at most the window")]
    InvalidRateGroupSize(u64),
    #[error("invalid hard limit factor {0}: must be a finite number of at least 1.0")]
    InvalidHardLimitFactor(f64),
    #[error("invalid suppression factor cache duration {0} ms: must be from 1 to {max}", max = crate::settings::MAX_DURATION_MS)]
    InvalidSuppressionFactorCache(u64),
    #[error("invalid sync interval {0} ms: must be at least 1 and at most the window")]
    InvalidSyncInterval(u64),
    #[error("invalid cleanup interval {0} ms: must be from 1 to {max}", max = crate::settings::MAX_DURATION_MS)]
    InvalidCleanupInterval(u64),
    #[error("invalid stale-after duration {0} ms: must be at least the window and at most {max}", max = crate::settings::MAX_DURATION_MS)]
    InvalidStaleAfter(u64),
    #[error("invalid command timeout {0} ms: must be from 1 to {max}", max = crate::settings::MAX_DURATION_MS)]
    InvalidCommandTimeout(u64),
    #[error("invalid local rate factor {0}: must be a finite number greater than 0 and at most 1")]
    InvalidLocalRateFactor(f64),
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
    /// Redis could not be reached (refused, reset, not connected, circuit open).
    #[error("redis is unreachable: {0}")]
    RedisConnection(String),
    /// Redis answered with an error (out of memory, read-only replica, wrong type, ...).
    #[error("redis error: {0}")]
    Redis(String),
    /// No answer within the command timeout (its milliseconds; 0 when the connection's own
    /// response timeout fired first): the call may still have been executed and counted.
    #[error("{}", timeout_message(*.0))]
    RedisTimeout(u64),
    /// Redis refused the credentials or the user lacks a permission the scripts need.
    #[error("redis refused access: {0}")]
    RedisAuth(String),
    /// The limiter was closed.
    #[error("this rate limiter has been closed")]
    Closed,
    #[error("unexpected result from a trypema redis script: {0}")]
    UnexpectedScriptResult(String),
    /// A failure inside trypema itself (a background thread that could not start, a panic).
    #[error("internal error: {0}")]
    Internal(String),
}

fn timeout_message(ms: u64) -> String {
    match ms {
        0 => "redis did not answer within the connection's response timeout; the call may have \
              been counted"
            .into(),
        ms => format!("redis did not answer within {ms} ms; the call may have been counted"),
    }
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
            Self::InvalidCommandTimeout(_) => "TRYPEMA_INVALID_COMMAND_TIMEOUT",
            Self::InvalidLocalRateFactor(_) => "TRYPEMA_INVALID_LOCAL_RATE_FACTOR",
            Self::InvalidCount(_) => "TRYPEMA_INVALID_COUNT",
            Self::InvalidKey(_) => "TRYPEMA_INVALID_KEY",
            Self::InvalidRedisKey(_) => "TRYPEMA_INVALID_REDIS_KEY",
            Self::InvalidRedisPrefix(_) => "TRYPEMA_INVALID_REDIS_PREFIX",
            Self::RedisNotConfigured => "TRYPEMA_REDIS_NOT_CONFIGURED",
            Self::RedisConnection(_) | Self::Redis(_) => "TRYPEMA_REDIS",
            Self::RedisTimeout(_) => "TRYPEMA_REDIS_TIMEOUT",
            Self::RedisAuth(_) => "TRYPEMA_REDIS_AUTH",
            Self::Closed => "TRYPEMA_CLOSED",
            Self::UnexpectedScriptResult(_) => "TRYPEMA_UNEXPECTED_SCRIPT_RESULT",
            Self::Internal(_) => "TRYPEMA_INTERNAL",
        }
    }

    /// Whether Redis itself is unavailable (as opposed to answering with an error): what the
    /// outage policy and the circuit breaker act on.
    pub fn is_outage(&self) -> bool {
        matches!(self, Self::RedisConnection(_) | Self::RedisTimeout(_))
    }
}
