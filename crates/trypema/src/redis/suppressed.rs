use std::sync::{Arc, LazyLock};

use redis::Script;

use super::{unexpected, RedisContext, RedisKey};
use crate::{RateLimit, RateLimitDecision, TrypemaError};

pub(crate) const SOURCE: &str = include_str!("suppressed.lua");
pub(crate) static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(SOURCE));

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
        match self.call(key, "inc", rate.get(), count).await? {
            -1 => Ok(RateLimitDecision::Allowed),
            encoded => Ok(RateLimitDecision::Suppressed {
                suppression_factor: decode_factor(encoded)?,
                is_allowed: encoded % 2 == 1,
            }),
        }
    }

    /// The key's current suppression factor (0 for a key with no state); records nothing.
    pub async fn get_suppression_factor(&self, key: &RedisKey) -> Result<f64, TrypemaError> {
        decode_factor(self.call(key, "factor", 1.0, 0).await?)
    }

    async fn call(
        &self,
        key: &RedisKey,
        mode: &str,
        rate: f64,
        count: u64,
    ) -> Result<i64, TrypemaError> {
        let settings = &self.context.settings;
        let random: f64 = rand::random();
        self.context
            .run(
                &SCRIPT,
                self.context.entity_keys(key, "s"),
                &[
                    &mode,
                    &settings.window_ms,
                    &settings.group_ms,
                    &rate,
                    &count,
                    &settings.hard_limit_factor,
                    &random,
                ],
            )
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
