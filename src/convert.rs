//! Conversions between JavaScript values and the core crate's types.

use napi::{bindgen_prelude::FromNapiValue, sys, Error};
use napi_derive::napi;
use trypema::{OnRedisError, RateLimit, RateLimitDecision, RateLimiterBuilder, TrypemaError};

/// Errors reach JavaScript as `Error` objects whose `code` is the core crate's error code.
pub(crate) fn js_error(error: TrypemaError) -> Error<&'static str> {
    Error::new(error.code(), error.to_string())
}

pub(crate) fn closed_error() -> Error<&'static str> {
    js_error(TrypemaError::Closed)
}

pub(crate) fn internal(message: impl Into<String>) -> Error<&'static str> {
    Error::new("TRYPEMA_INTERNAL", message.into())
}

/// JavaScript numbers are doubles; counts must be whole, non-negative and exactly representable.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

pub(crate) fn whole_number(value: f64) -> Option<u64> {
    (value.fract() == 0.0 && (0.0..=MAX_SAFE_INTEGER).contains(&value)).then_some(value as u64)
}

pub(crate) fn count(value: f64) -> napi::Result<u64, &'static str> {
    whole_number(value).ok_or_else(|| js_error(TrypemaError::InvalidCount(value)))
}

pub(crate) fn rate(value: f64) -> napi::Result<RateLimit, &'static str> {
    RateLimit::new(value).map_err(js_error)
}

/// A decision as one number, so the hot path returns no object (a fresh napi object costs more
/// than the decision itself):
/// - `-1`: allowed;
/// - `≥ 0` from absolute: rejected, the value is `retry_after_ms` (the rest via `lastRemaining`);
/// - from suppressed: the factor `f` if admitted, `f + 2` if declined.
pub(crate) fn encode(decision: RateLimitDecision, last_remaining: &mut f64) -> f64 {
    match decision {
        RateLimitDecision::Allowed => -1.0,
        RateLimitDecision::Rejected {
            retry_after_ms,
            remaining_after_waiting,
            ..
        } => {
            *last_remaining = remaining_after_waiting as f64;
            retry_after_ms as f64
        }
        RateLimitDecision::Suppressed {
            suppression_factor,
            is_allowed,
        } => {
            if is_allowed {
                suppression_factor
            } else {
                suppression_factor + 2.0
            }
        }
    }
}

/// A key argument read straight into a stack buffer: one napi call and no allocation, where
/// `String` costs two calls and a heap allocation. Keys longer than the buffer are invalid for
/// every provider anyway, so only their length is needed then.
pub struct KeyArg {
    // Left uninitialised: napi writes the first `len` bytes, and only those are read.
    bytes: [std::mem::MaybeUninit<u8>; KEY_BUFFER_BYTES],
    len: usize,
    full_len: usize,
}

const KEY_BUFFER_BYTES: usize = 512;

impl KeyArg {
    /// The key's text, or `Err(its length in bytes)` when it is too long for any provider.
    fn text(&self) -> Result<&str, usize> {
        if self.full_len > self.len {
            return Err(self.full_len);
        }
        // SAFETY: napi_get_value_string_utf8 initialised `bytes[..len]`.
        let written =
            unsafe { std::slice::from_raw_parts(self.bytes.as_ptr().cast::<u8>(), self.len) };
        std::str::from_utf8(written).map_err(|_| self.len)
    }

    /// The key for the local provider.
    pub(crate) fn local(&self) -> napi::Result<&str, &'static str> {
        match self.text() {
            Ok(key) => trypema::local::validate_key(key).map_err(js_error),
            Err(len) => Err(js_error(trypema::local::key_too_long(len))),
        }
    }

    /// The key for the Redis-backed providers, checked but not copied.
    pub(crate) fn redis_text(&self) -> napi::Result<&str, &'static str> {
        match self.text() {
            Ok(key) => trypema::RedisKey::check(key)
                .map(|()| key)
                .map_err(js_error),
            Err(len) => Err(js_error(trypema::RedisKey::too_long(len))),
        }
    }

    /// The key for the Redis-backed providers.
    pub(crate) fn redis(&self) -> napi::Result<trypema::RedisKey, &'static str> {
        match self.text() {
            Ok(key) => trypema::RedisKey::new(key).map_err(js_error),
            Err(len) => Err(js_error(trypema::RedisKey::too_long(len))),
        }
    }
}

impl napi::bindgen_prelude::TypeName for KeyArg {
    fn type_name() -> &'static str {
        "string"
    }

    fn value_type() -> napi::ValueType {
        napi::ValueType::String
    }
}

/// The UTF-8 encoding of U+FFFD, which N-API writes for a lone surrogate.
const REPLACEMENT: [u8; 3] = [0xEF, 0xBF, 0xBD];

impl FromNapiValue for KeyArg {
    unsafe fn from_napi_value(env: sys::napi_env, value: sys::napi_value) -> napi::Result<Self> {
        let mut key = KeyArg {
            bytes: [std::mem::MaybeUninit::uninit(); KEY_BUFFER_BYTES],
            len: 0,
            full_len: 0,
        };
        let status = sys::napi_get_value_string_utf8(
            env,
            value,
            key.bytes.as_mut_ptr().cast(),
            KEY_BUFFER_BYTES,
            &mut key.len,
        );
        if status != sys::Status::napi_ok {
            return Err(Error::new(
                napi::Status::StringExpected,
                "key must be a string",
            ));
        }
        key.full_len = key.len;
        // napi stops short of a character that would not fit, so a long multi-byte key can
        // fill the buffer up to three bytes short of its end.
        if key.len + 4 >= KEY_BUFFER_BYTES {
            // Possibly cut short: ask for the real length, for the error message.
            sys::napi_get_value_string_utf8(env, value, std::ptr::null_mut(), 0, &mut key.full_len);
        }
        // A lone surrogate becomes U+FFFD in UTF-8, so 'a\uD800' and 'a\uFFFD' would share a
        // limit. Only keys that contain U+FFFD pay for the exact check.
        let written = std::slice::from_raw_parts(key.bytes.as_ptr().cast::<u8>(), key.len);
        if written.windows(3).any(|window| window == REPLACEMENT) && has_lone_surrogate(env, value)?
        {
            return Err(Error::new(
                napi::Status::StringExpected,
                "key must be a well-formed string: it contains a lone UTF-16 surrogate \
                 (String.prototype.isWellFormed() is false); such keys could not be told apart",
            ));
        }
        Ok(key)
    }
}

/// Whether the JavaScript string `value` holds a surrogate that is not part of a pair.
unsafe fn has_lone_surrogate(env: sys::napi_env, value: sys::napi_value) -> napi::Result<bool> {
    let mut len = 0usize;
    if sys::napi_get_value_string_utf16(env, value, std::ptr::null_mut(), 0, &mut len)
        != sys::Status::napi_ok
    {
        return Err(Error::new(
            napi::Status::StringExpected,
            "key must be a string",
        ));
    }
    let mut units = vec![0u16; len + 1];
    sys::napi_get_value_string_utf16(env, value, units.as_mut_ptr(), len + 1, &mut len);
    units.truncate(len);
    Ok(char::decode_utf16(units.iter().copied()).any(|unit| unit.is_err()))
}

/// Settings as passed from JavaScript; each is checked by the core crate's builder.
#[napi(object)]
pub struct LimiterOptions {
    pub window_size_seconds: Option<f64>,
    pub rate_group_size_ms: Option<f64>,
    pub hard_limit_factor: Option<f64>,
    pub suppression_factor_cache_ms: Option<f64>,
    pub redis_prefix: Option<String>,
    pub sync_interval_ms: Option<f64>,
    pub cleanup_interval_ms: Option<f64>,
    pub stale_after_ms: Option<f64>,
    pub command_timeout_ms: Option<f64>,
    /// `'reject'` (default), `'allow'` or `'local'`.
    pub on_redis_error: Option<String>,
    pub local_rate_factor: Option<f64>,
}

/// A whole-number setting from a JavaScript number. A fractional, negative or oversized value
/// is reported with the code of the setting's own error (the core types only hold whole numbers).
fn whole_setting(
    name: &str,
    value: Option<f64>,
    error: fn(u64) -> TrypemaError,
) -> napi::Result<Option<u64>, &'static str> {
    match value {
        None => Ok(None),
        Some(value) => whole_number(value).map(Some).ok_or_else(|| {
            Error::new(
                error(0).code(),
                format!("invalid {name} {value}: must be a whole number of at least 1"),
            )
        }),
    }
}

/// Applies `options` to `builder` (the builder validates them).
pub(crate) fn configure(
    mut builder: RateLimiterBuilder,
    options: &LimiterOptions,
) -> napi::Result<RateLimiterBuilder, &'static str> {
    use TrypemaError as E;
    type Setter = fn(RateLimiterBuilder, u64) -> RateLimiterBuilder;
    type Whole<'a> = (&'a str, Option<f64>, fn(u64) -> TrypemaError, Setter);
    let whole: [Whole; 7] = [
        (
            "windowSizeSeconds",
            options.window_size_seconds,
            E::InvalidWindowSize,
            RateLimiterBuilder::window_size_seconds,
        ),
        (
            "rateGroupSizeMs",
            options.rate_group_size_ms,
            E::InvalidRateGroupSize,
            RateLimiterBuilder::rate_group_size_ms,
        ),
        (
            "suppressionFactorCacheMs",
            options.suppression_factor_cache_ms,
            E::InvalidSuppressionFactorCache,
            RateLimiterBuilder::suppression_factor_cache_ms,
        ),
        (
            "syncIntervalMs",
            options.sync_interval_ms,
            E::InvalidSyncInterval,
            RateLimiterBuilder::sync_interval_ms,
        ),
        (
            "cleanupIntervalMs",
            options.cleanup_interval_ms,
            E::InvalidCleanupInterval,
            RateLimiterBuilder::cleanup_interval_ms,
        ),
        (
            "staleAfterMs",
            options.stale_after_ms,
            E::InvalidStaleAfter,
            RateLimiterBuilder::stale_after_ms,
        ),
        (
            "commandTimeoutMs",
            options.command_timeout_ms,
            E::InvalidCommandTimeout,
            RateLimiterBuilder::command_timeout_ms,
        ),
    ];
    for (name, value, error, set) in whole {
        if let Some(value) = whole_setting(name, value, error)? {
            builder = set(builder, value);
        }
    }
    if let Some(value) = options.hard_limit_factor {
        builder = builder.hard_limit_factor(value);
    }
    if let Some(value) = options.local_rate_factor {
        builder = builder.local_rate_factor(value);
    }
    if let Some(value) = &options.redis_prefix {
        builder = builder.redis_prefix(value.clone());
    }
    if let Some(policy) = &options.on_redis_error {
        builder = builder.on_redis_error(match policy.as_str() {
            "reject" => OnRedisError::Reject,
            "allow" => OnRedisError::Allow,
            "local" => OnRedisError::Local,
            other => {
                return Err(Error::new(
                    "TRYPEMA_INVALID_ON_REDIS_ERROR",
                    format!("invalid onRedisError {other:?}: use 'reject', 'allow' or 'local'"),
                ))
            }
        });
    }
    Ok(builder)
}
