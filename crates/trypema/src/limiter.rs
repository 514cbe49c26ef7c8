use std::time::Duration;

use crate::{
    cleanup::Cleanup, clock::Clock, local::LocalProvider, redis_key::RedisKey,
    suppression::SuppressionLimits, CleanupIntervalMs, HardLimitFactor, RateGroupSizeMs, RateLimit,
    StaleAfterMs, SuppressionFactorCacheMs, SyncIntervalMs, TrypemaError, WindowSizeSeconds,
};

/// Validated configuration shared by every provider of one limiter.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) window: WindowSizeSeconds,
    pub(crate) window_ms: u64,
    pub(crate) group_ms: u64,
    pub(crate) hard_limit_factor: f64,
    pub(crate) suppression_cache_ms: u64,
    pub(crate) stale_after_ms: u64,
    #[cfg_attr(not(feature = "redis-tokio"), allow(dead_code))]
    pub(crate) sync_interval_ms: u64,
    pub(crate) clock: Clock,
}

impl Settings {
    /// The absolute strategy's capacity: `floor(window × rate)`.
    #[inline]
    pub(crate) fn capacity(&self, rate: &RateLimit) -> u64 {
        // The relative nudge keeps products like 100 × 0.29 (28.999999999999996 in binary
        // floating point) at the whole number they stand for. `as` saturates, so an enormous
        // rate gives u64::MAX rather than wrapping.
        (self.window.get() as f64 * rate.get() * (1.0 + 1e-12)).floor() as u64
    }

    pub(crate) fn suppression_limits(&self, rate: &RateLimit) -> SuppressionLimits {
        SuppressionLimits::new(rate.get(), self.window.get(), self.hard_limit_factor)
    }
}

/// The entry point: owns the providers and the background cleanup of idle keys.
///
/// Dropping it stops the cleanup thread.
pub struct RateLimiter {
    local: LocalProvider,
    #[cfg(feature = "redis-tokio")]
    redis: crate::redis::RedisProvider,
    #[cfg(feature = "redis-tokio")]
    hybrid: crate::hybrid::HybridProvider,
    _cleanup: Cleanup,
}

impl RateLimiter {
    /// A builder for a limiter with only the local provider.
    pub fn local_builder() -> RateLimiterBuilder {
        RateLimiterBuilder::default()
    }

    /// A builder for a limiter with only the local provider.
    #[cfg(not(feature = "redis-tokio"))]
    pub fn builder() -> RateLimiterBuilder {
        Self::local_builder()
    }

    /// A builder for a limiter whose `redis` and `hybrid` providers use `connection`.
    #[cfg(feature = "redis-tokio")]
    pub fn builder(connection: redis::aio::ConnectionManager) -> RateLimiterBuilder {
        RateLimiterBuilder {
            connection: Some(connection),
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
    #[cfg(feature = "redis-tokio")]
    pub fn redis(&self) -> &crate::redis::RedisProvider {
        &self.redis
    }

    /// Limits shared through Redis, decided locally and synchronised in the background.
    #[cfg(feature = "redis-tokio")]
    pub fn hybrid(&self) -> &crate::hybrid::HybridProvider {
        &self.hybrid
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
    clock: Option<quanta::Clock>,
    #[cfg(feature = "redis-tokio")]
    connection: Option<redis::aio::ConnectionManager>,
}

impl RateLimiterBuilder {
    /// Sliding window length in seconds (≥ 1, default 10).
    pub fn window_size_seconds(mut self, value: u64) -> Self {
        self.window_size_seconds = Some(value);
        self
    }

    /// Bucket coalescing in milliseconds (≥ 1, default 100).
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

    /// First part of every Redis key (same rules as a key; default `trypema`).
    pub fn redis_prefix(mut self, value: impl Into<String>) -> Self {
        self.redis_prefix = Some(value.into());
        self
    }

    /// Hybrid provider's reconciliation period (≥ 1, default 10 ms).
    pub fn sync_interval_ms(mut self, value: u64) -> Self {
        self.sync_interval_ms = Some(value);
        self
    }

    /// How often cleanup looks for idle keys (≥ 1, default 10 000 ms).
    pub fn cleanup_interval_ms(mut self, value: u64) -> Self {
        self.cleanup_interval_ms = Some(value);
        self
    }

    /// Idle time after which a key's local state is dropped (≥ 1, default: the window).
    pub fn stale_after_ms(mut self, value: u64) -> Self {
        self.stale_after_ms = Some(value);
        self
    }

    /// Replaces the time source, so tests can move time by hand (`quanta::Clock::mock()`).
    #[doc(hidden)]
    pub fn clock(mut self, clock: quanta::Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Validates every setting, then starts the background cleanup.
    pub fn build(self) -> Result<RateLimiter, TrypemaError> {
        let window = self
            .window_size_seconds
            .map_or(Ok(WindowSizeSeconds::default()), WindowSizeSeconds::new)?;
        let group = self
            .rate_group_size_ms
            .map_or(Ok(RateGroupSizeMs::default()), RateGroupSizeMs::new)?;
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
        let cleanup_interval = self
            .cleanup_interval_ms
            .map_or(Ok(CleanupIntervalMs::default()), CleanupIntervalMs::new)?;
        let window_ms = window.get().saturating_mul(1000);
        let stale_after = StaleAfterMs::new(self.stale_after_ms.unwrap_or(window_ms))?;
        let prefix = match self.redis_prefix {
            Some(prefix) => RedisKey::prefix(prefix)?,
            None => RedisKey::default_prefix(),
        };
        #[cfg(not(feature = "redis-tokio"))]
        let _ = prefix;

        let settings = Settings {
            window,
            window_ms,
            group_ms: group.get(),
            hard_limit_factor: hard_limit_factor.get(),
            suppression_cache_ms: suppression_cache.get(),
            stale_after_ms: stale_after.get(),
            sync_interval_ms: sync_interval.get(),
            clock: Clock::new(self.clock.unwrap_or_default()),
        };
        let local = LocalProvider::new(settings.clone());
        #[cfg_attr(not(feature = "redis-tokio"), allow(unused_mut))]
        let mut sweepers = local.sweepers();
        #[cfg(feature = "redis-tokio")]
        let (redis, hybrid) = {
            let context = crate::redis::RedisContext::new(self.connection, prefix, settings);
            let hybrid = crate::hybrid::HybridProvider::new(context.clone());
            sweepers.extend(hybrid.sweepers());
            (crate::redis::RedisProvider::new(context), hybrid)
        };
        Ok(RateLimiter {
            local,
            #[cfg(feature = "redis-tokio")]
            redis,
            #[cfg(feature = "redis-tokio")]
            hybrid,
            _cleanup: Cleanup::start(Duration::from_millis(cleanup_interval.get()), sweepers),
        })
    }
}
