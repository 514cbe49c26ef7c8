//! Validated setting types. Each one can only hold a value the limiter can work with, so the
//! providers never re-check them on the hot path.

use crate::TrypemaError;

macro_rules! whole_number_setting {
    ($(#[$doc:meta])* $name:ident, $error:ident, default = $default:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(u64);

        impl $name {
            /// Validates `value` (at least 1).
            pub fn new(value: u64) -> Result<Self, TrypemaError> {
                if value >= 1 {
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
    WindowSizeSeconds, InvalidWindowSize, default = 10
);

whole_number_setting!(
    /// Increments closer together than this many milliseconds share one bucket (default 100).
    RateGroupSizeMs, InvalidRateGroupSize, default = 100
);

whole_number_setting!(
    /// How long a computed suppression factor may be reused for a key (default 100 ms).
    SuppressionFactorCacheMs, InvalidSuppressionFactorCache, default = 100
);

whole_number_setting!(
    /// How often the hybrid provider reconciles its local state with Redis (default 10 ms).
    SyncIntervalMs, InvalidSyncInterval, default = 10
);

whole_number_setting!(
    /// How often the background cleanup looks for idle keys (default 10 s).
    CleanupIntervalMs, InvalidCleanupInterval, default = 10_000
);

whole_number_setting!(
    /// How long a key must be idle before cleanup drops its local state. The default is the
    /// window size: by then the key's window is empty, so dropping it changes no decision.
    StaleAfterMs, InvalidStaleAfter, default = 10_000
);
