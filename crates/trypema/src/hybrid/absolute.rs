use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
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
        connection::ABSOLUTE,
        script::{self, absolute as mode, Args},
        RedisContext, RedisKey, Tag,
    },
    Quota, QuotaDecision, RateLimit, RateLimitDecision, TrypemaError,
};

/// Absolute strategy, hybrid: calls are served from leases of quota reserved in Redis.
#[derive(Clone)]
pub struct AbsoluteHybridRateLimiter {
    state: Arc<AbsoluteState>,
    task: Arc<SyncTask>,
}

pub(crate) struct AbsoluteState {
    redis: Arc<RedisContext>,
    signal: Arc<SyncSignal>,
    entries: DashMap<Box<str>, Arc<LeaseEntry>, ahash::RandomState>,
    policy: LeasePolicy,
    /// Held by a sync round from planning to handing out its answers, and by `flush`: a
    /// lease a round still in flight hands out is in the books before `flush` plans.
    round: tokio::sync::Mutex<()>,
}

struct LeaseEntry {
    /// The capacity for new state (from the latest caller's rate), then Redis's sticky one.
    capacity: AtomicU64,
    leases: Leases,
    /// Redis's window total and reset time (local clock) at the last reply, for quotas.
    total: AtomicU64,
    reset_at: AtomicU64,
    last_seen: AtomicU64,
    service: Service,
}

impl LeaseEntry {
    fn new(capacity: u64, now_ms: u64) -> Self {
        Self {
            capacity: AtomicU64::new(capacity),
            leases: Leases::new(now_ms),
            total: AtomicU64::new(0),
            reset_at: AtomicU64::new(0),
            last_seen: AtomicU64::new(now_ms),
            service: Service::default(),
        }
    }

    /// Takes `count` from a lease, or repeats Redis's recent refusal, without any I/O.
    #[inline]
    fn decide_locally(
        &self,
        now_ms: u64,
        count: u64,
        first_attempt: bool,
        window_ms: u64,
        signal: &SyncSignal,
    ) -> Option<RateLimitDecision> {
        if count == 0 {
            return Some(RateLimitDecision::Allowed);
        }
        match self.leases.take(now_ms, count, first_attempt) {
            Take::Taken { renew } => {
                if renew {
                    signal.wake();
                }
                Some(RateLimitDecision::Allowed)
            }
            Take::Short => self.leases.refused(now_ms, count, window_ms),
        }
    }

    fn quota(&self, now_ms: u64) -> Quota {
        let capacity = self.capacity.load(Ordering::Acquire);
        let total = self.total.load(Ordering::Acquire);
        Quota {
            limit: capacity as f64,
            remaining: (capacity.saturating_sub(total) + self.leases.available(now_ms))
                .min(capacity),
            reset_ms: self.reset_at.load(Ordering::Acquire).saturating_sub(now_ms),
        }
    }
}

impl AbsoluteState {
    pub(crate) fn new(
        redis: Arc<RedisContext>,
        signal: Arc<SyncSignal>,
        policy: LeasePolicy,
    ) -> Self {
        Self {
            redis,
            signal,
            entries: DashMap::with_hasher(ahash::RandomState::new()),
            policy,
            round: tokio::sync::Mutex::new(()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.redis.settings().clock.now_ms()
    }

    fn window_ms(&self) -> u64 {
        self.redis.settings().window_ms
    }

    fn args(&self, capacity: u64, request: &LeaseRequest) -> Vec<u8> {
        let settings = self.redis.settings();
        let mut args = Args::with(&[
            mode::LEASE,
            settings.window_ms as f64,
            settings.group_ms as f64,
            capacity as f64,
            0.0,
            script::new_epoch(),
            self.policy.lease_ms as f64,
            request.need_min as f64,
            request.need_total as f64,
            request.extra as f64,
        ]);
        for give in request.give_backs {
            args.extend(&[give.start, give.epoch, give.amount as f64]);
        }
        args.into_bytes()
    }

    /// Sends `work` in one round trip and hands each key its answer.
    async fn send(&self, now: u64, work: Vec<(String, Arc<LeaseEntry>, LeaseRequest)>) {
        if work.is_empty() {
            return;
        }
        let calls = work
            .iter()
            .map(|(key, entry, request)| {
                let capacity = entry.capacity.load(Ordering::Acquire);
                (
                    self.redis.entity_key(key, Tag::Absolute),
                    self.args(capacity, request),
                )
            })
            .collect();
        let results = self.redis.eval_batch(&ABSOLUTE, calls).await;
        // Leases end by the time taken before sending (never later than Redis counts them);
        // hints and refusals run from the answer.
        let replied = self.now_ms();
        for (index, (_, entry, request)) in work.iter().enumerate() {
            let outcome = match &results {
                Ok(values) => values[index]
                    .as_ref()
                    .map_err(Clone::clone)
                    .and_then(script::doubles::<8>),
                Err(error) => Err(error.clone()),
            };
            match outcome {
                Ok([granted, start, epoch, _, remaining_after, capacity, total, reset_ms]) => {
                    let grant = Grant {
                        granted: script::whole(granted),
                        start,
                        epoch,
                        capacity: script::whole(capacity),
                        available_after: script::whole(capacity - total),
                        reset_ms: script::whole(reset_ms),
                        remaining_after_waiting: script::whole(remaining_after),
                    };
                    entry
                        .leases
                        .granted(request, &grant, now + self.policy.lease_ms);
                    entry
                        .leases
                        .note_refusal(request, &grant, replied, &self.policy);
                    entry.capacity.store(grant.capacity, Ordering::Release);
                    entry.total.store(script::whole(total), Ordering::Release);
                    entry
                        .reset_at
                        .store(replied + grant.reset_ms, Ordering::Release);
                    self.redis.metrics.leases(grant.granted, request.returned);
                    entry.service.finish(None);
                }
                Err(error) => {
                    // A lease in use keeps serving until it ends. Give-backs are not repeated:
                    // whether they reached Redis is unknown, and a reservation left in place
                    // only expires with its window (never an over-admission).
                    entry.service.finish(Some(error));
                }
            }
        }
    }

    /// For every key that needs it: gives back what ended leases did not use and opens the
    /// next lease (callers wait, the quota runs low, or the lease in use is about to end).
    pub(crate) async fn sync(&self) {
        let _round = self.round.lock().await;
        let now = self.now_ms();
        // While Redis is known to be down, nothing is planned (a give-back prepared now would be
        // lost); callers waiting for Redis get the outage error at once.
        if let Some(error) = self.redis.outage() {
            for item in self.entries.iter() {
                if item.value().leases.take_need() {
                    item.value().service.finish(Some(error.clone()));
                }
            }
            return;
        }
        let mut work = Vec::new();
        for item in self.entries.iter() {
            let entry = item.value();
            if !entry.leases.may_need_sync(now, &self.policy) {
                continue;
            }
            let capacity = entry.capacity.load(Ordering::Acquire);
            if let Some(request) = entry.leases.plan(now, capacity, &self.policy, false) {
                work.push((item.key().to_string(), entry.clone(), request));
            }
        }
        self.send(now, work).await;
    }

    /// Gives back every lease's unused quota (close).
    pub(crate) async fn flush(&self) -> Result<(), TrypemaError> {
        let _round = self.round.lock().await;
        let now = self.now_ms();
        let mut work = Vec::new();
        for item in self.entries.iter() {
            let mut request = LeaseRequest::default();
            item.value().leases.close_all(&mut request, false);
            if request.returned > 0 {
                work.push((item.key().to_string(), item.value().clone(), request));
            }
        }
        self.send(now, work).await;
        Ok(())
    }

    pub(crate) fn is_settled(&self) -> bool {
        self.entries
            .iter()
            .all(|item| item.value().leases.is_settled())
    }
}

impl AbsoluteHybridRateLimiter {
    pub(crate) fn new(state: Arc<AbsoluteState>, task: Arc<SyncTask>) -> Self {
        Self { state, task }
    }

    fn count(&self, decision: RateLimitDecision, degraded: bool) -> RateLimitDecision {
        self.state.redis.metrics.decision(
            Provider::Hybrid,
            Strategy::Absolute,
            &decision,
            degraded,
        );
        decision
    }

    /// Decides from the local leases alone: `Some` when that is possible without Redis (a lease
    /// covers `count`, or Redis just refused such a count), `None` otherwise. `key` must be a
    /// valid [`RedisKey`].
    #[inline]
    pub fn try_inc_locally(&self, key: &str, count: u64) -> Option<RateLimitDecision> {
        let now = self.state.now_ms();
        let entry = self.state.entries.get(key)?;
        entry.last_seen.store(now, Ordering::Relaxed);
        let decision =
            entry.decide_locally(now, count, true, self.state.window_ms(), &self.state.signal)?;
        Some(self.count(decision, false))
    }

    /// Records `count` for `key` and returns `Allowed`, or returns `Rejected`. No I/O while the
    /// key's lease covers the call; otherwise waits for the next sync (which starts at once),
    /// at most the command timeout.
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
                    Strategy::Absolute,
                    key.as_str(),
                    rate,
                    count,
                )
                .map(super::Outcome::Degraded),
        }
    }

    async fn inc_remotely(
        &self,
        key: &RedisKey,
        rate: &RateLimit,
        count: u64,
    ) -> Result<RateLimitDecision, TrypemaError> {
        self.task.ensure_started()?;
        let state = &self.state;
        let capacity = state.redis.settings().capacity(rate);
        let (deadline, limit) = super::deadline(&state.redis);
        let mut first_attempt = false;
        loop {
            let now = state.now_ms();
            let entry = state
                .entries
                .entry(Box::from(key.as_str()))
                .or_insert_with(|| {
                    first_attempt = true;
                    Arc::new(LeaseEntry::new(capacity, now))
                })
                .clone();
            entry.last_seen.store(now, Ordering::Relaxed);
            if let Some(decision) =
                entry.decide_locally(now, count, first_attempt, state.window_ms(), &state.signal)
            {
                return Ok(decision);
            }
            first_attempt = false;
            let register = || {
                entry.capacity.store(capacity, Ordering::Release);
                entry.leases.register(count);
            };
            entry
                .service
                .wait(&state.signal, deadline, limit, register)
                .await?;
        }
    }

    /// Like [`Self::inc`], and also returns the key's quota as this instance knows it: Redis's
    /// window at the last sync plus this instance's unused leases (other instances' unused
    /// leases count as used). Under the outage policy, the quota the policy decided with.
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
        let quota = match self.state.entries.get(key.as_str()) {
            Some(entry) => entry.quota(now),
            None => Quota::full(self.state.redis.settings().capacity(rate) as f64),
        };
        Ok(QuotaDecision {
            decision,
            quota,
            degraded: false,
        })
    }

    /// Whether one more call would be admitted now; records nothing. Answered locally while
    /// the key holds quota or was just refused, otherwise by Redis.
    pub async fn is_allowed(&self, key: &RedisKey) -> Result<RateLimitDecision, TrypemaError> {
        let now = self.state.now_ms();
        if let Some(entry) = self.state.entries.get(key.as_str()) {
            if entry.leases.available(now) > 0 {
                return Ok(RateLimitDecision::Allowed);
            }
            if let Some(rejected) = entry.leases.refused(now, 1, self.state.window_ms()) {
                return Ok(rejected);
            }
        }
        self.redis().is_allowed(key).await
    }

    fn redis(&self) -> crate::redis::AbsoluteRedisRateLimiter {
        crate::redis::AbsoluteRedisRateLimiter::new(self.state.redis.clone())
    }

    /// The key's quota from Redis, plus this instance's unused leases; records nothing.
    pub async fn get(&self, key: &RedisKey, rate: &RateLimit) -> Result<Quota, TrypemaError> {
        super::between_rounds(&self.state.round, &self.state.redis, async {
            let mut quota = self.redis().get(key, rate).await?;
            if let Some(entry) = self.state.entries.get(key.as_str()) {
                quota.remaining = (quota.remaining + entry.leases.available(self.state.now_ms()))
                    .min(quota.limit as u64);
            }
            Ok(quota)
        })
        .await
    }

    /// Takes back up to `count` recorded units of `key`: first units this instance admitted
    /// from its live leases (released from their buckets), then units in Redis, newest first.
    pub async fn refund(&self, key: &RedisKey, count: u64) -> Result<u64, TrypemaError> {
        let own = self.state.entries.get(key.as_str()).map(|entry| {
            (
                entry.capacity.load(Ordering::Acquire),
                entry.leases.refund_used(self.state.now_ms(), count),
            )
        });
        let mut refunded = 0;
        if let Some((capacity, (used, give_backs))) = own {
            if used > 0 {
                let request = LeaseRequest::giving_back(give_backs);
                let args = self.state.args(capacity, &request);
                let name = self.state.redis.entity_key(key.as_str(), Tag::Absolute);
                self.state.redis.eval(&ABSOLUTE, name, args).await?;
                refunded = used;
            }
        }
        if refunded == count {
            return Ok(refunded);
        }
        Ok(refunded + self.redis().refund(key, count - refunded).await?)
    }

    /// Forgets `key`'s state in Redis (for every instance) and this instance's leases for it.
    /// Other instances' leases of it are no longer counted and end within a lease period.
    pub async fn reset(&self, key: &RedisKey) -> Result<(), TrypemaError> {
        if let Some((_, entry)) = self.state.entries.remove(key.as_str()) {
            entry.leases.forget();
        }
        self.redis().reset(key).await
    }
}

impl Sweep for AbsoluteState {
    fn sweep(&self) {
        let now = self.now_ms();
        let stale_after = self.redis.settings().stale_after_ms;
        // A key is only forgotten once its leases are closed, so no reserved quota is lost.
        self.entries.retain(|_, entry| {
            now.saturating_sub(entry.last_seen.load(Ordering::Relaxed)) <= stale_after
                || !entry.leases.is_settled()
        });
        if self.entries.capacity() > 1024 && self.entries.len() * 4 < self.entries.capacity() {
            self.entries.shrink_to_fit();
        }
    }
}
