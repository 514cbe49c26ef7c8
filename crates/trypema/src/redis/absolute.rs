use std::sync::{Arc, LazyLock};

use redis::Script;

use super::{unexpected, RedisContext, RedisKey, ScriptCall};
use crate::{limiter::Settings, RateLimit, RateLimitDecision, TrypemaError};

pub(crate) const SOURCE: &str = include_str!("absolute.lua");
pub(crate) static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(SOURCE));

/// The script's modes.
pub(crate) const INC: f64 = 1.0;
pub(crate) const CHECK: f64 = 2.0;
pub(crate) const LEASE: f64 = 3.0;

/// A call of the absolute script; `lease` is `[lease_ms, returned, returned_start]`.
pub(crate) fn script_call(
    settings: &Settings,
    mode: f64,
    capacity: u64,
    count: u64,
    lease: [u64; 3],
) -> ScriptCall {
    let [lease_ms, returned, returned_start] = lease;
    ScriptCall {
        mode,
        args: [
            settings.window_ms as f64,
            settings.group_ms as f64,
            capacity as f64,
            count as f64,
            lease_ms as f64,
            returned as f64,
            returned_start as f64,
        ],
    }
}

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
        let call = script_call(settings, INC, settings.capacity(rate), count, [0; 3]);
        let reply = self
            .context
            .run(&SCRIPT, self.context.entity_keys(key, "a"), call)
            .await?;
        self.decision(reply)
    }

    /// Whether one more call would currently be admitted; records nothing.
    pub async fn is_allowed(&self, key: &RedisKey) -> Result<RateLimitDecision, TrypemaError> {
        let call = script_call(&self.context.settings, CHECK, 0, 0, [0; 3]);
        let reply = self
            .context
            .run(&SCRIPT, self.context.entity_keys(key, "a"), call)
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
