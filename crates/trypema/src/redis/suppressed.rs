use std::sync::{Arc, LazyLock};

use redis::Script;

use super::{unexpected, RedisContext, RedisKey};
use crate::{RateLimit, RateLimitDecision, TrypemaError};

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("suppressed.lua")));

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
        let reply = self.call(key, "inc", rate.get(), count).await?;
        match reply {
            (0, _, _) => Ok(RateLimitDecision::Allowed),
            (1, admitted, factor) => Ok(RateLimitDecision::Suppressed {
                suppression_factor: parse_factor(&factor)?,
                is_allowed: admitted == 1,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// The key's current suppression factor (0 for a key with no state); records nothing.
    pub async fn get_suppression_factor(&self, key: &RedisKey) -> Result<f64, TrypemaError> {
        match self.call(key, "factor", 1.0, 0).await? {
            (2, _, factor) => parse_factor(&factor),
            other => Err(unexpected(other)),
        }
    }

    async fn call(
        &self,
        key: &RedisKey,
        mode: &str,
        rate: f64,
        count: u64,
    ) -> Result<(i64, i64, String), TrypemaError> {
        let settings = &self.context.settings;
        let random: f64 = rand::random();
        self.context
            .run(
                &SCRIPT,
                self.context.entity_key(key, "s"),
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

fn parse_factor(text: &str) -> Result<f64, TrypemaError> {
    text.parse::<f64>()
        .ok()
        .filter(|factor| (0.0..=1.0).contains(factor))
        .ok_or_else(|| unexpected(text))
}
