//! Sliding-window rate limiting with three providers and two strategies.
//!
//! - [`RateLimiter::local`]: in-process, synchronous, no I/O.
//! - `RateLimiter::redis` (feature `redis-tokio`): shared through Redis, exact, one round trip.
//! - `RateLimiter::hybrid` (feature `redis-tokio`): decided locally, reconciled with Redis.
//!
//! Each provider offers `absolute()` (reject at the limit) and `suppressed()` (shed a growing,
//! random fraction of traffic above the rate).

mod cleanup;
mod clock;
mod decision;
mod error;
mod limiter;
pub mod local;
mod redis_key;
mod settings;
mod store;
mod suppression;
mod window;

#[cfg(feature = "redis-tokio")]
pub mod hybrid;
#[cfg(feature = "redis-tokio")]
pub mod redis;

pub use decision::RateLimitDecision;
pub use error::TrypemaError;
pub use limiter::{RateLimiter, RateLimiterBuilder};
pub use redis_key::RedisKey;
pub use settings::{
    CleanupIntervalMs, HardLimitFactor, RateGroupSizeMs, RateLimit, StaleAfterMs,
    SuppressionFactorCacheMs, SyncIntervalMs, WindowSizeSeconds,
};
