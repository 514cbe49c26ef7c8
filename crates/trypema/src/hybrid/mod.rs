//! The hybrid provider: decisions are made from local state, and a background task reconciles
//! that state with Redis every `sync_interval_ms`, all keys of a strategy in one pipelined
//! round trip.
//!
//! - **Absolute** works on leases: an instance reserves quota for a key from the Redis window
//!   (atomically, by the same script and keys as the `redis` provider), serves calls from it
//!   without I/O, and gives back what it did not use when the lease ends. The reservation is
//!   counted in Redis for a full window after the lease ends, so the instances sharing a key
//!   never admit more than its capacity in any window: the overshoot is zero (up to the error
//!   of the clock anchor, see `redis::server_clock`).
//! - **Suppressed** decides locally from the window totals last read from Redis plus its own
//!   calls since, and pushes its observed / declined counts at every sync. Instances see each
//!   other's traffic one sync interval late, so between syncs each may admit what the shared
//!   factor allows on its own view.

mod absolute;
mod suppressed;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock, Weak,
    },
    time::Duration,
};

pub use absolute::AbsoluteHybridRateLimiter;
pub use suppressed::SuppressedHybridRateLimiter;
use tokio::sync::Notify;

use crate::{redis::RedisContext, TrypemaError};

/// `rl.hybrid()`: both strategies, synchronised by one background task.
#[derive(Clone)]
pub struct HybridProvider {
    absolute: AbsoluteHybridRateLimiter,
    suppressed: SuppressedHybridRateLimiter,
}

impl HybridProvider {
    pub(crate) fn new(redis: Arc<RedisContext>) -> Self {
        let signal = Arc::new(SyncSignal::new());
        let absolute = Arc::new(absolute::AbsoluteState::new(redis.clone(), signal.clone()));
        let suppressed = Arc::new(suppressed::SuppressedState::new(redis, signal.clone()));
        let task = Arc::new(SyncTask {
            started: OnceLock::new(),
            absolute: Arc::downgrade(&absolute),
            suppressed: Arc::downgrade(&suppressed),
            signal,
        });
        Self {
            absolute: AbsoluteHybridRateLimiter::new(absolute, task.clone()),
            suppressed: SuppressedHybridRateLimiter::new(suppressed, task),
        }
    }

    /// The strategy that rejects at the limit, with zero overshoot across instances.
    pub fn absolute(&self) -> &AbsoluteHybridRateLimiter {
        &self.absolute
    }

    /// The strategy that sheds a growing fraction of traffic above the rate.
    pub fn suppressed(&self) -> &SuppressedHybridRateLimiter {
        &self.suppressed
    }

    pub(crate) fn sweepers(&self) -> Vec<Weak<dyn crate::cleanup::Sweep>> {
        vec![self.absolute.sweeper(), self.suppressed.sweeper()]
    }
}

/// Wakes the sync task early, when a caller needs Redis before the next interval.
pub(crate) struct SyncSignal {
    wake: Notify,
}

impl SyncSignal {
    fn new() -> Self {
        Self {
            wake: Notify::new(),
        }
    }
}

/// What a key's entry offers callers waiting for the sync task to handle it.
#[derive(Default)]
pub(crate) struct Service {
    served: AtomicU64,
    done: Notify,
    failure: Mutex<Option<String>>,
}

impl Service {
    /// Asks for a sync now and waits until it has handled this key (each key has its own
    /// wake-up, so a round wakes only the callers it served). Bounded: the wait ends with an
    /// error if Redis does not answer in time.
    /// `register` marks what the caller needs; it runs after the current count is read, so a
    /// round that handles the need is never missed.
    pub(crate) async fn wait(
        &self,
        signal: &SyncSignal,
        register: impl FnOnce(),
    ) -> Result<(), TrypemaError> {
        let before = self.served.load(Ordering::Acquire);
        register();
        let waiting = async {
            loop {
                let done = self.done.notified();
                tokio::pin!(done);
                done.as_mut().enable();
                if self.served.load(Ordering::Acquire) != before {
                    break;
                }
                signal.wake.notify_one();
                done.await;
            }
        };
        tokio::time::timeout(WAIT_LIMIT, waiting)
            .await
            .map_err(|_| sync_error("no answer from Redis in time".into()))?;
        match self
            .failure
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
        {
            Some(message) => Err(sync_error(message)),
            None => Ok(()),
        }
    }

    /// Called by the sync task once it has handled the key.
    pub(crate) fn finish(&self, failure: Option<String>) {
        *self
            .failure
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = failure;
        self.served.fetch_add(1, Ordering::AcqRel);
        self.done.notify_waiters();
    }
}

/// Longer than a connect plus a response timeout, so a wait ends with Redis's own error.
pub(crate) const WAIT_LIMIT: Duration = Duration::from_secs(10);

/// A script's `{a, b, c, d}` reply (negative numbers read as 0), or why it is not one.
pub(crate) fn four_numbers(value: Option<&redis::Value>, what: &str) -> Result<[u64; 4], String> {
    match value {
        Some(redis::Value::Array(items)) if items.len() == 4 => {
            let mut numbers = [0u64; 4];
            for (slot, item) in numbers.iter_mut().zip(items) {
                match item {
                    redis::Value::Int(number) => *slot = (*number).max(0) as u64,
                    other => return Err(format!("unexpected {what} reply {other:?}")),
                }
            }
            Ok(numbers)
        }
        Some(redis::Value::ServerError(error)) => Err(format!("{error:?}")),
        other => Err(format!("unexpected {what} reply {other:?}")),
    }
}

pub(crate) fn sync_error(message: String) -> TrypemaError {
    TrypemaError::Redis(redis::RedisError::from((
        redis::ErrorKind::Io,
        "hybrid sync with Redis failed",
        message,
    )))
}

/// The background task, started on first use (it needs the caller's Tokio runtime) and ended
/// when the limiter is dropped.
pub(crate) struct SyncTask {
    started: OnceLock<()>,
    absolute: Weak<absolute::AbsoluteState>,
    suppressed: Weak<suppressed::SuppressedState>,
    signal: Arc<SyncSignal>,
}

impl SyncTask {
    pub(crate) fn ensure_started(self: &Arc<Self>) {
        self.started.get_or_init(|| {
            let task = Arc::downgrade(self);
            tokio::spawn(async move {
                while let Some(task) = task.upgrade() {
                    let (Some(absolute), Some(suppressed)) =
                        (task.absolute.upgrade(), task.suppressed.upgrade())
                    else {
                        break;
                    };
                    let interval = absolute.sync_interval();
                    // Hold no strong reference while waiting, so a dropped limiter ends the task.
                    let signal = task.signal.clone();
                    drop(task);
                    // Concurrently, so a stuck round of one strategy does not hold up the other.
                    tokio::join!(absolute.sync(), suppressed.sync());
                    drop((absolute, suppressed));
                    tokio::select! {
                        _ = tokio::time::sleep(interval) => {}
                        _ = signal.wake.notified() => {}
                    }
                }
            });
        });
    }
}
