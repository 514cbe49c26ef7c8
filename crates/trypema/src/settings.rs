//! Validated setting types. Each one can only hold a value the limiter can work with, so the
//! providers never re-check them on the hot path.

use crate::TrypemaError;

/// The longest window: long enough for any real limit, and short enough that every time and
/// TTL the scripts compute stays an exact whole number in Redis's doubles.
pub const MAX_WINDOW_SECONDS: u64 = 1_000_000_000;

/// The longest duration setting (about 31 years), for the same reason.
pub const MAX_DURATION_MS: u64 = 1_000_000_000_000;

/// Buckets a window is divided into at most: `rate_group_size_ms` is raised to
/// `ceil(window / MAX_WINDOW_BUCKETS)` when it is finer, so one key's state and the work of one
/// call stay bounded for every setting (the scripts also enforce a hard cap of 600 buckets).
pub const MAX_WINDOW_BUCKETS: u64 = 500;

macro_rules! whole_number_setting {
    ($(#[$doc:meta])* $name:ident, $error:ident, default = $default:expr, max = $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(u64);

        impl $name {
            /// Validates `value` (at least 1, at most the setting's maximum).
            pub fn new(value: u64) -> Result<Self, TrypemaError> {
                if (1..=$max).contains(&value) {
                    Ok(Self(value))
                } else {
                    Err(TrypemaError::$error(value))
                }
            }

            /// Like [`Self::new`], panicking on an invalid value; for constants.
            pub fn new_or_panic(value: u64) -> Self {
                Self::new(value).unwrap_or_else(|error| panic!("{error}"))
            }

            /// The wrapped value.
            pub fn get(self) -> u64 {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self($default)
            }
        }

        impl TryFrom<u64> for $name {
            type Error = TrypemaError;

            fn try_from(value: u64) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }
    };
}

macro_rules! real_number_setting {
    ($(#[$doc:meta])* $name:ident, $error:ident, valid = |$v:ident| $valid:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
        pub struct $name(f64);

        impl $name {
            /// Validates `value`.
            pub fn new($v: f64) -> Result<Self, TrypemaError> {
                if $valid {
                    Ok(Self($v))
                } else {
                    Err(TrypemaError::$error($v))
                }
            }

            /// Like [`Self::new`], panicking on an invalid value; for constants.
            pub fn new_or_panic(value: f64) -> Self {
                Self::new(value).unwrap_or_else(|error| panic!("{error}"))
            }

            /// The wrapped value.
            pub fn get(self) -> f64 {
                self.0
            }
        }

        impl TryFrom<f64> for $name {
            type Error = TrypemaError;

            fn try_from(value: f64) -> Result<Self, Self::Error> {
                Self::new(value)
            }
        }
    };
}

real_number_setting!(
    /// Allowed requests per second for a key: finite and greater than 0.
    RateLimit, InvalidRateLimit, valid = |value| value.is_finite() && value > 0.0
);

impl RateLimit {
    /// This rate times `factor` (the outage policy's per-instance share), kept above zero.
    #[cfg_attr(not(trypema_redis), allow(dead_code))]
    pub(crate) fn scaled(&self, factor: f64) -> Self {
        Self((self.0 * factor).max(f64::MIN_POSITIVE))
    }
}

real_number_setting!(
    /// Multiplier from the suppressed strategy's soft capacity to its hard ceiling: finite, ≥ 1.0.
    HardLimitFactor, InvalidHardLimitFactor, valid = |value| value.is_finite() && value >= 1.0
);

impl Default for HardLimitFactor {
    fn default() -> Self {
        Self(1.0)
    }
}

whole_number_setting!(
    /// Length of the sliding window in seconds (default 10).
    WindowSizeSeconds, InvalidWindowSize, default = 10, max = MAX_WINDOW_SECONDS
);

whole_number_setting!(
    /// Increments closer together than this many milliseconds share one bucket (default 100).
    RateGroupSizeMs, InvalidRateGroupSize, default = 100, max = MAX_DURATION_MS
);

whole_number_setting!(
    /// How long a computed suppression factor may be reused for a key (default 100 ms).
    SuppressionFactorCacheMs, InvalidSuppressionFactorCache, default = 100, max = MAX_DURATION_MS
);

whole_number_setting!(
    /// How often the hybrid provider reconciles its local state with Redis (default 10 ms).
    SyncIntervalMs, InvalidSyncInterval, default = 10, max = MAX_DURATION_MS
);

whole_number_setting!(
    /// How often the background cleanup looks for idle keys (default 10 s).
    CleanupIntervalMs, InvalidCleanupInterval, default = 10_000, max = MAX_DURATION_MS
);

whole_number_setting!(
    /// How long a key must be idle before cleanup drops its local state: at least the window
    /// (the default), since by then the key's window is empty and dropping it changes no
    /// decision; a shorter setting would forget counts that still apply, so `build()` rejects it.
    StaleAfterMs, InvalidStaleAfter, default = 10_000, max = MAX_DURATION_MS
);

whole_number_setting!(
    /// How long one Redis round trip may take before the call fails with
    /// `TRYPEMA_REDIS_TIMEOUT` (default 2000 ms). Hybrid calls that wait for Redis are bounded
    /// by it too.
    CommandTimeoutMs, InvalidCommandTimeout, default = 2_000, max = MAX_DURATION_MS
);

real_number_setting!(
    /// The share of a key's rate that the `'local'` outage policy allows in this process while
    /// Redis is unreachable (e.g. 1 / number of instances): finite, in (0, 1].
    LocalRateFactor, InvalidLocalRateFactor, valid = |value| value.is_finite() && value > 0.0 && value <= 1.0
);

impl Default for LocalRateFactor {
    fn default() -> Self {
        Self(1.0)
    }
}

/// What `redis` and `hybrid` calls do while Redis is unreachable (connection refused or lost,
/// timed out, or the circuit breaker open after such a failure).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnRedisError {
    /// Fail the call with the Redis error (`TRYPEMA_REDIS` / `TRYPEMA_REDIS_TIMEOUT`).
    #[default]
    Reject,
    /// Admit the call (fail open).
    Allow,
    /// Decide with an in-process limiter of the same settings, at `local_rate_factor` × rate.
    Local,
}
