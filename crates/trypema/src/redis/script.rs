//! Arguments for the Lua scripts and the decoding of their replies.
//!
//! Arguments travel as one string of little-endian doubles: one argument instead of nine saves
//! Redis about a microsecond per call, and the script reads numbers without parsing text.
//! Replies other than the hot path's are strings of doubles for the same reason.

use redis::Value;

use crate::{RateLimitDecision, TrypemaError};

/// Absolute script modes (see absolute.lua).
pub(crate) mod absolute {
    pub(crate) const INC: f64 = 1.0;
    pub(crate) const CHECK: f64 = 2.0;
    pub(crate) const LEASE: f64 = 3.0;
    pub(crate) const GET: f64 = 4.0;
    pub(crate) const REFUND: f64 = 5.0;
    pub(crate) const INC_QUOTA: f64 = 6.0;
}

/// Suppressed script modes (see suppressed.lua).
pub(crate) mod suppressed {
    pub(crate) const INC: f64 = 1.0;
    pub(crate) const FACTOR: f64 = 2.0;
    pub(crate) const LEASE: f64 = 3.0;
    pub(crate) const GET: f64 = 4.0;
    pub(crate) const REFUND: f64 = 5.0;
    pub(crate) const INC_QUOTA: f64 = 6.0;
}

/// Both scripts' probe mode: runs each command the scripts use once (see window.lua).
pub(crate) const PROBE: f64 = 7.0;

/// Packs script arguments.
#[derive(Default)]
pub(crate) struct Args(Vec<u8>);

impl Args {
    pub(crate) fn with(values: &[f64]) -> Self {
        let mut args = Self(Vec::with_capacity(values.len() * 8 + 128));
        args.extend(values);
        args
    }

    pub(crate) fn extend(&mut self, values: &[f64]) {
        for value in values {
            self.0.extend_from_slice(&value.to_le_bytes());
        }
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// A give-back of leased quota: the lease's bucket start, the entity epoch, the amount.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct GiveBack {
    pub(crate) start: f64,
    pub(crate) epoch: f64,
    pub(crate) amount: u64,
}

/// A random epoch for state a call may create (an entity incarnation's identity).
pub(crate) fn new_epoch() -> f64 {
    f64::from(rand::random::<u32>()) + 1.0
}

pub(crate) fn unexpected(what: impl std::fmt::Debug) -> TrypemaError {
    TrypemaError::UnexpectedScriptResult(format!("{what:?}"))
}

/// A reply made of `N` packed doubles.
pub(crate) fn doubles<const N: usize>(value: &Value) -> Result<[f64; N], TrypemaError> {
    match value {
        Value::BulkString(bytes) if bytes.len() == N * 8 => {
            let mut out = [0.0; N];
            for (slot, chunk) in out.iter_mut().zip(bytes.chunks_exact(8)) {
                *slot = f64::from_le_bytes(chunk.try_into().expect("chunks of 8"));
            }
            if out.iter().all(|number| number.is_finite()) {
                Ok(out)
            } else {
                Err(unexpected(value))
            }
        }
        other => Err(unexpected(other)),
    }
}

/// A non-negative whole number from a double of a reply.
pub(crate) fn whole(value: f64) -> u64 {
    if value > 0.0 {
        value as u64
    } else {
        0
    }
}

/// The absolute script's `inc` / `check` reply: -1, or `{retry_after_ms, remaining}`.
pub(crate) fn absolute_decision(
    value: &Value,
    window_size_seconds: u64,
) -> Result<RateLimitDecision, TrypemaError> {
    match value {
        Value::Int(-1) => Ok(RateLimitDecision::Allowed),
        Value::Array(hints) => match hints.as_slice() {
            [Value::Int(retry_after_ms), Value::Int(remaining)]
                if *retry_after_ms >= 0 && *remaining >= 0 =>
            {
                Ok(RateLimitDecision::Rejected {
                    window_size_seconds,
                    retry_after_ms: *retry_after_ms as u64,
                    remaining_after_waiting: *remaining as u64,
                })
            }
            _ => Err(unexpected(value)),
        },
        other => Err(unexpected(other)),
    }
}

/// The suppressed factor as the scripts encode it: `floor(f × 2^40) × 2 + admitted`, a whole
/// number, because formatting a float as text costs more server time than the decision.
pub(crate) fn decode_factor(encoded: i64) -> Result<(f64, bool), TrypemaError> {
    const SCALE: f64 = (1u64 << 40) as f64;
    if (0..=(1i64 << 41) + 1).contains(&encoded) {
        Ok(((encoded / 2) as f64 / SCALE, encoded % 2 == 1))
    } else {
        Err(unexpected(encoded))
    }
}

/// A suppressed decision from its encoding (-1: allowed outright).
pub(crate) fn suppressed_decision(encoded: i64) -> Result<RateLimitDecision, TrypemaError> {
    if encoded == -1 {
        return Ok(RateLimitDecision::Allowed);
    }
    let (suppression_factor, is_allowed) = decode_factor(encoded)?;
    Ok(RateLimitDecision::Suppressed {
        suppression_factor,
        is_allowed,
    })
}

pub(crate) fn int(value: &Value) -> Result<i64, TrypemaError> {
    match value {
        Value::Int(number) => Ok(*number),
        other => Err(unexpected(other)),
    }
}
