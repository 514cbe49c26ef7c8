//! Sliding-window rate limiting with three providers and two strategies.
//!
//! - [`RateLimiter::local`]: in-process, synchronous, no I/O.
//! - `RateLimiter::redis` (feature `redis-tokio` or `redis-smol`): shared through Redis, exact
//!   in Redis server time, one round trip.
//! - `RateLimiter::hybrid` (same features): decided locally from leases of quota reserved in
//!   Redis, reconciled in the background.
//!
//! Each provider offers `absolute()` (reject at the limit) and `suppressed()` (shed a growing,
//! random fraction of traffic above the rate).

mod cleanup;
mod clock;
mod decision;
mod error;
mod limiter;
pub mod local;
pub mod metrics;
mod redis_key;
mod settings;
mod store;
mod suppression;
mod window;

#[cfg(trypema_redis)]
pub mod hybrid;
#[cfg(trypema_redis)]
pub mod redis;
#[cfg(trypema_redis)]
mod runtime;

#[doc(hidden)]
pub use cleanup::scheduled_limiters;
pub use decision::{Quota, QuotaDecision, RateLimitDecision};
pub use error::TrypemaError;
pub use limiter::{RateLimiter, RateLimiterBuilder};
pub use metrics::MetricsSnapshot;
pub use redis_key::RedisKey;
pub use settings::{
    CleanupIntervalMs, CommandTimeoutMs, HardLimitFactor, LocalRateFactor, OnRedisError,
    RateGroupSizeMs, RateLimit, StaleAfterMs, SuppressionFactorCacheMs, SyncIntervalMs,
    WindowSizeSeconds, MAX_WINDOW_SECONDS,
};
