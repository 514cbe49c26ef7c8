use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc, Mutex, Weak,
};

use dashmap::DashMap;

use super::{Service, SyncSignal, SyncTask};
use crate::{
    cleanup::Sweep,
    redis::{absolute as script, RedisContext, RedisKey},
    RateLimit, RateLimitDecision, TrypemaError,
};

/// Absolute strategy, hybrid: calls are served from a lease of quota reserved in Redis.
#[derive(Clone)]
pub struct AbsoluteHybridRateLimiter {
    state: Arc<AbsoluteState>,
    task: Arc<SyncTask>,
}

pub(crate) struct AbsoluteState {
    redis: Arc<RedisContext>,
    signal: Arc<SyncSignal>,
    entries: DashMap<Box<str>, Arc<LeaseEntry>, ahash::RandomState>,
    lease_ms: u64,
}

/// One key's lease. The atomics are the fast path; `book` is only touched by the sync task.
struct LeaseEntry {
    capacity: AtomicU64,
    quota: AtomicU64,
    /// Local clock (ms); the quota may only be used before this.
    lease_until: AtomicU64,
    /// Local clock (ms); Redis said the window is full, so refuse without asking until then.
    full_until: AtomicU64,
    retry_at: AtomicU64,
    remaining_after_waiting: AtomicU64,
    /// The largest count a caller is waiting for (0: nobody waits).
    wanted: AtomicU64,
    /// Calls the lease could not cover since it was granted: demand the next lease should meet.
    shortfall: AtomicU64,
    /// Size of the current lease, for noticing it is running low.
    granted: AtomicU64,
    /// The lease is running low: renew it at the next sync, before callers have to wait.
    renew_early: AtomicBool,
    last_seen: AtomicU64,
    service: Service,
    book: Mutex<LeaseBook>,
}

#[derive(Default)]
struct LeaseBook {
    granted: u64,
    granted_at: u64,
    lease_start: u64,
}

impl LeaseEntry {
    fn new(capacity: u64, now_ms: u64) -> Self {
        Self {
            capacity: AtomicU64::new(capacity),
            quota: AtomicU64::new(0),
            lease_until: AtomicU64::new(0),
            full_until: AtomicU64::new(0),
            retry_at: AtomicU64::new(0),
            remaining_after_waiting: AtomicU64::new(0),
            wanted: AtomicU64::new(0),
            shortfall: AtomicU64::new(0),
            granted: AtomicU64::new(0),
            renew_early: AtomicBool::new(false),
            last_seen: AtomicU64::new(now_ms),
            service: Service::default(),
            book: Mutex::new(LeaseBook::default()),
        }
    }

    /// Takes `count` from the lease, or reports the window full, without any I/O. When the
    /// lease falls below a quarter, asks (once) for an early renewal.
    #[inline]
    fn decide_locally(
        &self,
        now_ms: u64,
        count: u64,
        window_seconds: u64,
        signal: &SyncSignal,
    ) -> Option<RateLimitDecision> {
        if now_ms < self.lease_until.load(Ordering::Acquire) {
            let mut quota = self.quota.load(Ordering::Acquire);
            while quota >= count {
                match self.quota.compare_exchange_weak(
                    quota,
                    quota - count,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        if (quota - count) * 4 < self.granted.load(Ordering::Relaxed)
                            && !self.renew_early.swap(true, Ordering::AcqRel)
                        {
                            signal.wake.notify_one();
                        }
                        return Some(RateLimitDecision::Allowed);
                    }
                    Err(actual) => quota = actual,
                }
            }
            self.shortfall.fetch_add(count, Ordering::Relaxed);
        }
        if now_ms < self.full_until.load(Ordering::Acquire) {
            return Some(RateLimitDecision::Rejected {
                window_size_seconds: window_seconds,
                retry_after_ms: self
                    .retry_at
                    .load(Ordering::Acquire)
                    .saturating_sub(now_ms)
                    .max(1),
                remaining_after_waiting: self.remaining_after_waiting.load(Ordering::Acquire),
            });
        }
        None
    }
}

impl AbsoluteState {
    pub(crate) fn new(redis: Arc<RedisContext>, signal: Arc<SyncSignal>) -> Self {
        let settings = redis.settings();
        // A twentieth of the window: long enough to serve many calls per round trip, short
        // enough that a lease's delayed release (it stays counted a window after it ends)
        // costs at most 5% of the window. At least a few sync intervals, so renewals (which
        // happen at syncs) come before it ends.
        let lease_ms = (settings.window_ms / 20)
            .max(4 * settings.sync_interval_ms)
            .min(settings.window_ms);
        Self {
            redis,
            signal,
            entries: DashMap::with_hasher(ahash::RandomState::new()),
            lease_ms,
        }
    }

    pub(crate) fn sync_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.redis.settings().sync_interval_ms)
    }

    fn window_seconds(&self) -> u64 {
        self.redis.settings().window.get()
    }

    fn now_ms(&self) -> u64 {
        self.redis.settings().clock.now_ms()
    }

    /// Closes every lease that ended or that a caller needs more from, and opens the next one,
    /// for all such keys in one pipelined round trip.
    pub(crate) async fn sync(&self) {
        let now = self.now_ms();
        let settings = self.redis.settings();
        let renew_margin = 2 * settings.sync_interval_ms;
        let mut work = Vec::new();
        for item in self.entries.iter() {
            let entry = item.value();
            let wanted = entry.wanted.load(Ordering::Acquire);
            let lease_until = entry.lease_until.load(Ordering::Acquire);
            let mut book = entry
                .book
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            // Leases in use are renewed before they end, so busy keys never wait for Redis.
            let ending = book.granted > 0 && now + renew_margin >= lease_until;
            let in_use = entry.quota.load(Ordering::Acquire) < book.granted;
            let ended = now >= lease_until;
            let running_low = entry.renew_early.swap(false, Ordering::AcqRel);
            if wanted == 0 && !running_low && !(ending && (in_use || ended)) {
                continue;
            }
            let left = entry.quota.swap(0, Ordering::AcqRel).min(book.granted);
            let used = book.granted - left;
            let shortfall = entry.shortfall.swap(0, Ordering::AcqRel);
            let capacity = entry.capacity.load(Ordering::Acquire);
            // Size the next lease to the demand seen under the last one (what it served plus
            // what it could not), projected over a whole lease with 50% headroom; a key nobody
            // used or waits for gets none.
            let demand = used + shortfall;
            let elapsed = now.saturating_sub(book.granted_at).max(1);
            let request = if wanted == 0 && demand == 0 {
                0
            } else if book.granted == 0 {
                // No lease to learn from (a new or idle key): start generously, not at the
                // one call that is waiting, or a busy key would crawl up from tiny leases.
                (capacity / 64).max(1)
            } else {
                let projected = demand.saturating_mul(self.lease_ms) / elapsed.min(self.lease_ms);
                projected.saturating_add(projected / 2).max(1)
            }
            .max(wanted)
            .min(capacity.max(wanted));
            let call = script::script_call(
                settings,
                script::LEASE,
                capacity,
                request,
                [self.lease_ms, left, book.lease_start],
            );
            book.granted = 0;
            drop(book);
            work.push((item.key().to_string(), entry.clone(), request, call));
        }
        if work.is_empty() {
            return;
        }
        let calls: Vec<_> = work
            .iter()
            .map(|(key, _, _, args)| {
                let key =
                    RedisKey::new(key.as_str()).expect("keys are validated before they are stored");
                (self.redis.entity_keys(&key, "a"), args.clone())
            })
            .collect();
        let results = self
            .redis
            .run_batch(&script::SCRIPT, script::SOURCE, &calls)
            .await;
        for (index, (_, entry, request, _)) in work.iter().enumerate() {
            let outcome = match &results {
                Ok(values) => lease_reply(values.get(index)),
                Err(error) => Err(error.to_string()),
            };
            match outcome {
                Ok([granted, start, retry_after, remaining]) => {
                    let mut book = entry
                        .book
                        .lock()
                        .unwrap_or_else(|poison| poison.into_inner());
                    book.granted = granted;
                    book.granted_at = now;
                    book.lease_start = start;
                    drop(book);
                    entry.granted.store(granted, Ordering::Relaxed);
                    entry.quota.store(granted, Ordering::Release);
                    entry
                        .lease_until
                        .store(now + self.lease_ms, Ordering::Release);
                    if granted < *request {
                        entry.retry_at.store(now + retry_after, Ordering::Release);
                        entry
                            .remaining_after_waiting
                            .store(remaining, Ordering::Release);
                        entry
                            .full_until
                            .store(now + retry_after.min(self.lease_ms), Ordering::Release);
                    } else {
                        entry.full_until.store(0, Ordering::Release);
                    }
                    entry.wanted.store(0, Ordering::Release);
                    entry.service.finish(None);
                }
                Err(message) => {
                    entry.wanted.store(0, Ordering::Release);
                    entry.service.finish(Some(message));
                }
            }
        }
    }
}

fn lease_reply(value: Option<&redis::Value>) -> Result<[u64; 4], String> {
    let as_u64 = |value: &redis::Value| match value {
        redis::Value::Int(number) => Some((*number).max(0) as u64),
        _ => None,
    };
    match value {
        Some(redis::Value::Array(items)) if items.len() == 4 => {
            let numbers: Option<Vec<u64>> = items.iter().map(as_u64).collect();
            numbers
                .map(|n| [n[0], n[1], n[2], n[3]])
                .ok_or_else(|| format!("unexpected lease reply {items:?}"))
        }
        Some(redis::Value::ServerError(error)) => Err(format!("{error:?}")),
        other => Err(format!("unexpected lease reply {other:?}")),
    }
}

impl AbsoluteHybridRateLimiter {
    pub(crate) fn new(state: Arc<AbsoluteState>, task: Arc<SyncTask>) -> Self {
        Self { state, task }
    }

    pub(crate) fn sweeper(&self) -> Weak<dyn Sweep> {
        let state: Arc<dyn Sweep> = self.state.clone();
        Arc::downgrade(&state)
    }

    /// Decides from the local lease alone: `Some` when that is possible without Redis (the
    /// lease covers `count`, or Redis recently said the window is full), `None` otherwise.
    /// `key` must be a valid [`RedisKey`].
    #[inline]
    pub fn try_inc_locally(&self, key: &str, count: u64) -> Option<RateLimitDecision> {
        let now = self.state.now_ms();
        let entry = self.state.entries.get(key)?;
        entry.last_seen.store(now, Ordering::Relaxed);
        entry.decide_locally(now, count, self.state.window_seconds(), &self.state.signal)
    }

    /// Records `count` for `key` and returns `Allowed`, or returns `Rejected`. No I/O while the
    /// key's lease covers the call; otherwise waits for the next sync (which starts at once).
    pub async fn inc(
        &self,
        key: &RedisKey,
        rate: &RateLimit,
        count: u64,
    ) -> Result<RateLimitDecision, TrypemaError> {
        if let Some(decision) = self.try_inc_locally(key.as_str(), count) {
            return Ok(decision);
        }
        self.task.ensure_started();
        let capacity = self.state.redis.settings().capacity(rate);
        let window_seconds = self.state.window_seconds();
        for _ in 0..3 {
            let now = self.state.now_ms();
            let entry = self
                .state
                .entries
                .entry(Box::from(key.as_str()))
                .or_insert_with(|| Arc::new(LeaseEntry::new(capacity, now)))
                .clone();
            if let Some(decision) =
                entry.decide_locally(now, count, window_seconds, &self.state.signal)
            {
                return Ok(decision);
            }
            let register = || {
                entry.wanted.fetch_max(count.max(1), Ordering::AcqRel);
            };
            entry.service.wait(&self.state.signal, register).await?;
        }
        // Other callers took each lease before this one could: the window is contended.
        Ok(RateLimitDecision::Rejected {
            window_size_seconds: window_seconds,
            retry_after_ms: self.state.lease_ms,
            remaining_after_waiting: 0,
        })
    }

    /// Whether one more call would be admitted now; records nothing. Answered locally while
    /// the key holds quota or is known to be full, otherwise by Redis.
    pub async fn is_allowed(&self, key: &RedisKey) -> Result<RateLimitDecision, TrypemaError> {
        let now = self.state.now_ms();
        if let Some(entry) = self.state.entries.get(key.as_str()) {
            if now < entry.lease_until.load(Ordering::Acquire)
                && entry.quota.load(Ordering::Acquire) > 0
            {
                return Ok(RateLimitDecision::Allowed);
            }
            if let Some(rejected @ RateLimitDecision::Rejected { .. }) = entry.decide_locally(
                now,
                u64::MAX,
                self.state.window_seconds(),
                &self.state.signal,
            ) {
                return Ok(rejected);
            }
        }
        crate::redis::AbsoluteRedisRateLimiter::new(self.state.redis.clone())
            .is_allowed(key)
            .await
    }
}

impl Sweep for AbsoluteState {
    fn sweep(&self) {
        let now = self.now_ms();
        let stale_after = self.redis.settings().stale_after_ms;
        // A key is only forgotten once its lease is closed, so no reserved quota is lost.
        self.entries.retain(|_, entry| {
            now.saturating_sub(entry.last_seen.load(Ordering::Relaxed)) <= stale_after
                || entry
                    .book
                    .lock()
                    .map(|book| book.granted > 0)
                    .unwrap_or(true)
        });
    }
}
