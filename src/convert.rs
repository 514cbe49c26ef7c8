//! Conversions between JavaScript values and the core crate's types.

use napi::Error;
use trypema::{RateLimit, RateLimitDecision, TrypemaError};

/// Errors reach JavaScript as `Error` objects whose `code` is the core crate's error code.
pub(crate) fn js_error(error: TrypemaError) -> Error<&'static str> {
    Error::new(error.code(), error.to_string())
}

pub(crate) fn closed_error() -> Error<&'static str> {
    Error::new("TRYPEMA_CLOSED", "this rate limiter has been closed")
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
/// - `≥ 0` from absolute: rejected, the value is `retry_after_ms` (the rest via `lastRejection`);
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
        // napi writes UTF-8, replacing lone surrogates, and never splits a character.
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

impl napi::bindgen_prelude::FromNapiValue for KeyArg {
    unsafe fn from_napi_value(
        env: napi::sys::napi_env,
        value: napi::sys::napi_value,
    ) -> napi::Result<Self> {
        let mut key = KeyArg {
            bytes: [std::mem::MaybeUninit::uninit(); KEY_BUFFER_BYTES],
            len: 0,
            full_len: 0,
        };
        let status = napi::sys::napi_get_value_string_utf8(
            env,
            value,
            key.bytes.as_mut_ptr().cast(),
            KEY_BUFFER_BYTES,
            &mut key.len,
        );
        if status != napi::sys::Status::napi_ok {
            return Err(napi::Error::new(
                napi::Status::StringExpected,
                "key must be a string",
            ));
        }
        key.full_len = key.len;
        // napi stops short of a character that would not fit, so a long multi-byte key can
        // fill the buffer up to three bytes short of its end.
        if key.len + 4 >= KEY_BUFFER_BYTES {
            // Possibly cut short: ask for the real length, for the error message.
            napi::sys::napi_get_value_string_utf8(
                env,
                value,
                std::ptr::null_mut(),
                0,
                &mut key.full_len,
            );
        }
        Ok(key)
    }
}
