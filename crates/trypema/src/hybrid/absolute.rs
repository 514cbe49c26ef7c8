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

/// One key's leases. Two slots, so a lease can be renewed while the previous one is still
/// serving: a lease's quota is only taken back after it has ended, when no caller can still
/// be using it. The atomics are the fast path; `book` is only touched by the sync task.
struct LeaseEntry {
    capacity: AtomicU64,
    slots: [Slot; 2],
    /// Local clock (ms); Redis said the window is full, so refuse without asking until then.
    full_until: AtomicU64,
    retry_at: AtomicU64,
    remaining_after_waiting: AtomicU64,
    /// The largest count a caller is waiting for (0: nobody waits).
    wanted: AtomicU64,
    /// Calls the leases could not cover: demand the next lease should meet.
    shortfall: AtomicU64,
    /// Size of the newest lease, for noticing that the quota is running low.
    granted: AtomicU64,
    /// The quota is running low: open the next lease at the next sync, before callers wait.
    renew_early: AtomicBool,
    last_seen: AtomicU64,
    service: Service,
    book: Mutex<[SlotBook; 2]>,
}

#[derive(Default)]
struct Slot {
    quota: AtomicU64,
    /// Local clock (ms); the quota may only be used before this.
    until: AtomicU64,
}

/// What the sync task remembers of a slot's lease.
#[derive(Default, Clone, Copy)]
struct SlotBook {
    /// Orders the leases: the higher, the newer (two can be granted in the same millisecond).
    serial: u64,
    granted: u64,
    granted_at: u64,
    /// The lease's bucket in Redis, where unused quota is given back.
    start: u64,
}

impl Slot {
    #[inline]
    fn take(&self, now_ms: u64, count: u64) -> Option<u64> {
        if now_ms >= self.until.load(Ordering::Acquire) {
            return None;
        }
        let mut quota = self.quota.load(Ordering::Acquire);
        while quota >= count {
            match self.quota.compare_exchange_weak(
                quota,
                quota - count,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(quota - count),
                Err(actual) => quota = actual,
            }
        }
        None
    }

    fn available(&self, now_ms: u64) -> u64 {
        if now_ms < self.until.load(Ordering::Acquire) {
            self.quota.load(Ordering::Acquire)
        } else {
            0
        }
    }
}

impl LeaseEntry {
    fn new(capacity: u64, now_ms: u64) -> Self {
        Self {
            capacity: AtomicU64::new(capacity),
            slots: Default::default(),
            full_until: AtomicU64::new(0),
            retry_at: AtomicU64::new(0),
            remaining_after_waiting: AtomicU64::new(0),
            wanted: AtomicU64::new(0),
            shortfall: AtomicU64::new(0),
            granted: AtomicU64::new(0),
            renew_early: AtomicBool::new(false),
            last_seen: AtomicU64::new(now_ms),
            service: Service::default(),
            book: Mutex::new(Default::default()),
        }
    }

    /// Takes `count` from a lease, or reports the window full, without any I/O. When the
    /// quota falls below a quarter of the newest lease, asks (once) for the next lease.
    #[inline]
    fn decide_locally(
        &self,
        now_ms: u64,
        count: u64,
        window_seconds: u64,
        signal: &SyncSignal,
    ) -> Option<RateLimitDecision> {
        // The lease that ends first is used first, so less is given back.
        let (first, second) = if self.slots[0].until.load(Ordering::Relaxed)
            <= self.slots[1].until.load(Ordering::Relaxed)
        {
            (&self.slots[0], &self.slots[1])
        } else {
            (&self.slots[1], &self.slots[0])
        };
        if let Some(left) = first
            .take(now_ms, count)
            .or_else(|| second.take(now_ms, count))
        {
            let total = first.available(now_ms) + second.available(now_ms);
            let _ = left;
            if total * 4 < self.granted.load(Ordering::Relaxed)
                && !self.renew_early.swap(true, Ordering::AcqRel)
            {
                signal.wake.notify_one();
            }
            return Some(RateLimitDecision::Allowed);
        }
        self.shortfall.fetch_add(count, Ordering::Relaxed);
        self.known_full(now_ms, window_seconds)
    }

    /// The rejection Redis last gave, while it still holds.
    fn known_full(&self, now_ms: u64, window_seconds: u64) -> Option<RateLimitDecision> {
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

    /// For every key, gives back what an ended lease did not use and opens the next lease
    /// when one is needed (a caller waits, the quota runs low, or the lease in use is about
    /// to end), all keys in one pipelined round trip.
    pub(crate) async fn sync(&self) {
        let now = self.now_ms();
        let settings = self.redis.settings();
        let renew_margin = 2 * settings.sync_interval_ms;
        let mut work = Vec::new();
        for item in self.entries.iter() {
            let entry = item.value();
            let mut book = entry
                .book
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            let until = |slot: usize| entry.slots[slot].until.load(Ordering::Acquire);
            // An ended lease with quota to give back; no caller can take from it any more.
            let ended = (0..2).find(|&slot| book[slot].granted > 0 && now >= until(slot));
            let newest = if book[0].serial >= book[1].serial {
                0
            } else {
                1
            };
            let wanted = entry.wanted.load(Ordering::Acquire);
            let running_low = entry.renew_early.swap(false, Ordering::AcqRel);
            let used = book[newest].granted
                - entry.slots[newest]
                    .quota
                    .load(Ordering::Acquire)
                    .min(book[newest].granted);
            let ending = book[newest].granted > 0
                && now < until(newest)
                && now + renew_margin >= until(newest)
                && used > 0;
            let renew = wanted > 0 || running_low || ending;
            if ended.is_none() && !renew {
                continue;
            }
            // The slot for the next lease: the ended one, else an empty one, else the older
            // lease, whose unused quota is then given back early. Giving back is safe at any
            // time: the swap below takes exactly what no caller has taken.
            let slot = ended
                .or_else(|| (0..2).find(|&slot| book[slot].granted == 0))
                .unwrap_or(1 - newest);
            let returned = if book[slot].granted > 0 {
                let left = entry.slots[slot].quota.swap(0, Ordering::AcqRel);
                (left.min(book[slot].granted), book[slot].start)
            } else {
                (0, 0)
            };
            let capacity = entry.capacity.load(Ordering::Acquire);
            let shortfall = entry.shortfall.swap(0, Ordering::AcqRel);
            // Size the next lease to the demand seen under the newest one (what it served plus
            // what it could not), projected over a whole lease with 50% headroom. A key with
            // no lease to learn from starts generously, or a busy key would crawl up from tiny
            // leases one round trip at a time.
            let request = if !renew {
                0
            } else if book[newest].granted == 0 {
                (capacity / 64).max(1)
            } else {
                let elapsed = now
                    .saturating_sub(book[newest].granted_at)
                    .clamp(1, self.lease_ms);
                let projected =
                    used.saturating_add(shortfall).saturating_mul(self.lease_ms) / elapsed;
                projected.saturating_add(projected / 2).max(1)
            }
            .max(wanted)
            .min(capacity.max(wanted));
            book[slot] = SlotBook::default();
            let call = script::script_call(
                settings,
                script::LEASE,
                capacity,
                request,
                [self.lease_ms, returned.0, returned.1],
            );
            let target = (request > 0).then_some(slot);
            work.push((item.key().to_string(), entry.clone(), request, target, call));
        }
        if work.is_empty() {
            return;
        }
        let calls: Vec<_> = work
            .iter()
            .map(|(key, _, _, _, call)| {
                let key =
                    RedisKey::new(key.as_str()).expect("keys are validated before they are stored");
                (self.redis.entity_keys(&key, "a"), *call)
            })
            .collect();
        let results = self
            .redis
            .run_batch(&script::SCRIPT, script::SOURCE, &calls)
            .await;
        for (index, (_, entry, request, target, _)) in work.iter().enumerate() {
            let outcome = match &results {
                Ok(values) => super::four_numbers(values.get(index), "lease"),
                Err(error) => Err(error.to_string()),
            };
            match outcome {
                Ok([granted, start, retry_after, remaining]) => {
                    if let Some(slot) = *target {
                        let mut book = entry
                            .book
                            .lock()
                            .unwrap_or_else(|poison| poison.into_inner());
                        let serial = book[0].serial.max(book[1].serial) + 1;
                        book[slot] = SlotBook {
                            serial,
                            granted,
                            granted_at: now,
                            start,
                        };
                        drop(book);
                        entry.granted.store(granted, Ordering::Relaxed);
                        entry.slots[slot].quota.store(granted, Ordering::Release);
                        entry.slots[slot]
                            .until
                            .store(now + self.lease_ms, Ordering::Release);
                    }
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
                    // The lease in use keeps serving until it ends; a quota taken back from an
                    // ended lease is dropped (its reservation expires with the window), since
                    // after a failure it is unknown whether the give-back reached Redis.
                    entry.wanted.store(0, Ordering::Release);
                    entry.service.finish(Some(message));
                }
            }
        }
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
        // Each sync that handles this key opens a lease covering `count` unless Redis says the
        // window is full, so this ends with a decision, or with an error if Redis is unreachable.
        let deadline = tokio::time::Instant::now() + super::WAIT_LIMIT;
        loop {
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
            if tokio::time::Instant::now() >= deadline {
                return Err(super::sync_error("no lease from Redis in time".into()));
            }
            let register = || {
                entry.wanted.fetch_max(count.max(1), Ordering::AcqRel);
            };
            entry.service.wait(&self.state.signal, register).await?;
        }
    }

    /// Whether one more call would be admitted now; records nothing. Answered locally while
    /// the key holds quota or is known to be full, otherwise by Redis.
    pub async fn is_allowed(&self, key: &RedisKey) -> Result<RateLimitDecision, TrypemaError> {
        let now = self.state.now_ms();
        if let Some(entry) = self.state.entries.get(key.as_str()) {
            if entry.slots.iter().any(|slot| slot.available(now) > 0) {
                return Ok(RateLimitDecision::Allowed);
            }
            if let Some(rejected) = entry.known_full(now, self.state.window_seconds()) {
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
                    .map(|book| book.iter().any(|slot| slot.granted > 0))
                    .unwrap_or(true)
        });
    }
}
