use std::sync::{Arc, LazyLock};

use redis::Script;

use super::{unexpected, RedisContext, RedisKey};
use crate::{RateLimit, RateLimitDecision, TrypemaError};

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("absolute.lua")));

/// Absolute strategy in Redis: exact across every process sharing the Redis and prefix.
#[derive(Clone)]
pub struct AbsoluteRedisRateLimiter {
    context: Arc<RedisContext>,
}

impl AbsoluteRedisRateLimiter {
    pub(crate) fn new(context: Arc<RedisContext>) -> Self {
        Self { context }
    }

    /// Records `count` for `key` and returns `Allowed`, or records nothing and returns
    /// `Rejected` if that would take the window over capacity.
    pub async fn inc(
        &self,
        key: &RedisKey,
        rate: &RateLimit,
        count: u64,
    ) -> Result<RateLimitDecision, TrypemaError> {
        let settings = &self.context.settings;
        let reply = self
            .context
            .run(
                &SCRIPT,
                self.context.entity_key(key, "a"),
                &[
                    &"inc",
                    &settings.window_ms,
                    &settings.group_ms,
                    &settings.capacity(rate),
                    &count,
                ],
            )
            .await?;
        self.decision(reply)
    }

    /// Whether one more call would currently be admitted; records nothing.
    pub async fn is_allowed(&self, key: &RedisKey) -> Result<RateLimitDecision, TrypemaError> {
        let settings = &self.context.settings;
        let reply = self
            .context
            .run(
                &SCRIPT,
                self.context.entity_key(key, "a"),
                &[&"check", &settings.window_ms, &settings.group_ms, &0u64, &0u64],
            )
            .await?;
        self.decision(reply)
    }

    fn decision(&self, reply: (i64, i64, i64)) -> Result<RateLimitDecision, TrypemaError> {
        match reply {
            (0, _, _) => Ok(RateLimitDecision::Allowed),
            (1, retry_after_ms, remaining) if retry_after_ms >= 0 && remaining >= 0 => {
                Ok(RateLimitDecision::Rejected {
                    window_size_seconds: self.context.settings.window.get(),
                    retry_after_ms: retry_after_ms as u64,
                    remaining_after_waiting: remaining as u64,
                })
            }
            other => Err(unexpected(other)),
        }
    }
}
