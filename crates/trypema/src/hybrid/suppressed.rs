use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc, Mutex, MutexGuard,
};

use dashmap::DashMap;

use super::{
    lease::{Grant, LeasePolicy, LeaseRequest, Leases, Take},
    Service, SyncSignal, SyncTask,
};
use crate::{
    cleanup::Sweep,
    metrics::{Provider, Strategy},
    redis::{
        connection::SUPPRESSED,
        script::{self, suppressed as mode},
        suppressed_args, RedisContext, RedisKey, Tag,
    },
    suppression::SuppressionLimits,
    Quota, QuotaDecision, RateLimit, RateLimitDecision, TrypemaError,
};

/// Suppressed strategy, hybrid: the factor is computed locally on the shared window totals,
/// which are pushed to and read from Redis every sync interval; every admission comes from a
/// lease of admissions reserved in Redis under the hard ceiling.
#[derive(Clone)]
pub struct SuppressedHybridRateLimiter {
    state: Arc<SuppressedState>,
    task: Arc<SyncTask>,
}

pub(crate) struct SuppressedState {
    redis: Arc<RedisContext>,
    signal: Arc<SyncSignal>,
    entries: DashMap<Box<str>, Arc<SharedEntry>, ahash::RandomState>,
    policy: LeasePolicy,
    /// Local clock (ms) when the last sync round that Redis answered was sent.
    answered_at: AtomicU64,
    /// Held by a sync round from planning to handing out its answers, and by `flush`: a
    /// lease a round still in flight hands out is in the books before `flush` plans.
    round: tokio::sync::Mutex<()>,
}

struct SharedEntry {
    view: Mutex<SharedView>,
    leases: Leases,
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
    /// The latest caller's rate, for state Redis creates.
    rate: f64,
    synced_at: u64,
    observed: u64,
    declined: u64,
    reserved: u64,
    last_second: u64,
    pending_observed: u64,
    pending_declined: u64,
    sending_observed: u64,
    sending_declined: u64,
    cached_shedding: f64,
    shedding_until: u64,
    /// Local clock (ms) when the oldest bucket leaves the window, as of the last sync.
    reset_at: u64,
}

impl SharedView {
    fn new(rate: f64) -> Self {
        Self {
            limits: None,
            rate,
            synced_at: 0,
            observed: 0,
            declined: 0,
            reserved: 0,
            last_second: 0,
            pending_observed: 0,
            pending_declined: 0,
            sending_observed: 0,
            sending_declined: 0,
            cached_shedding: 0.0,
            shedding_until: 0,
            reset_at: 0,
        }
    }

    /// What counts against the capacities: admitted (reported or not) plus every instance's
    /// unused reservations except this instance's own (which it may still admit from).
    fn accepted(&self, own_available: u64) -> u64 {
        (self.observed + self.reserved).saturating_sub(self.declined + own_available)
    }

    fn shedding(&mut self, limits: &SuppressionLimits, now: u64, cache_ms: u64) -> f64 {
        if now < self.shedding_until {
            return self.cached_shedding;
        }
        let unsent = self.sending_observed + self.pending_observed;
        let perceived = ((self.observed + unsent) as f64 / limits.window_seconds)
            .max((self.last_second + unsent) as f64);
        self.cached_shedding = if perceived <= 0.0 {
            0.0
        } else {
            (1.0 - limits.rate / perceived).clamp(0.0, 1.0)
        };
        self.shedding_until = now + cache_ms;
        self.cached_shedding
    }

    fn factor(
        &mut self,
        limits: &SuppressionLimits,
        accepted: u64,
        now: u64,
        cache_ms: u64,
    ) -> f64 {
        let accepted_f = accepted as f64;
        if accepted_f < limits.soft {
            0.0
        } else if accepted_f >= limits.hard {
            1.0
        } else {
            self.shedding(limits, now, cache_ms)
        }
    }

    fn record(&mut self, count: u64, declined: bool) {
        self.pending_observed += count;
        if declined {
            self.pending_declined += count;
        }
    }
}

impl SharedEntry {
    fn lock(&self) -> MutexGuard<'_, SharedView> {
        self.view
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Decides from the local view and leases: `None` when the view is too old or an admission
    /// needs quota the leases do not have (then Redis is asked).
    fn decide_locally(
        &self,
        state: &SuppressedState,
        now: u64,
        count: u64,
        first_attempt: bool,
    ) -> Option<RateLimitDecision> {
        let mut view = self.lock();
        let Some((limits, stale)) = state.usable(&view, now) else {
            // Counted even though Redis decides: a key new or called less often than a lease
            // still sizes its next lease by what it was asked for.
            if first_attempt && count > 0 {
                self.leases.note_demand(count);
            }
            return None;
        };
        if stale {
            self.wanted.store(true, Ordering::Release);
        }
        let accepted = view.accepted(self.leases.available(now));
        let after = accepted.saturating_add(count) as f64;
        let cache_ms = state.redis.settings().suppression_cache_ms;
        let admit = |view: &mut SharedView, decision: RateLimitDecision| {
            if count == 0 {
                return Some(decision);
            }
            match self.leases.take(now, count, first_attempt) {
                Take::Taken { renew } => {
                    if renew {
                        state.signal.wake();
                    }
                    view.record(count, false);
                    Some(decision)
                }
                // Redis just said no admission fits under the hard ceiling: declined.
                Take::Short => self
                    .leases
                    .refused(now, count, state.redis.settings().window_ms)
                    .map(|_| {
                        view.record(count, true);
                        RateLimitDecision::Suppressed {
                            suppression_factor: 1.0,
                            is_allowed: false,
                        }
                    }),
            }
        };
        if after <= limits.soft {
            return admit(&mut view, RateLimitDecision::Allowed);
        }
        if after > limits.hard {
            view.record(count, true);
            return Some(RateLimitDecision::Suppressed {
                suppression_factor: 1.0,
                is_allowed: false,
            });
        }
        // Draw only once quota is at hand (or Redis has just said there is none): a call that
        // went to Redis for quota and drew again there would be declined more often than `f`.
        if count > 0 && self.leases.available(now) < count {
            if self
                .leases
                .refused(now, count, state.redis.settings().window_ms)
                .is_some()
            {
                view.record(count, true);
                return Some(RateLimitDecision::Suppressed {
                    suppression_factor: 1.0,
                    is_allowed: false,
                });
            }
            if first_attempt {
                self.leases.note_demand(count);
            }
            return None;
        }
        let factor = view.factor(&limits, accepted, now, cache_ms);
        if rand::random::<f64>() >= factor {
            admit(
                &mut view,
                RateLimitDecision::Suppressed {
                    suppression_factor: factor,
                    is_allowed: true,
                },
            )
        } else {
            view.record(count, true);
            Some(RateLimitDecision::Suppressed {
                suppression_factor: factor,
                is_allowed: false,
            })
        }
    }
}

impl SuppressedState {
    pub(crate) fn new(
        redis: Arc<RedisContext>,
        signal: Arc<SyncSignal>,
        policy: LeasePolicy,
    ) -> Self {
        Self {
            redis,
            signal,
            entries: DashMap::with_hasher(ahash::RandomState::new()),
            policy: LeasePolicy {
                release_used: true,
                ..policy
            },
            answered_at: AtomicU64::new(0),
            round: tokio::sync::Mutex::new(()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.redis.settings().clock.now_ms()
    }

    /// The view's limits if it may decide. A view is refreshed by every push, so one older
    /// than a lease period belongs to a key called less often than that: it still decides
    /// (and `stale` asks the next round to refresh it) while Redis keeps answering (a round
    /// sent less than a lease period ago was answered), for at most a window. Otherwise the
    /// call goes to Redis, so that with Redis unreachable calls fail instead of deciding on
    /// stale totals.
    fn usable(&self, view: &SharedView, now: u64) -> Option<(SuppressionLimits, bool)> {
        let limits = view.limits?;
        let lease_ms = self.policy.lease_ms;
        let age = now.saturating_sub(view.synced_at);
        if age < lease_ms {
            return Some((limits, false));
        }
        let answering = now.saturating_sub(self.answered_at.load(Ordering::Acquire)) < lease_ms
            && !self.redis.is_degraded();
        (answering && age < self.redis.settings().window_ms).then_some((limits, true))
    }

    fn args(&self, view: &SharedView, request: &LeaseRequest) -> Vec<u8> {
        let mut args = suppressed_args(self.redis.settings(), mode::LEASE, view.rate, 0);
        args.extend(&[
            self.policy.lease_ms as f64,
            request.need_min as f64,
            request.need_total as f64,
            request.extra as f64,
            view.sending_observed as f64,
            view.sending_declined as f64,
        ]);
        for give in request.give_backs {
            args.extend(&[give.start, give.epoch, give.amount as f64]);
        }
        args.into_bytes()
    }

    /// Plans one key's sync under its view lock: what to push, give back and reserve.
    fn plan(
        &self,
        entry: &SharedEntry,
        now: u64,
        closing: bool,
    ) -> Option<(LeaseRequest, Vec<u8>)> {
        let mut view = entry.lock();
        let wanted = entry.wanted.swap(false, Ordering::AcqRel);
        let has_pending = view.pending_observed > 0;
        let hard = view
            .limits
            .map_or(0, |limits| limits.hard.max(0.0).floor() as u64);
        let request = if closing {
            let mut request = LeaseRequest::default();
            entry.leases.close_all(&mut request, true);
            request
        } else {
            // Far below the soft capacity no decision depends on the other instances yet, so
            // such a key pushes its counts only when its view nears half a lease in age (it
            // stays fresh enough to be used).
            let interval = self.redis.settings().sync_interval_ms;
            let age = now.saturating_sub(view.synced_at);
            let far_below = view.limits.is_some_and(|limits| {
                (view.accepted(entry.leases.available(now)) as f64) < limits.soft / 2.0
            }) && age + 2 * interval < self.policy.lease_ms / 2;
            let report = wanted || (has_pending && !far_below);
            entry.leases.plan(now, hard, &self.policy, report)?
        };
        if closing && !has_pending && request.give_backs.iter().all(|give| give.amount == 0) {
            return None;
        }
        view.sending_observed = view.pending_observed;
        view.sending_declined = view.pending_declined;
        view.pending_observed = 0;
        view.pending_declined = 0;
        let args = self.args(&view, &request);
        Some((request, args))
    }

    async fn send(&self, now: u64, work: Vec<(String, Arc<SharedEntry>, LeaseRequest, Vec<u8>)>) {
        if work.is_empty() {
            return;
        }
        let calls = work
            .iter()
            .map(|(key, _, _, args)| (self.redis.entity_key(key, Tag::Suppressed), args.clone()))
            .collect();
        let results = self.redis.eval_batch(&SUPPRESSED, calls).await;
        if results.is_ok() {
            self.answered_at.fetch_max(now, Ordering::AcqRel);
        }
        let settings = self.redis.settings();
        let replied = self.now_ms();
        for (index, (_, entry, request, _)) in work.iter().enumerate() {
            let outcome = match &results {
                Ok(values) => values[index]
                    .as_ref()
                    .map_err(Clone::clone)
                    .and_then(script::doubles::<9>),
                Err(error) => Err(error.clone()),
            };
            let mut view = entry.lock();
            match outcome {
                Ok(
                    [granted, start, epoch, observed, declined, reserved, last_second, rate, reset_ms],
                ) => {
                    let rate = if rate > 0.0 { rate } else { view.rate };
                    let limits = SuppressionLimits::new(
                        rate,
                        settings.window.get(),
                        settings.hard_limit_factor,
                    );
                    view.limits = Some(limits);
                    view.observed = script::whole(observed);
                    view.declined = script::whole(declined);
                    view.reserved = script::whole(reserved);
                    view.last_second = script::whole(last_second);
                    view.synced_at = now;
                    view.sending_observed = 0;
                    view.sending_declined = 0;
                    view.shedding_until = 0;
                    view.reset_at = replied + script::whole(reset_ms);
                    let hard = limits.hard.max(0.0).floor() as u64;
                    let accepted_after =
                        (view.observed + view.reserved).saturating_sub(view.declined);
                    let grant = Grant {
                        granted: script::whole(granted),
                        start,
                        epoch,
                        capacity: hard,
                        available_after: hard.saturating_sub(accepted_after),
                        reset_ms: script::whole(reset_ms),
                        remaining_after_waiting: 0,
                    };
                    entry
                        .leases
                        .granted(request, &grant, now + self.policy.lease_ms);
                    entry
                        .leases
                        .note_refusal(request, &grant, replied, &self.policy);
                    drop(view);
                    self.redis.metrics.leases(grant.granted, request.returned);
                    entry.service.finish(None);
                }
                Err(error) => {
                    // The counts are sent again with the next sync (counting them twice only
                    // ever over-counts). Releases are not repeated: if they did not reach Redis,
                    // the reservation stays counted until its window ends.
                    view.pending_observed += view.sending_observed;
                    view.pending_declined += view.sending_declined;
                    view.sending_observed = 0;
                    view.sending_declined = 0;
                    drop(view);
                    entry.service.finish(Some(error));
                }
            }
        }
    }

    /// Pushes every key's new counts, settles its leases and reads back the window totals, in
    /// one round trip.
    pub(crate) async fn sync(&self) {
        let _round = self.round.lock().await;
        let now = self.now_ms();
        // While Redis is known to be down, counts stay pending (they are pushed once it is back)
        // and callers waiting for Redis get the outage error at once.
        if let Some(error) = self.redis.outage() {
            for item in self.entries.iter() {
                let entry = item.value();
                let waiting = entry.leases.take_need() | entry.wanted.swap(false, Ordering::AcqRel);
                if waiting {
                    entry.service.finish(Some(error.clone()));
                }
            }
            return;
        }
        let mut work = Vec::new();
        for item in self.entries.iter() {
            let entry = item.value();
            if let Some((request, args)) = self.plan(entry, now, false) {
                work.push((item.key().to_string(), entry.clone(), request, args));
            }
        }
        self.send(now, work).await;
    }

    /// Pushes pending counts and gives back every lease (close).
    pub(crate) async fn flush(&self) -> Result<(), TrypemaError> {
        let _round = self.round.lock().await;
        let now = self.now_ms();
        let mut work = Vec::new();
        for item in self.entries.iter() {
            if let Some((request, args)) = self.plan(item.value(), now, true) {
                work.push((item.key().to_string(), item.value().clone(), request, args));
            }
        }
        self.send(now, work).await;
        Ok(())
    }

    pub(crate) fn is_settled(&self) -> bool {
        self.entries.iter().all(|item| {
            let entry = item.value();
            entry.leases.is_settled() && {
                let view = entry.lock();
                view.pending_observed + view.sending_observed == 0
            }
        })
    }
}

impl SuppressedHybridRateLimiter {
    pub(crate) fn new(state: Arc<SuppressedState>, task: Arc<SyncTask>) -> Self {
        Self { state, task }
    }

    fn count(&self, decision: RateLimitDecision, degraded: bool) -> RateLimitDecision {
        self.state.redis.metrics.decision(
            Provider::Hybrid,
            Strategy::Suppressed,
            &decision,
            degraded,
        );
        decision
    }

    /// Decides from the local view alone when it is recent enough and the leases cover an
    /// admission (`None` otherwise). `key` must be a valid [`RedisKey`].
    pub fn try_inc_locally(&self, key: &str, count: u64) -> Option<RateLimitDecision> {
        let now = self.state.now_ms();
        let entry = self.state.entries.get(key)?;
        entry.last_seen.store(now, Ordering::Relaxed);
        let decision = entry.decide_locally(&self.state, now, count, true)?;
        Some(self.count(decision, false))
    }

    /// Records `count` as observed for `key` and decides whether to admit it, from local state
    /// (waiting for a sync when the key is new, its view is old, or an admission needs quota).
    pub async fn inc(
        &self,
        key: &RedisKey,
        rate: &RateLimit,
        count: u64,
    ) -> Result<RateLimitDecision, TrypemaError> {
        Ok(self.decide(key, rate, count).await?.decision())
    }

    /// The decision, or the outage policy's (with the quota it was made with).
    async fn decide(
        &self,
        key: &RedisKey,
        rate: &RateLimit,
        count: u64,
    ) -> Result<super::Outcome, TrypemaError> {
        if let Some(decision) = self.try_inc_locally(key.as_str(), count) {
            return Ok(super::Outcome::Shared(decision));
        }
        match self.inc_remotely(key, rate, count).await {
            Ok(decision) => Ok(super::Outcome::Shared(self.count(decision, false))),
            Err(error) => self
                .state
                .redis
                .degrade(
                    error,
                    Provider::Hybrid,
                    Strategy::Suppressed,
                    key.as_str(),
                    rate,
                    count,
                )
                .map(super::Outcome::Degraded),
        }
    }

    fn entry(&self, key: &RedisKey, rate: &RateLimit, now: u64) -> (Arc<SharedEntry>, bool) {
        let mut created = false;
        let entry = self
            .state
            .entries
            .entry(Box::from(key.as_str()))
            .or_insert_with(|| {
                created = true;
                Arc::new(SharedEntry {
                    view: Mutex::new(SharedView::new(rate.get())),
                    leases: Leases::new(now),
                    wanted: AtomicBool::new(false),
                    last_seen: AtomicU64::new(now),
                    service: Service::default(),
                })
            })
            .clone();
        (entry, created)
    }

    async fn inc_remotely(
        &self,
        key: &RedisKey,
        rate: &RateLimit,
        count: u64,
    ) -> Result<RateLimitDecision, TrypemaError> {
        self.task.ensure_started()?;
        let state = &self.state;
        let (deadline, limit) = super::deadline(&state.redis);
        let mut first_attempt = false;
        loop {
            let now = state.now_ms();
            let (entry, created) = self.entry(key, rate, now);
            first_attempt |= created;
            entry.last_seen.store(now, Ordering::Relaxed);
            if let Some(decision) = entry.decide_locally(state, now, count, first_attempt) {
                return Ok(decision);
            }
            first_attempt = false;
            // The same round refreshes the view and reserves an admission for this call (kept
            // as lease quota if the call ends up declined).
            let register = || {
                entry.lock().rate = rate.get();
                entry.wanted.store(true, Ordering::Release);
                if count > 0 {
                    entry.leases.register(count);
                }
            };
            entry
                .service
                .wait(&state.signal, deadline, limit, register)
                .await?;
        }
    }

    /// Like [`Self::inc`], and also returns the key's quota against its soft capacity, as this
    /// instance sees it (under the outage policy, the quota the policy decided with).
    pub async fn inc_with_quota(
        &self,
        key: &RedisKey,
        rate: &RateLimit,
        count: u64,
    ) -> Result<QuotaDecision, TrypemaError> {
        let decision = match self.decide(key, rate, count).await? {
            super::Outcome::Shared(decision) => decision,
            super::Outcome::Degraded(outcome) => return Ok(outcome),
        };
        let now = self.state.now_ms();
        let soft = self.state.redis.settings().suppression_limits(rate).soft;
        let quota = match self.state.entries.get(key.as_str()) {
            Some(entry) => {
                let view = entry.lock();
                let limit = view.limits.map_or(soft, |limits| limits.soft);
                let accepted = view.accepted(entry.leases.available(now));
                Quota {
                    limit,
                    remaining: (limit - accepted as f64).max(0.0) as u64,
                    reset_ms: view.reset_at.saturating_sub(now),
                }
            }
            None => Quota::full(soft),
        };
        Ok(QuotaDecision {
            decision,
            quota,
            degraded: false,
        })
    }

    fn redis(&self) -> crate::redis::SuppressedRedisRateLimiter {
        crate::redis::SuppressedRedisRateLimiter::new(self.state.redis.clone())
    }

    /// The key's current suppression factor (0 for a key with no state); records nothing.
    pub async fn get_suppression_factor(&self, key: &RedisKey) -> Result<f64, TrypemaError> {
        let now = self.state.now_ms();
        if let Some(entry) = self.state.entries.get(key.as_str()) {
            let mut view = entry.lock();
            if let Some((limits, _)) = self.state.usable(&view, now) {
                let accepted = view.accepted(entry.leases.available(now));
                let cache_ms = self.state.redis.settings().suppression_cache_ms;
                return Ok(view.factor(&limits, accepted, now, cache_ms));
            }
        }
        self.redis().get_suppression_factor(key).await
    }

    /// The key's quota against its soft capacity from Redis, plus this instance's unused
    /// leases (which Redis counts as taken); records nothing.
    pub async fn get(&self, key: &RedisKey, rate: &RateLimit) -> Result<Quota, TrypemaError> {
        super::between_rounds(&self.state.round, &self.state.redis, async {
            let mut quota = self.redis().get(key, rate).await?;
            if let Some(entry) = self.state.entries.get(key.as_str()) {
                quota.remaining = (quota.remaining + entry.leases.available(self.state.now_ms()))
                    .min(quota.limit.max(0.0) as u64);
            }
            Ok(quota)
        })
        .await
    }

    /// Takes back up to `count` admitted units of `key`, newest first: this instance's counts
    /// are pushed to Redis first (so its own recent admissions can be refunded), then Redis
    /// takes the units back.
    pub async fn refund(&self, key: &RedisKey, count: u64) -> Result<u64, TrypemaError> {
        if let Some(entry) = self
            .state
            .entries
            .get(key.as_str())
            .map(|entry| entry.clone())
        {
            self.task.ensure_started()?;
            let (deadline, limit) = super::deadline(&self.state.redis);
            let register = || entry.wanted.store(true, Ordering::Release);
            entry
                .service
                .wait(&self.state.signal, deadline, limit, register)
                .await?;
        }
        self.redis().refund(key, count).await
    }

    /// Forgets `key`'s state in Redis (for every instance) and this instance's view and leases.
    pub async fn reset(&self, key: &RedisKey) -> Result<(), TrypemaError> {
        if let Some((_, entry)) = self.state.entries.remove(key.as_str()) {
            entry.leases.forget();
        }
        self.redis().reset(key).await
    }
}

impl Sweep for SuppressedState {
    fn sweep(&self) {
        let now = self.now_ms();
        let stale_after = self.redis.settings().stale_after_ms;
        // Only keys whose counts have all reached Redis and whose leases are closed go.
        self.entries.retain(|_, entry| {
            now.saturating_sub(entry.last_seen.load(Ordering::Relaxed)) <= stale_after
                || !entry.leases.is_settled()
                || {
                    let view = entry.lock();
                    view.pending_observed + view.sending_observed > 0
                }
        });
        if self.entries.capacity() > 1024 && self.entries.len() * 4 < self.entries.capacity() {
            self.entries.shrink_to_fit();
        }
    }
}
