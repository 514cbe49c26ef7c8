use std::sync::Arc;

use super::{
    connection::SUPPRESSED,
    script::{self, suppressed as mode, Args},
    RedisContext, RedisKey, Tag,
};
use crate::{
    metrics::{Provider, Strategy},
    Quota, QuotaDecision, RateLimit, RateLimitDecision, TrypemaError,
};

/// Suppressed strategy in Redis. The random draw is made here, with a proper RNG, and passed to
/// the script: Lua's `math.random` is seeded identically on every script run.
#[derive(Clone)]
pub struct SuppressedRedisRateLimiter {
    context: Arc<RedisContext>,
}

/// The arguments every suppressed script call starts with.
pub(crate) fn base_args(
    settings: &crate::limiter::Settings,
    mode: f64,
    rate: f64,
    count: u64,
) -> Args {
    Args::with(&[
        mode,
        settings.window_ms as f64,
        settings.group_ms as f64,
        rate,
        count as f64,
        script::new_epoch(),
        settings.hard_limit_factor,
        rand::random::<f64>(),
        settings.suppression_cache_ms as f64,
    ])
}

impl SuppressedRedisRateLimiter {
    pub(crate) fn new(context: Arc<RedisContext>) -> Self {
        Self { context }
    }

    async fn call(
        &self,
        key: &RedisKey,
        mode: f64,
        rate: f64,
        count: u64,
    ) -> Result<redis::Value, TrypemaError> {
        let args = base_args(&self.context.settings, mode, rate, count).into_bytes();
        let key = self.context.entity_key(key.as_str(), Tag::Suppressed);
        self.context.eval(&SUPPRESSED, key, args).await
    }

    fn count(&self, decision: RateLimitDecision, degraded: bool) -> RateLimitDecision {
        self.context
            .metrics
            .decision(Provider::Redis, Strategy::Suppressed, &decision, degraded);
        decision
    }

    /// Records `count` as observed for `key` and decides whether to admit it.
    pub async fn inc(
        &self,
        key: &RedisKey,
        rate: &RateLimit,
        count: u64,
    ) -> Result<RateLimitDecision, TrypemaError> {
        match self.call(key, mode::INC, rate.get(), count).await {
            Ok(reply) => Ok(self.count(script::suppressed_decision(script::int(&reply)?)?, false)),
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
            Strategy::Suppressed,
            key.as_str(),
            rate,
            count,
        )
    }

    /// Like [`Self::inc`], and also returns the key's quota after the call (`limit` is the soft
    /// capacity), in the same round trip.
    pub async fn inc_with_quota(
        &self,
        key: &RedisKey,
        rate: &RateLimit,
        count: u64,
    ) -> Result<QuotaDecision, TrypemaError> {
        match self.call(key, mode::INC_QUOTA, rate.get(), count).await {
            Ok(reply) => {
                let [encoded, limit, remaining, reset_ms] = script::doubles::<4>(&reply)?;
                let decision = script::suppressed_decision(encoded as i64)?;
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

    /// The key's current suppression factor (0 for a key with no state); records nothing.
    pub async fn get_suppression_factor(&self, key: &RedisKey) -> Result<f64, TrypemaError> {
        let reply = self.call(key, mode::FACTOR, 1.0, 0).await?;
        Ok(script::decode_factor(script::int(&reply)?)?.0)
    }

    /// The key's quota against its soft capacity (for a key without state, from `rate`);
    /// records nothing.
    pub async fn get(&self, key: &RedisKey, rate: &RateLimit) -> Result<Quota, TrypemaError> {
        let reply = self.call(key, mode::GET, rate.get(), 0).await?;
        let [_, limit, remaining, reset_ms] = script::doubles::<4>(&reply)?;
        Ok(Quota {
            limit,
            remaining: script::whole(remaining),
            reset_ms: script::whole(reset_ms),
        })
    }

    /// Takes back up to `count` admitted units of `key`, newest first (never below zero);
    /// returns how many were taken back.
    pub async fn refund(&self, key: &RedisKey, count: u64) -> Result<u64, TrypemaError> {
        let reply = self.call(key, mode::REFUND, 1.0, count).await?;
        let [refunded, ..] = script::doubles::<4>(&reply)?;
        Ok(script::whole(refunded))
    }

    /// Forgets `key`'s suppressed state for every process sharing this Redis and prefix.
    pub async fn reset(&self, key: &RedisKey) -> Result<(), TrypemaError> {
        self.context
            .delete(self.context.entity_key(key.as_str(), Tag::Suppressed))
            .await
    }
}
