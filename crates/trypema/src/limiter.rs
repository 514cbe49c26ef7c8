use std::{sync::Arc, time::Duration};

use crate::{
    cleanup::Cleanup,
    clock::Clock,
    local::LocalProvider,
    metrics::{Metrics, MetricsSnapshot},
    redis_key::RedisKey,
    settings::{MAX_DURATION_MS, MAX_WINDOW_BUCKETS},
    suppression::SuppressionLimits,
    CleanupIntervalMs, CommandTimeoutMs, HardLimitFactor, LocalRateFactor, OnRedisError,
    RateGroupSizeMs, RateLimit, StaleAfterMs, SuppressionFactorCacheMs, SyncIntervalMs,
    TrypemaError, WindowSizeSeconds,
};

/// The largest count or capacity the scripts handle exactly (Redis's Lua numbers are doubles).
pub(crate) const MAX_SAFE_COUNT: u64 = (1 << 53) - 1;

/// Validated configuration shared by every provider of one limiter.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) window: WindowSizeSeconds,
    pub(crate) window_ms: u64,
    /// The bucket coalescing in force: the configured `rate_group_size_ms`, raised so that a
    /// window never has more than `MAX_WINDOW_BUCKETS` buckets.
    pub(crate) group_ms: u64,
    pub(crate) hard_limit_factor: f64,
    pub(crate) suppression_cache_ms: u64,
    pub(crate) stale_after_ms: u64,
    #[cfg_attr(not(trypema_redis), allow(dead_code))]
    pub(crate) sync_interval_ms: u64,
    #[cfg_attr(not(trypema_redis), allow(dead_code))]
    pub(crate) command_timeout_ms: u64,
    #[cfg_attr(not(trypema_redis), allow(dead_code))]
    pub(crate) on_redis_error: OnRedisError,
    #[cfg_attr(not(trypema_redis), allow(dead_code))]
    pub(crate) local_rate_factor: f64,
    pub(crate) clock: Clock,
}

impl Settings {
    /// The absolute strategy's capacity: `floor(window × rate)`.
    #[inline]
    pub(crate) fn capacity(&self, rate: &RateLimit) -> u64 {
        // A product within a relative 1e-12 of a whole number stands for that number (100 × 0.29
        // is 28.999999999999996 in binary floating point); anything else is rounded down. `as`
        // saturates; the cap keeps every total an exact double in the scripts.
        let exact = self.window.get() as f64 * rate.get();
        let nearest = exact.round();
        let capacity = if (nearest - exact).abs() <= exact.abs() * 1e-12 {
            nearest
        } else {
            exact.floor()
        };
        (capacity as u64).min(MAX_SAFE_COUNT)
    }

    pub(crate) fn suppression_limits(&self, rate: &RateLimit) -> SuppressionLimits {
        SuppressionLimits::new(rate.get(), self.window.get(), self.hard_limit_factor)
    }
}

/// The entry point: owns the providers and the background cleanup of idle keys.
///
/// Dropping it stops its cleanup and (for the hybrid provider) its Redis sync, and gives back
/// unused hybrid leases on a best-effort basis; `RateLimiter::close` (with a Redis feature)
/// does the same and waits.
pub struct RateLimiter {
    local: LocalProvider,
    #[cfg(trypema_redis)]
    redis: crate::redis::RedisProvider,
    #[cfg(trypema_redis)]
    hybrid: crate::hybrid::HybridProvider,
    metrics: Arc<Metrics>,
    _cleanup: Cleanup,
}

impl RateLimiter {
    /// A builder for a limiter with only the local provider.
    pub fn local_builder() -> RateLimiterBuilder {
        RateLimiterBuilder::default()
    }

    /// A builder for a limiter with only the local provider.
    #[cfg(not(trypema_redis))]
    pub fn builder() -> RateLimiterBuilder {
        Self::local_builder()
    }

    /// A builder for a limiter whose `redis` and `hybrid` providers use `connection`.
    #[cfg(trypema_redis)]
    pub fn builder(connection: redis::aio::ConnectionManager) -> RateLimiterBuilder {
        RateLimiterBuilder {
            connection: Some(crate::redis::connection::Connection::Single(connection)),
            ..RateLimiterBuilder::default()
        }
    }

    /// A builder for a limiter whose `redis` and `hybrid` providers use a Redis Cluster
    /// (redis-rs's async cluster connection routes each call to the node of its key's slot).
    #[cfg(trypema_redis)]
    pub fn cluster_builder(
        connection: redis::cluster_async::ClusterConnection,
    ) -> RateLimiterBuilder {
        RateLimiterBuilder {
            connection: Some(crate::redis::connection::Connection::Cluster(connection)),
            ..RateLimiterBuilder::default()
        }
    }

    /// A builder for a limiter whose `redis` and `hybrid` providers use the master that
    /// `client`'s Sentinels name (connected with `config`'s timeouts), found again after a
    /// failover.
    #[cfg(trypema_redis)]
    pub fn sentinel_builder(
        client: redis::sentinel::SentinelClient,
        config: redis::AsyncConnectionConfig,
    ) -> RateLimiterBuilder {
        RateLimiterBuilder {
            connection: Some(crate::redis::connection::Connection::Sentinel(
                std::sync::Arc::new(crate::redis::connection::SentinelConnection::new(
                    client, config,
                )),
            )),
            ..RateLimiterBuilder::default()
        }
    }

    /// The configured window length.
    pub fn window_size_seconds(&self) -> u64 {
        self.local.window_size_seconds()
    }

    /// In-process limits: synchronous, no I/O.
    pub fn local(&self) -> &LocalProvider {
        &self.local
    }

    /// Limits shared through Redis, one round trip per call.
    #[cfg(trypema_redis)]
    pub fn redis(&self) -> &crate::redis::RedisProvider {
        &self.redis
    }

    /// Limits shared through Redis, decided locally and synchronised in the background.
    #[cfg(trypema_redis)]
    pub fn hybrid(&self) -> &crate::hybrid::HybridProvider {
        &self.hybrid
    }

    /// What the limiter has decided so far, and how its Redis round trips went.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.metrics.snapshot()
    }

    /// Pushes the hybrid provider's pending counts and gives back its unused leases, bounded by
    /// the command timeout. The limiter keeps working afterwards (new calls take new leases);
    /// call it before dropping the limiter so other instances get the quota at once.
    #[cfg(trypema_redis)]
    pub async fn close(&self) -> Result<(), TrypemaError> {
        self.hybrid.flush().await
    }

    /// Whether the circuit breaker in front of Redis is open (Redis recently did not answer).
    #[cfg(trypema_redis)]
    pub fn is_redis_degraded(&self) -> bool {
        self.hybrid.context().is_degraded()
    }
}

#[cfg(trypema_redis)]
impl Drop for RateLimiter {
    fn drop(&mut self) {
        self.hybrid.flush_in_background();
    }
}

/// Collects settings; [`RateLimiterBuilder::build`] validates them all.
#[derive(Default)]
pub struct RateLimiterBuilder {
    window_size_seconds: Option<u64>,
    rate_group_size_ms: Option<u64>,
    hard_limit_factor: Option<f64>,
    suppression_factor_cache_ms: Option<u64>,
    redis_prefix: Option<String>,
    sync_interval_ms: Option<u64>,
    cleanup_interval_ms: Option<u64>,
    stale_after_ms: Option<u64>,
    command_timeout_ms: Option<u64>,
    on_redis_error: OnRedisError,
    local_rate_factor: Option<f64>,
    clock: Option<quanta::Clock>,
    #[cfg(trypema_redis)]
    pub(crate) connection: Option<crate::redis::connection::Connection>,
}

impl RateLimiterBuilder {
    /// Sliding window length in seconds (1 to 10^9, default 10).
    pub fn window_size_seconds(mut self, value: u64) -> Self {
        self.window_size_seconds = Some(value);
        self
    }

    /// Bucket coalescing in milliseconds (≥ 1 and at most the window, default 100). A window is
    /// never divided into more than 500 buckets: finer settings are coarsened to `window / 500`.
    pub fn rate_group_size_ms(mut self, value: u64) -> Self {
        self.rate_group_size_ms = Some(value);
        self
    }

    /// Suppressed strategy's hard ceiling as a multiple of its soft capacity (≥ 1.0, default 1.0).
    pub fn hard_limit_factor(mut self, value: f64) -> Self {
        self.hard_limit_factor = Some(value);
        self
    }

    /// How long a key's suppression factor may be reused (≥ 1, default 100 ms).
    pub fn suppression_factor_cache_ms(mut self, value: u64) -> Self {
        self.suppression_factor_cache_ms = Some(value);
        self
    }

    /// First part of every Redis key (1–255 bytes, no `:`; default `trypema`).
    pub fn redis_prefix(mut self, value: impl Into<String>) -> Self {
        self.redis_prefix = Some(value.into());
        self
    }

    /// Hybrid provider's reconciliation period (≥ 1 and at most the window, default 10 ms).
    pub fn sync_interval_ms(mut self, value: u64) -> Self {
        self.sync_interval_ms = Some(value);
        self
    }

    /// How often cleanup looks for idle keys (≥ 1, default 10 000 ms).
    pub fn cleanup_interval_ms(mut self, value: u64) -> Self {
        self.cleanup_interval_ms = Some(value);
        self
    }

    /// Idle time after which a key's local state is dropped (at least the window, which is the
    /// default).
    pub fn stale_after_ms(mut self, value: u64) -> Self {
        self.stale_after_ms = Some(value);
        self
    }

    /// How long one Redis round trip may take (default 2000 ms); also bounds how long a hybrid
    /// call waits for Redis.
    pub fn command_timeout_ms(mut self, value: u64) -> Self {
        self.command_timeout_ms = Some(value);
        self
    }

    /// What Redis-backed calls do while Redis is unreachable (default [`OnRedisError::Reject`]).
    pub fn on_redis_error(mut self, value: OnRedisError) -> Self {
        self.on_redis_error = value;
        self
    }

    /// Under [`OnRedisError::Local`], the share of each key's rate this process allows on its
    /// own (default 1.0; e.g. 1/3 with three instances).
    pub fn local_rate_factor(mut self, value: f64) -> Self {
        self.local_rate_factor = Some(value);
        self
    }

    /// Replaces the time source, so tests can move time by hand (`quanta::Clock::mock()`).
    #[doc(hidden)]
    pub fn clock(mut self, clock: quanta::Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Checks every setting without building anything.
    pub fn validate(&self) -> Result<(), TrypemaError> {
        self.settings().map(drop)
    }

    fn settings(&self) -> Result<(Settings, RedisKey, Duration), TrypemaError> {
        let window = self
            .window_size_seconds
            .map_or(Ok(WindowSizeSeconds::default()), WindowSizeSeconds::new)?;
        let window_ms = window.get() * 1000;
        let group = self
            .rate_group_size_ms
            .map_or(Ok(RateGroupSizeMs::default()), RateGroupSizeMs::new)?;
        if group.get() > window_ms {
            return Err(TrypemaError::InvalidRateGroupSize(group.get()));
        }
        let hard_limit_factor = self
            .hard_limit_factor
            .map_or(Ok(HardLimitFactor::default()), HardLimitFactor::new)?;
        let suppression_cache = self.suppression_factor_cache_ms.map_or(
            Ok(SuppressionFactorCacheMs::default()),
            SuppressionFactorCacheMs::new,
        )?;
        let sync_interval = self
            .sync_interval_ms
            .map_or(Ok(SyncIntervalMs::default()), SyncIntervalMs::new)?;
        if sync_interval.get() > window_ms {
            return Err(TrypemaError::InvalidSyncInterval(sync_interval.get()));
        }
        let cleanup_interval = self
            .cleanup_interval_ms
            .map_or(Ok(CleanupIntervalMs::default()), CleanupIntervalMs::new)?;
        let stale_after = StaleAfterMs::new(self.stale_after_ms.unwrap_or(window_ms))?;
        if stale_after.get() < window_ms || stale_after.get() > MAX_DURATION_MS {
            return Err(TrypemaError::InvalidStaleAfter(stale_after.get()));
        }
        let command_timeout = self
            .command_timeout_ms
            .map_or(Ok(CommandTimeoutMs::default()), CommandTimeoutMs::new)?;
        let local_rate_factor = self
            .local_rate_factor
            .map_or(Ok(LocalRateFactor::default()), LocalRateFactor::new)?;
        let prefix = match &self.redis_prefix {
            Some(prefix) => RedisKey::prefix(prefix.clone())?,
            None => RedisKey::default_prefix(),
        };
        let settings = Settings {
            window,
            window_ms,
            group_ms: group.get().max(window_ms.div_ceil(MAX_WINDOW_BUCKETS)),
            hard_limit_factor: hard_limit_factor.get(),
            suppression_cache_ms: suppression_cache.get(),
            stale_after_ms: stale_after.get(),
            sync_interval_ms: sync_interval.get(),
            command_timeout_ms: command_timeout.get(),
            on_redis_error: self.on_redis_error,
            local_rate_factor: local_rate_factor.get(),
            clock: Clock::new(self.clock.clone().unwrap_or_default()),
        };
        Ok((
            settings,
            prefix,
            Duration::from_millis(cleanup_interval.get()),
        ))
    }

    /// Validates every setting, then schedules the background cleanup. Fails with
    /// `TrypemaError::Internal` if the cleanup thread cannot be started.
    pub fn build(self) -> Result<RateLimiter, TrypemaError> {
        let (settings, prefix, cleanup_interval) = self.settings()?;
        let metrics = Arc::new(Metrics::default());
        let local = LocalProvider::new(settings.clone(), metrics.clone());
        #[cfg_attr(not(trypema_redis), allow(unused_mut))]
        let mut sweepers = local.sweepers();
        #[cfg(not(trypema_redis))]
        let _ = prefix;
        #[cfg(trypema_redis)]
        let (redis, hybrid) = {
            let context =
                crate::redis::RedisContext::new(self.connection, prefix, settings, metrics.clone());
            let hybrid = crate::hybrid::HybridProvider::new(context.clone());
            sweepers.extend(hybrid.sweepers());
            (crate::redis::RedisProvider::new(context), hybrid)
        };
        Ok(RateLimiter {
            local,
            #[cfg(trypema_redis)]
            redis,
            #[cfg(trypema_redis)]
            hybrid,
            metrics,
            _cleanup: Cleanup::start(cleanup_interval, sweepers)?,
        })
    }

    /// Like [`Self::build`], then checks that Redis answers, the credentials work and the user
    /// may run every command the scripts need, failing with `TRYPEMA_REDIS` or
    /// `TRYPEMA_REDIS_AUTH` otherwise.
    #[cfg(trypema_redis)]
    pub async fn build_verified(self) -> Result<RateLimiter, TrypemaError> {
        let limiter = self.build()?;
        limiter.hybrid.context().verify().await?;
        Ok(limiter)
    }
}
