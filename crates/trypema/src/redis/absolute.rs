use std::sync::{Arc, LazyLock};

use redis::Script;

use super::{unexpected, RedisContext, RedisKey};
use crate::{RateLimit, RateLimitDecision, TrypemaError};

pub(crate) const SOURCE: &str = include_str!("absolute.lua");
pub(crate) static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(SOURCE));

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
                self.context.entity_keys(key, "a"),
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
                self.context.entity_keys(key, "a"),
                &[
                    &"check",
                    &settings.window_ms,
                    &settings.group_ms,
                    &0u64,
                    &0u64,
                ],
            )
            .await?;
        self.decision(reply)
    }

    /// The script answers -1 (allowed) or `[retry_after_ms, remaining_after_waiting]`.
    fn decision(&self, reply: redis::Value) -> Result<RateLimitDecision, TrypemaError> {
        match reply {
            redis::Value::Int(-1) => Ok(RateLimitDecision::Allowed),
            redis::Value::Array(ref hints) => match hints.as_slice() {
                [redis::Value::Int(retry_after_ms), redis::Value::Int(remaining)]
                    if *retry_after_ms >= 0 && *remaining >= 0 =>
                {
                    Ok(RateLimitDecision::Rejected {
                        window_size_seconds: self.context.settings.window.get(),
                        retry_after_ms: *retry_after_ms as u64,
                        remaining_after_waiting: *remaining as u64,
                    })
                }
                _ => Err(unexpected(reply)),
            },
            other => Err(unexpected(other)),
        }
    }
}
