use std::sync::Arc;

use super::{
    connection::ABSOLUTE,
    script::{self, absolute as mode, Args},
    RedisContext, RedisKey, Tag,
};
use crate::{
    metrics::{Provider, Strategy},
    Quota, QuotaDecision, RateLimit, RateLimitDecision, TrypemaError,
};

/// Absolute strategy in Redis: exact across every process sharing the Redis and prefix.
#[derive(Clone)]
pub struct AbsoluteRedisRateLimiter {
    context: Arc<RedisContext>,
}

impl AbsoluteRedisRateLimiter {
    pub(crate) fn new(context: Arc<RedisContext>) -> Self {
        Self { context }
    }

    fn args(&self, mode: f64, capacity: u64, count: u64) -> Vec<u8> {
        let settings = &self.context.settings;
        Args::with(&[
            mode,
            settings.window_ms as f64,
            settings.group_ms as f64,
            capacity as f64,
            count as f64,
            script::new_epoch(),
        ])
        .into_bytes()
    }

    async fn call(&self, key: &RedisKey, args: Vec<u8>) -> Result<redis::Value, TrypemaError> {
        let key = self.context.entity_key(key.as_str(), Tag::Absolute);
        self.context.eval(&ABSOLUTE, key, args).await
    }

    fn count(&self, decision: RateLimitDecision, degraded: bool) -> RateLimitDecision {
        self.context
            .metrics
            .decision(Provider::Redis, Strategy::Absolute, &decision, degraded);
        decision
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
        let args = self.args(mode::INC, settings.capacity(rate), count);
        match self.call(key, args).await {
            Ok(reply) => Ok(self.count(
                script::absolute_decision(&reply, settings.window.get())?,
                false,
            )),
            Err(error) => self
                .degrade(error, key, rate, count)
                .map(|outcome| outcome.decision),
        }
    }

    fn degrade(
        &self,
        error: TrypemaError,
        key: &RedisKey,
        rate: &RateLimit,
        count: u64,
    ) -> Result<QuotaDecision, TrypemaError> {
        self.context.degrade(
            error,
            Provider::Redis,
            Strategy::Absolute,
            key.as_str(),
            rate,
            count,
        )
    }

    /// Like [`Self::inc`], and also returns the key's quota after the call, in the same
    /// round trip.
    pub async fn inc_with_quota(
        &self,
        key: &RedisKey,
        rate: &RateLimit,
        count: u64,
    ) -> Result<QuotaDecision, TrypemaError> {
        let settings = &self.context.settings;
        match self
            .call(
                key,
                self.args(mode::INC_QUOTA, settings.capacity(rate), count),
            )
            .await
        {
            Ok(reply) => {
                let [allowed, retry_after, remaining_after, limit, remaining, reset_ms] =
                    script::doubles::<6>(&reply)?;
                let decision = if allowed == 1.0 {
                    RateLimitDecision::Allowed
                } else {
                    RateLimitDecision::Rejected {
                        window_size_seconds: settings.window.get(),
                        retry_after_ms: script::whole(retry_after),
                        remaining_after_waiting: script::whole(remaining_after),
                    }
                };
                Ok(QuotaDecision {
                    decision: self.count(decision, false),
                    quota: Quota {
                        limit,
                        remaining: script::whole(remaining),
                        reset_ms: script::whole(reset_ms),
                    },
                    degraded: false,
                })
            }
            Err(error) => self.degrade(error, key, rate, count),
        }
    }

    /// Whether one more call would currently be admitted; records nothing.
    pub async fn is_allowed(&self, key: &RedisKey) -> Result<RateLimitDecision, TrypemaError> {
        let reply = self.call(key, self.args(mode::CHECK, 0, 0)).await?;
        script::absolute_decision(&reply, self.context.settings.window.get())
    }

    /// The key's quota (for a key without state, from `rate`); records nothing.
    pub async fn get(&self, key: &RedisKey, rate: &RateLimit) -> Result<Quota, TrypemaError> {
        let capacity = self.context.settings.capacity(rate);
        let reply = self.call(key, self.args(mode::GET, capacity, 0)).await?;
        let [_, _, _, limit, remaining, reset_ms] = script::doubles::<6>(&reply)?;
        Ok(Quota {
            limit,
            remaining: script::whole(remaining),
            reset_ms: script::whole(reset_ms),
        })
    }

    /// Takes back up to `count` recorded units of `key`, newest first (never below zero);
    /// returns how many were taken back.
    pub async fn refund(&self, key: &RedisKey, count: u64) -> Result<u64, TrypemaError> {
        let reply = self.call(key, self.args(mode::REFUND, 0, count)).await?;
        let [refunded, ..] = script::doubles::<6>(&reply)?;
        Ok(script::whole(refunded))
    }

    /// Forgets `key`'s absolute state for every process sharing this Redis and prefix.
    pub async fn reset(&self, key: &RedisKey) -> Result<(), TrypemaError> {
        self.context
            .delete(self.context.entity_key(key.as_str(), Tag::Absolute))
            .await
    }
}
