//! The in-process provider: synchronous, no I/O, state in a sharded concurrent map.

mod absolute;
mod suppressed;

use std::sync::Arc;

pub use absolute::AbsoluteLocalRateLimiter;
pub use suppressed::SuppressedLocalRateLimiter;

use crate::{limiter::Settings, metrics::Metrics, TrypemaError};

/// Longest key the local provider accepts, matching the Redis key limit so that a key that
/// works locally also works with the other providers.
pub const MAX_KEY_BYTES: usize = 255;

/// Checks a key for the local provider: 1 to [`MAX_KEY_BYTES`] bytes.
pub fn validate_key(key: &str) -> Result<&str, TrypemaError> {
    if key.is_empty() {
        Err(TrypemaError::InvalidKey("a key must not be empty".into()))
    } else if key.len() > MAX_KEY_BYTES {
        Err(key_too_long(key.len()))
    } else {
        Ok(key)
    }
}

/// The error for a key of `len` bytes, more than [`MAX_KEY_BYTES`].
pub fn key_too_long(len: usize) -> TrypemaError {
    TrypemaError::InvalidKey(format!(
        "a key must be at most {MAX_KEY_BYTES} bytes, got {len}"
    ))
}

/// `rl.local()`: both strategies, each with its own state.
#[derive(Clone)]
pub struct LocalProvider {
    absolute: Arc<AbsoluteLocalRateLimiter>,
    suppressed: Arc<SuppressedLocalRateLimiter>,
}

impl LocalProvider {
    pub(crate) fn new(settings: Settings, metrics: Arc<Metrics>) -> Self {
        Self {
            absolute: Arc::new(AbsoluteLocalRateLimiter::new(
                settings.clone(),
                metrics.clone(),
            )),
            suppressed: Arc::new(SuppressedLocalRateLimiter::new(settings, metrics)),
        }
    }

    pub(crate) fn window_size_seconds(&self) -> u64 {
        self.absolute.window_size_seconds()
    }

    /// The strategy that rejects at the limit.
    pub fn absolute(&self) -> &AbsoluteLocalRateLimiter {
        &self.absolute
    }

    /// The strategy that sheds a growing fraction of traffic above the rate.
    pub fn suppressed(&self) -> &SuppressedLocalRateLimiter {
        &self.suppressed
    }

    pub(crate) fn sweepers(&self) -> Vec<std::sync::Weak<dyn crate::cleanup::Sweep>> {
        let absolute: Arc<dyn crate::cleanup::Sweep> = self.absolute.clone();
        let suppressed: Arc<dyn crate::cleanup::Sweep> = self.suppressed.clone();
        vec![Arc::downgrade(&absolute), Arc::downgrade(&suppressed)]
    }
}
