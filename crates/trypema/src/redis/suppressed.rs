use std::sync::{Arc, LazyLock};

use redis::Script;

use super::{unexpected, RedisContext, RedisKey, ScriptCall};
use crate::{limiter::Settings, RateLimit, RateLimitDecision, TrypemaError};

pub(crate) const SOURCE: &str = include_str!("suppressed.lua");
pub(crate) static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(SOURCE));

/// The script's modes.
pub(crate) const INC: f64 = 1.0;
pub(crate) const FACTOR: f64 = 2.0;
pub(crate) const SYNC: f64 = 3.0;

/// A call of the suppressed script; `last` is the random draw (inc) or the declined count
/// (sync).
pub(crate) fn script_call(
    settings: &Settings,
    mode: f64,
    rate: f64,
    count: u64,
    last: f64,
) -> ScriptCall {
    ScriptCall {
        mode,
        args: [
            settings.window_ms as f64,
            settings.group_ms as f64,
            rate,
            count as f64,
            settings.hard_limit_factor,
            last,
            0.0,
        ],
    }
}

/// Suppressed strategy in Redis. The random draw is made here, with a proper RNG, and passed to
/// the script: Lua's `math.random` is seeded identically on every script run.
#[derive(Clone)]
pub struct SuppressedRedisRateLimiter {
    context: Arc<RedisContext>,
}

impl SuppressedRedisRateLimiter {
    pub(crate) fn new(context: Arc<RedisContext>) -> Self {
        Self { context }
    }

    /// Records `count` as observed for `key` and decides whether to admit it.
    pub async fn inc(
        &self,
        key: &RedisKey,
        rate: &RateLimit,
        count: u64,
    ) -> Result<RateLimitDecision, TrypemaError> {
        match self.call(key, INC, rate.get(), count).await? {
            -1 => Ok(RateLimitDecision::Allowed),
            encoded => Ok(RateLimitDecision::Suppressed {
                suppression_factor: decode_factor(encoded)?,
                is_allowed: encoded % 2 == 1,
            }),
        }
    }

    /// The key's current suppression factor (0 for a key with no state); records nothing.
    pub async fn get_suppression_factor(&self, key: &RedisKey) -> Result<f64, TrypemaError> {
        decode_factor(self.call(key, FACTOR, 1.0, 0).await?)
    }

    async fn call(
        &self,
        key: &RedisKey,
        mode: f64,
        rate: f64,
        count: u64,
    ) -> Result<i64, TrypemaError> {
        let call = script_call(&self.context.settings, mode, rate, count, rand::random());
        self.context
            .run(&SCRIPT, self.context.entity_keys(key, "s"), call)
            .await
    }
}

/// The script returns `floor(factor × 2^40) × 2 + admitted`: a whole number, because formatting
/// a float as text costs more server time than the rest of the decision.
fn decode_factor(encoded: i64) -> Result<f64, TrypemaError> {
    const SCALE: f64 = (1u64 << 40) as f64;
    if (0..=(1i64 << 41) + 1).contains(&encoded) {
        Ok((encoded / 2) as f64 / SCALE)
    } else {
        Err(unexpected(encoded))
    }
}
