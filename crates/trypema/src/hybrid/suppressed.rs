use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc, Mutex, Weak,
};

use dashmap::DashMap;

use super::{Service, SyncSignal, SyncTask};
use crate::{
    cleanup::Sweep,
    redis::{suppressed as script, RedisContext, RedisKey},
    suppression::SuppressionLimits,
    RateLimit, RateLimitDecision, TrypemaError,
};

/// Syncs a key far below its soft capacity may skip in a row.
const SKIPPABLE_SYNCS: u32 = 9;

/// Suppressed strategy, hybrid: decided locally on the shared window totals, which are pushed
/// to and read from Redis every sync interval.
#[derive(Clone)]
pub struct SuppressedHybridRateLimiter {
    state: Arc<SuppressedState>,
    task: Arc<SyncTask>,
}

pub(crate) struct SuppressedState {
    redis: Arc<RedisContext>,
    signal: Arc<SyncSignal>,
    entries: DashMap<Box<str>, Arc<SharedEntry>, ahash::RandomState>,
}

struct SharedEntry {
    view: Mutex<SharedView>,
    /// A caller needs a fresh view from Redis.
    wanted: AtomicBool,
    last_seen: AtomicU64,
    service: Service,
}

/// The window as this instance sees it: Redis's totals at the last sync, plus the calls this
/// instance decided since (`pending`) or sent without an answer yet (`sending`).
struct SharedView {
    /// `None` until Redis has answered once.
    limits: Option<SuppressionLimits>,
    rate: f64,
    synced_at: u64,
    observed: u64,
    declined: u64,
    last_second: u64,
    pending_observed: u64,
    pending_declined: u64,
    sending_observed: u64,
    sending_declined: u64,
    /// Syncs skipped in a row while far below the soft capacity.
    skipped: u32,
}

impl SharedView {
    fn observed(&self) -> u64 {
        self.observed + self.sending_observed + self.pending_observed
    }

    fn accepted(&self) -> u64 {
        self.observed() - (self.declined + self.sending_declined + self.pending_declined)
    }

    fn factor(&self, limits: &SuppressionLimits, accepted: u64) -> f64 {
        limits.factor(accepted, || {
            let recent = self.last_second + self.sending_observed + self.pending_observed;
            let perceived = (self.observed() as f64 / limits.window_seconds).max(recent as f64);
            if perceived <= 0.0 {
                0.0
            } else {
                (1.0 - limits.rate / perceived).clamp(0.0, 1.0)
            }
        })
    }

    fn inc(&mut self, limits: &SuppressionLimits, count: u64) -> RateLimitDecision {
        let accepted = self.accepted();
        self.pending_observed += count;
        let admitted_if_allowed = accepted.saturating_add(count) as f64;
        if admitted_if_allowed <= limits.soft {
            return RateLimitDecision::Allowed;
        }
        let (suppression_factor, is_allowed) = if admitted_if_allowed > limits.hard {
            (1.0, false)
        } else {
            let factor = self.factor(limits, accepted);
            (factor, rand::random::<f64>() >= factor)
        };
        if !is_allowed {
            self.pending_declined += count;
        }
        RateLimitDecision::Suppressed {
            suppression_factor,
            is_allowed,
        }
    }
}

impl SuppressedState {
    pub(crate) fn new(redis: Arc<RedisContext>, signal: Arc<SyncSignal>) -> Self {
        Self {
            redis,
            signal,
            entries: DashMap::with_hasher(ahash::RandomState::new()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.redis.settings().clock.now_ms()
    }

    /// A view older than a window says nothing about the window now.
    fn usable(&self, view: &SharedView, now: u64) -> Option<SuppressionLimits> {
        let limits = view.limits?;
        (now.saturating_sub(view.synced_at) <= self.redis.settings().window_ms).then_some(limits)
    }

    /// Pushes every key's new counts and reads back the window totals, in one round trip.
    pub(crate) async fn sync(&self) {
        let now = self.now_ms();
        let settings = self.redis.settings();
        let mut work = Vec::new();
        for item in self.entries.iter() {
            let entry = item.value();
            let mut view = entry
                .view
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            let wanted = entry.wanted.swap(false, Ordering::AcqRel);
            if !wanted && view.pending_observed == 0 && view.pending_declined == 0 {
                continue;
            }
            // Far below the soft capacity no decision depends on the other instances yet, so
            // such a key pushes its counts only every tenth interval: a busy key then costs
            // Redis ten calls a second instead of a hundred.
            let far_below = view
                .limits
                .is_some_and(|limits| (view.accepted() as f64) < limits.soft / 2.0);
            if !wanted && far_below && view.skipped < SKIPPABLE_SYNCS {
                view.skipped += 1;
                continue;
            }
            view.skipped = 0;
            view.sending_observed = view.pending_observed;
            view.sending_declined = view.pending_declined;
            view.pending_observed = 0;
            view.pending_declined = 0;
            let call = script::script_call(
                settings,
                script::SYNC,
                view.rate,
                view.sending_observed,
                view.sending_declined as f64,
            );
            drop(view);
            work.push((item.key().to_string(), entry.clone(), call));
        }
        if work.is_empty() {
            return;
        }
        let calls: Vec<_> = work
            .iter()
            .map(|(key, _, args)| {
                let key =
                    RedisKey::new(key.as_str()).expect("keys are validated before they are stored");
                (self.redis.entity_keys(&key, "s"), *args)
            })
            .collect();
        let results = self
            .redis
            .run_batch(&script::SCRIPT, script::SOURCE, &calls)
            .await;
        for (index, (_, entry, _)) in work.iter().enumerate() {
            let outcome = match &results {
                Ok(values) => super::four_numbers(values.get(index), "sync"),
                Err(error) => Err(error.to_string()),
            };
            let mut view = entry
                .view
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            match outcome {
                Ok([observed, declined, last_second, rate]) => {
                    view.observed = observed;
                    view.declined = declined;
                    view.last_second = last_second;
                    if rate > 0 {
                        // The rate that sticks is the one stored in Redis, whoever set it.
                        view.rate = rate as f64 / (1u64 << 20) as f64;
                        view.limits = Some(SuppressionLimits::new(
                            view.rate,
                            settings.window.get(),
                            settings.hard_limit_factor,
                        ));
                    } else {
                        view.limits = view.limits.or(Some(SuppressionLimits::new(
                            view.rate,
                            settings.window.get(),
                            settings.hard_limit_factor,
                        )));
                    }
                    view.synced_at = now;
                    view.sending_observed = 0;
                    view.sending_declined = 0;
                    drop(view);
                    entry.service.finish(None);
                }
                Err(message) => {
                    // Keep the counts: they are sent again with the next sync.
                    view.pending_observed += view.sending_observed;
                    view.pending_declined += view.sending_declined;
                    view.sending_observed = 0;
                    view.sending_declined = 0;
                    drop(view);
                    entry.service.finish(Some(message));
                }
            }
        }
    }
}

impl SuppressedHybridRateLimiter {
    pub(crate) fn new(state: Arc<SuppressedState>, task: Arc<SyncTask>) -> Self {
        Self { state, task }
    }

    pub(crate) fn sweeper(&self) -> Weak<dyn Sweep> {
        let state: Arc<dyn Sweep> = self.state.clone();
        Arc::downgrade(&state)
    }

    /// Decides from the local view alone when it is recent enough (`None` otherwise).
    /// `key` must be a valid [`RedisKey`].
    pub fn try_inc_locally(&self, key: &str, count: u64) -> Option<RateLimitDecision> {
        let now = self.state.now_ms();
        let entry = self.state.entries.get(key)?;
        entry.last_seen.store(now, Ordering::Relaxed);
        let mut view = entry
            .view
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let limits = self.state.usable(&view, now)?;
        Some(view.inc(&limits, count))
    }

    /// Records `count` as observed for `key` and decides whether to admit it, from local state
    /// (waiting for one sync the first time a key is seen, or after it was idle for a window).
    pub async fn inc(
        &self,
        key: &RedisKey,
        rate: &RateLimit,
        count: u64,
    ) -> Result<RateLimitDecision, TrypemaError> {
        if let Some(decision) = self.try_inc_locally(key.as_str(), count) {
            return Ok(decision);
        }
        let entry = self.refreshed(key, rate).await?;
        let mut view = entry
            .view
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let limits = view
            .limits
            .unwrap_or_else(|| self.state.redis.settings().suppression_limits(rate));
        Ok(view.inc(&limits, count))
    }

    /// The key's current suppression factor (0 for a key with no state); records nothing.
    pub async fn get_suppression_factor(&self, key: &RedisKey) -> Result<f64, TrypemaError> {
        let now = self.state.now_ms();
        if let Some(entry) = self.state.entries.get(key.as_str()) {
            let view = entry
                .view
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            if let Some(limits) = self.state.usable(&view, now) {
                return Ok(view.factor(&limits, view.accepted()));
            }
        }
        crate::redis::SuppressedRedisRateLimiter::new(self.state.redis.clone())
            .get_suppression_factor(key)
            .await
    }

    /// The key's entry after one sync has read its totals from Redis.
    async fn refreshed(
        &self,
        key: &RedisKey,
        rate: &RateLimit,
    ) -> Result<Arc<SharedEntry>, TrypemaError> {
        self.task.ensure_started();
        let now = self.state.now_ms();
        let entry = self
            .state
            .entries
            .entry(Box::from(key.as_str()))
            .or_insert_with(|| {
                Arc::new(SharedEntry {
                    view: Mutex::new(SharedView {
                        limits: None,
                        rate: rate.get(),
                        synced_at: 0,
                        observed: 0,
                        declined: 0,
                        last_second: 0,
                        pending_observed: 0,
                        pending_declined: 0,
                        sending_observed: 0,
                        sending_declined: 0,
                        skipped: 0,
                    }),
                    wanted: AtomicBool::new(false),
                    last_seen: AtomicU64::new(now),
                    service: Service::default(),
                })
            })
            .clone();
        let register = || entry.wanted.store(true, Ordering::Release);
        entry.service.wait(&self.state.signal, register).await?;
        Ok(entry)
    }
}

impl Sweep for SuppressedState {
    fn sweep(&self) {
        let now = self.now_ms();
        let stale_after = self.redis.settings().stale_after_ms;
        // Only keys whose counts have all reached Redis are forgotten.
        self.entries.retain(|_, entry| {
            now.saturating_sub(entry.last_seen.load(Ordering::Relaxed)) <= stale_after
                || entry
                    .view
                    .lock()
                    .map(|view| {
                        view.pending_observed + view.pending_declined + view.sending_observed > 0
                    })
                    .unwrap_or(true)
        });
    }
}
