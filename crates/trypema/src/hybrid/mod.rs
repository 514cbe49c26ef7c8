//! The hybrid provider: calls are decided from local state, and a background task reconciles
//! it with Redis every `sync_interval_ms`, all keys of a strategy in one pipelined round trip.
//!
//! - **Absolute** serves calls from leases of quota reserved atomically in the key's Redis
//!   window (same script and key as the `redis` provider), so the instances sharing a key never
//!   admit more than its capacity in any window of Redis server time: zero overshoot.
//! - **Suppressed** decides the shedding factor locally from the window totals last read from
//!   Redis, and admits only from leases of admissions reserved under the hard ceiling the same
//!   way, so the hard ceiling holds across instances too.
//!
//! See `lease.rs` for how leases are sized and returned.

mod absolute;
mod lease;
mod suppressed;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock, Weak,
    },
    time::{Duration, Instant},
};

pub use absolute::AbsoluteHybridRateLimiter;
pub use suppressed::SuppressedHybridRateLimiter;
use tokio::sync::Notify;

use self::lease::LeasePolicy;
use crate::{redis::RedisContext, TrypemaError};

/// `rl.hybrid()`: both strategies, synchronised by one background task.
#[derive(Clone)]
pub struct HybridProvider {
    absolute: AbsoluteHybridRateLimiter,
    suppressed: SuppressedHybridRateLimiter,
    states: (
        Arc<absolute::AbsoluteState>,
        Arc<suppressed::SuppressedState>,
    ),
    context: Arc<RedisContext>,
}

impl HybridProvider {
    pub(crate) fn new(context: Arc<RedisContext>) -> Self {
        let signal = Arc::new(SyncSignal::default());
        let policy = lease_policy(&context);
        let absolute = Arc::new(absolute::AbsoluteState::new(
            context.clone(),
            signal.clone(),
            policy,
        ));
        let suppressed = Arc::new(suppressed::SuppressedState::new(
            context.clone(),
            signal.clone(),
            policy,
        ));
        let task = Arc::new(SyncTask {
            started: OnceLock::new(),
            absolute: Arc::downgrade(&absolute),
            suppressed: Arc::downgrade(&suppressed),
            signal,
            interval: Duration::from_millis(context.settings.sync_interval_ms),
        });
        Self {
            absolute: AbsoluteHybridRateLimiter::new(absolute.clone(), task.clone()),
            suppressed: SuppressedHybridRateLimiter::new(suppressed.clone(), task),
            states: (absolute, suppressed),
            context,
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

    pub(crate) fn context(&self) -> &Arc<RedisContext> {
        &self.context
    }

    pub(crate) fn sweepers(&self) -> Vec<Weak<dyn crate::cleanup::Sweep>> {
        let absolute: Arc<dyn crate::cleanup::Sweep> = self.states.0.clone();
        let suppressed: Arc<dyn crate::cleanup::Sweep> = self.states.1.clone();
        vec![Arc::downgrade(&absolute), Arc::downgrade(&suppressed)]
    }

    /// Gives back every unused lease and pushes pending counts, bounded by the command timeout.
    pub(crate) async fn flush(&self) -> Result<(), TrypemaError> {
        if !self.context.has_connection() {
            return Ok(());
        }
        // A sync round already in flight may still hand out a lease after the first pass: a
        // second pass (after that round's answer, which arrives first on the connection) gives
        // it back too.
        for _ in 0..3 {
            let (absolute, suppressed) =
                futures_util::future::join(self.states.0.flush(), self.states.1.flush()).await;
            absolute.and(suppressed)?;
            if self.states.0.is_settled() && self.states.1.is_settled() {
                break;
            }
            crate::runtime::sleep(std::time::Duration::from_millis(1)).await;
        }
        Ok(())
    }

    /// On drop: the same as [`Self::flush`], in the background, when there is anything to give
    /// back and a runtime to do it on.
    pub(crate) fn flush_in_background(&self) {
        if !self.context.has_connection()
            || (self.states.0.is_settled() && self.states.1.is_settled())
        {
            return;
        }
        let provider = self.clone();
        let _ = crate::runtime::spawn(async move {
            let _ = provider.flush().await;
        });
    }
}

/// How a hybrid call was decided: from the shared state, or by the outage policy.
pub(crate) enum Outcome {
    Shared(crate::RateLimitDecision),
    Degraded(crate::QuotaDecision),
}

impl Outcome {
    pub(crate) fn decision(&self) -> crate::RateLimitDecision {
        match self {
            Self::Shared(decision) => *decision,
            Self::Degraded(outcome) => outcome.decision,
        }
    }
}

/// Leases last a twentieth of the window (long enough to serve many calls per round trip,
/// short enough that their delayed release costs little), and at least four sync intervals so
/// renewals, which happen at syncs, come before a lease ends.
fn lease_policy(context: &RedisContext) -> LeasePolicy {
    let settings = context.settings();
    let lease_ms = (settings.window_ms / 20)
        .max(4 * settings.sync_interval_ms)
        .min(settings.window_ms);
    LeasePolicy {
        lease_ms,
        // Renewed while a quarter is left: a round that carries many keys can take several
        // intervals, and a lease that ends before its successor arrives makes callers wait.
        renew_margin_ms: (2 * settings.sync_interval_ms).max(lease_ms / 4),
        refusal_ms: (lease_ms / 4).max(settings.sync_interval_ms),
        min_refusal_ms: settings.sync_interval_ms.min(lease_ms / 4).max(1),
        release_used: false,
    }
}

/// Wakes the sync task early, when a caller needs Redis before the next interval.
#[derive(Default)]
pub(crate) struct SyncSignal {
    wake: Notify,
}

impl SyncSignal {
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }
}

/// What a key's entry offers callers waiting for the sync task to handle it.
#[derive(Default)]
pub(crate) struct Service {
    served: AtomicU64,
    done: Notify,
    failure: Mutex<Option<TrypemaError>>,
}

impl Service {
    /// Asks for a sync now and waits until a round has handled this key, or until `deadline`.
    /// `register` marks what the caller needs; it runs after the round count is read, so a
    /// round that handles the need is never missed.
    pub(crate) async fn wait(
        &self,
        signal: &SyncSignal,
        deadline: Instant,
        limit: Duration,
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
                signal.wake();
                done.await;
            }
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if crate::runtime::timeout(left, waiting).await.is_none() {
            return Err(TrypemaError::RedisTimeout(limit.as_millis() as u64));
        }
        match self
            .failure
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
        {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Called by the sync task once it has handled the key.
    pub(crate) fn finish(&self, failure: Option<TrypemaError>) {
        *self
            .failure
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = failure;
        self.served.fetch_add(1, Ordering::AcqRel);
        self.done.notify_waiters();
    }
}

/// The background task, started on first use (it needs the caller's runtime) and ended when
/// the limiter is dropped.
pub(crate) struct SyncTask {
    started: OnceLock<Result<(), TrypemaError>>,
    absolute: Weak<absolute::AbsoluteState>,
    suppressed: Weak<suppressed::SuppressedState>,
    signal: Arc<SyncSignal>,
    interval: Duration,
}

impl SyncTask {
    pub(crate) fn ensure_started(self: &Arc<Self>) -> Result<(), TrypemaError> {
        self.started
            .get_or_init(|| {
                let task = Arc::downgrade(self);
                crate::runtime::spawn(async move {
                    loop {
                        let Some(task) = task.upgrade() else { break };
                        let (Some(absolute), Some(suppressed)) =
                            (task.absolute.upgrade(), task.suppressed.upgrade())
                        else {
                            break;
                        };
                        // Hold no strong reference while waiting, so a dropped limiter ends
                        // the task.
                        let (signal, interval) = (task.signal.clone(), task.interval);
                        drop(task);
                        // Concurrently, so a stuck round of one strategy does not hold up the
                        // other.
                        futures_util::future::join(absolute.sync(), suppressed.sync()).await;
                        drop((absolute, suppressed));
                        let sleep = crate::runtime::sleep(interval);
                        let woken = signal.wake.notified();
                        futures_util::pin_mut!(sleep, woken);
                        futures_util::future::select(sleep, woken).await;
                    }
                })
            })
            .clone()
    }
}

/// The deadline of a call that may wait for Redis: the command timeout from now.
pub(crate) fn deadline(context: &RedisContext) -> (Instant, Duration) {
    let limit = Duration::from_millis(context.settings.command_timeout_ms);
    (Instant::now() + limit, limit)
}

/// Runs `read` while no sync round of the strategy is in flight, within the command timeout as
/// a whole. A round in flight may have reserved a lease in Redis that it has not handed out
/// yet: a read between the two would count those units as used by nobody.
pub(crate) async fn between_rounds<T>(
    round: &tokio::sync::Mutex<()>,
    context: &RedisContext,
    read: impl std::future::Future<Output = Result<T, TrypemaError>>,
) -> Result<T, TrypemaError> {
    let (_, limit) = deadline(context);
    let guarded = async {
        let _round = round.lock().await;
        read.await
    };
    crate::runtime::timeout(limit, guarded)
        .await
        .unwrap_or(Err(TrypemaError::RedisTimeout(limit.as_millis() as u64)))
}
