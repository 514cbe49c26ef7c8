//! The Redis provider: every call is one `EVALSHA` of a script that evicts, decides and records
//! atomically, in the Redis server's own time, so any number of processes share one exact limit
//! whatever their clocks say.
//!
//! Key layout: one string per entity and strategy, `{<prefix>:<key>}:a` (absolute) or
//! `{<prefix>:<key>}:s` (suppressed). The braces are a Redis Cluster hash tag. No global key is
//! touched per call. The layout is injective: the prefix has no `:`, so the text between `{` and
//! the first `:` is the prefix and the rest up to the final `}:a` / `}:s` is the key.

mod absolute;
mod breaker;
pub(crate) mod connection;
pub(crate) mod script;
mod suppressed;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

pub use absolute::AbsoluteRedisRateLimiter;
pub use connection::classify as classify_error;
pub use redis::aio::ConnectionManager;
use redis::Value;
pub(crate) use suppressed::base_args as suppressed_args;
pub use suppressed::SuppressedRedisRateLimiter;

use self::{
    breaker::Breaker,
    connection::{bounded, Connection, LuaScript},
};
pub use crate::redis_key::RedisKey;
use crate::{
    limiter::Settings,
    local::LocalProvider,
    metrics::{Metrics, Provider, Strategy},
    OnRedisError, Quota, QuotaDecision, RateLimit, RateLimitDecision, TrypemaError,
};

/// `rl.redis()`: both strategies over one connection.
#[derive(Clone)]
pub struct RedisProvider {
    absolute: AbsoluteRedisRateLimiter,
    suppressed: SuppressedRedisRateLimiter,
}

impl RedisProvider {
    pub(crate) fn new(context: Arc<RedisContext>) -> Self {
        Self {
            absolute: AbsoluteRedisRateLimiter::new(context.clone()),
            suppressed: SuppressedRedisRateLimiter::new(context),
        }
    }

    /// The strategy that rejects at the limit.
    pub fn absolute(&self) -> &AbsoluteRedisRateLimiter {
        &self.absolute
    }

    /// The strategy that sheds a growing fraction of traffic above the rate.
    pub fn suppressed(&self) -> &SuppressedRedisRateLimiter {
        &self.suppressed
    }
}

/// Which strategy's key an entity is stored under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tag {
    Absolute,
    Suppressed,
}

/// What both strategies (and the hybrid provider) need to reach their state.
pub(crate) struct RedisContext {
    connection: Option<Connection>,
    prefix: RedisKey,
    pub(crate) settings: Settings,
    breaker: Breaker,
    /// On a cluster, one breaker per slot: a master that is down must not fail the keys of the
    /// others.
    slot_breakers:
        std::sync::Mutex<std::collections::HashMap<redis::cluster_routing::Slot, Breaker>>,
    pub(crate) metrics: Arc<Metrics>,
    /// Decides under `OnRedisError::Local`, with the rate scaled by `local_rate_factor`.
    fallback: LocalProvider,
}

impl RedisContext {
    pub(crate) fn new(
        connection: Option<Connection>,
        prefix: RedisKey,
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let fallback = LocalProvider::new(settings.clone(), Arc::new(Metrics::default()));
        Arc::new(Self {
            connection,
            prefix,
            settings,
            breaker: Breaker::default(),
            slot_breakers: Default::default(),
            metrics,
            fallback,
        })
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    pub(crate) fn has_connection(&self) -> bool {
        self.connection.is_some()
    }

    fn connection(&self) -> Result<&Connection, TrypemaError> {
        self.connection
            .as_ref()
            .ok_or(TrypemaError::RedisNotConfigured)
    }

    /// The key holding `key`'s state for one strategy.
    pub(crate) fn entity_key(&self, key: &str, tag: Tag) -> String {
        let suffix = match tag {
            Tag::Absolute => "}:a",
            Tag::Suppressed => "}:s",
        };
        let mut out = String::with_capacity(self.prefix.as_str().len() + key.len() + 5);
        out.push('{');
        out.push_str(self.prefix.as_str());
        out.push(':');
        out.push_str(key);
        out.push_str(suffix);
        out
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.settings.command_timeout_ms)
    }

    /// The breaker guarding calls on `key`: per slot on a cluster, else the connection's.
    fn breaker_for(&self, connection: &Connection, key: Option<&str>) -> Breaker {
        match key {
            Some(key) if connection.is_cluster() => self
                .slot_breakers
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .entry(redis::cluster_routing::Slot::for_key(key))
                .or_default()
                .clone(),
            _ => self.breaker.clone(),
        }
    }

    /// Runs one Redis operation (on `key`, if it concerns one) through the circuit breaker,
    /// bounded by the command timeout, and counts it.
    async fn guarded<T>(
        &self,
        key: Option<&str>,
        operation: impl FnOnce(
            Connection,
        )
            -> futures_util::future::BoxFuture<'static, Result<T, TrypemaError>>,
    ) -> Result<T, TrypemaError> {
        let connection = self.connection()?;
        let breaker = self.breaker_for(connection, key);
        breaker.check(
            connection,
            self.timeout(),
            key.filter(|_| connection.is_cluster()),
        )?;
        let started = Instant::now();
        let result = bounded(self.timeout(), operation(connection.clone())).await;
        self.metrics.round_trip(started.elapsed(), result.is_ok());
        match &result {
            Err(error) if error.is_outage() => {
                if breaker.trip(error) {
                    self.metrics.breaker_opened();
                }
            }
            _ => breaker.close(),
        }
        result
    }

    /// One script call: `EVALSHA` (loading the script on `NOSCRIPT`) on one entity's key.
    pub(crate) async fn eval(
        &self,
        script: &'static LuaScript,
        key: String,
        args: Vec<u8>,
    ) -> Result<Value, TrypemaError> {
        self.guarded(Some(&key.clone()), move |connection| {
            Box::pin(async move { connection.eval(script, &key, &args).await })
        })
        .await
    }

    /// Many script calls in one round trip (per node): each gets its own result.
    pub(crate) async fn eval_batch(
        &self,
        script: &'static LuaScript,
        calls: Vec<(String, Vec<u8>)>,
    ) -> Result<Vec<Result<Value, TrypemaError>>, TrypemaError> {
        if self.connection()?.is_cluster() {
            // A cluster pipeline must stay within one slot: send the calls concurrently
            // instead, each routed to its node (and guarded by its slot's breaker); the
            // multiplexed node connections write them together, so a round is still one round
            // trip per node.
            let calls = calls
                .into_iter()
                .map(|(key, args)| self.eval(script, key, args));
            return Ok(futures_util::future::join_all(calls).await);
        }
        self.guarded(None, move |connection| {
            Box::pin(async move { connection.eval_batch(script, &calls).await })
        })
        .await
    }

    /// Forgets one entity's state.
    pub(crate) async fn delete(&self, key: String) -> Result<(), TrypemaError> {
        self.guarded(Some(&key.clone()), move |connection| {
            Box::pin(async move { connection.delete(&key).await })
        })
        .await
    }

    /// Checks that Redis answers, that the credentials work and that the user may run every
    /// command the scripts use: each script's probe mode runs each of them once on a key under
    /// the prefix, then the key is deleted as `reset` would.
    pub(crate) async fn verify(&self) -> Result<(), TrypemaError> {
        let probe = RedisKey::new("\u{0}trypema-probe")?;
        // The circuit breaker probes with PING after an outage; without it recovery would fail.
        self.guarded(None, |connection| {
            Box::pin(async move { connection.ping().await })
        })
        .await?;
        for (tag, script) in [
            (Tag::Absolute, &*connection::ABSOLUTE),
            (Tag::Suppressed, &*connection::SUPPRESSED),
        ] {
            let key = self.entity_key(probe.as_str(), tag);
            self.eval(
                script,
                key.clone(),
                script::Args::with(&[script::PROBE]).into_bytes(),
            )
            .await?;
            self.delete(key).await?;
        }
        Ok(())
    }

    /// What a call that could not reach Redis gets, by the outage policy: the error (`Reject`,
    /// or an error that is not an outage), or a decision marked degraded, with the quota it was
    /// made with (`Allow`: the whole limit; `Local`: the in-process limiter's, at
    /// `rate × local_rate_factor`).
    pub(crate) fn degrade(
        &self,
        error: TrypemaError,
        provider: Provider,
        strategy: Strategy,
        key: &str,
        rate: &RateLimit,
        count: u64,
    ) -> Result<QuotaDecision, TrypemaError> {
        if !error.is_outage() {
            return Err(error);
        }
        let outcome = match self.settings.on_redis_error {
            OnRedisError::Reject => {
                self.metrics.error(provider, strategy);
                return Err(error);
            }
            OnRedisError::Allow => QuotaDecision {
                decision: RateLimitDecision::Allowed,
                quota: Quota::full(match strategy {
                    Strategy::Absolute => self.settings.capacity(rate) as f64,
                    Strategy::Suppressed => self.settings.suppression_limits(rate).soft,
                }),
                degraded: true,
            },
            OnRedisError::Local => {
                let rate = rate.scaled(self.settings.local_rate_factor);
                let outcome = match strategy {
                    Strategy::Absolute => {
                        self.fallback.absolute().inc_with_quota(key, &rate, count)
                    }
                    Strategy::Suppressed => {
                        self.fallback.suppressed().inc_with_quota(key, &rate, count)
                    }
                };
                QuotaDecision {
                    degraded: true,
                    ..outcome
                }
            }
        };
        self.metrics
            .decision(provider, strategy, &outcome.decision, true);
        Ok(outcome)
    }

    /// Whether the circuit breaker is open (Redis recently failed to answer).
    pub(crate) fn is_degraded(&self) -> bool {
        self.breaker.is_open()
    }

    /// The error calls get while the breaker is open (starting a probe when one is due), or
    /// `None` when Redis may be asked.
    pub(crate) fn outage(&self) -> Option<TrypemaError> {
        let connection = self.connection.as_ref()?;
        self.breaker.check(connection, self.timeout(), None).err()
    }
}
