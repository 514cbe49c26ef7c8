//! Leases: quota reserved in Redis that one instance serves calls from without I/O. Shared by
//! both hybrid strategies (absolute leases units of its capacity, suppressed leases admissions
//! under its hard ceiling).
//!
//! Sizing rules, so that every capacity from 1 up behaves like the redis provider:
//! - callers waiting for Redis get exactly what they asked for if it fits (per-call decisions
//!   when quota is scarce), and a caller that cannot fit reserves nothing;
//! - on top of that, `extra` follows demand: what this instance asked for (served or not),
//!   measured over periods of at least one lease (so a burst counts once, and frequent
//!   renewals do not shrink the estimate) and projected over one lease with 50% headroom;
//! - the unused quota an instance holds at once beyond what waiting callers asked for (both
//!   leases together) is at most `capacity / 16`, and Redis grants at most half of what is
//!   left, so instances share fairly and a crash strands a bounded amount.
//!
//! A lease is recorded in Redis in a bucket that starts when the lease ends (so whatever is
//! admitted under it stays counted at least a full window) and is used locally only until it
//! ends by this process's clock, measured from before the request was sent.

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Mutex,
};

use crate::{redis::script::GiveBack, RateLimitDecision};

/// `need_min` when nobody waits.
const NO_NEED: u64 = u64::MAX;

#[derive(Default)]
struct Slot {
    quota: AtomicU64,
    /// Local clock (ms): the quota may only be used before this.
    until: AtomicU64,
}

impl Slot {
    #[inline]
    fn take(&self, now_ms: u64, count: u64) -> bool {
        if now_ms >= self.until.load(Ordering::Acquire) {
            return false;
        }
        let mut quota = self.quota.load(Ordering::Acquire);
        while quota >= count {
            match self.quota.compare_exchange_weak(
                quota,
                quota - count,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => quota = actual,
            }
        }
        false
    }

    #[inline]
    fn available(&self, now_ms: u64) -> u64 {
        if now_ms < self.until.load(Ordering::Acquire) {
            self.quota.load(Ordering::Acquire)
        } else {
            0
        }
    }
}

/// What the sync task remembers of a slot's lease.
#[derive(Default, Clone, Copy)]
struct SlotBook {
    /// Orders the leases: the higher, the newer.
    serial: u64,
    granted: u64,
    /// Given back or reported as used so far (suppressed releases used units as it reports them).
    released: u64,
    start: f64,
    epoch: f64,
}

/// Redis's last refusal, so calls that cannot fit are refused locally for a short while.
#[derive(Default)]
struct Refusal {
    until: AtomicU64,
    available: AtomicU64,
    capacity: AtomicU64,
    reset_at: AtomicU64,
    remaining_after_waiting: AtomicU64,
}

/// How a sync round treats leases, per strategy.
#[derive(Clone, Copy)]
pub(crate) struct LeasePolicy {
    pub(crate) lease_ms: u64,
    /// A busy key's lease is renewed this long before it ends.
    pub(crate) renew_margin_ms: u64,
    /// How long a refusal from Redis is reused locally (at most, and at least).
    pub(crate) refusal_ms: u64,
    pub(crate) min_refusal_ms: u64,
    /// Suppressed: used units are released (and reported as observed) at every sync.
    pub(crate) release_used: bool,
}

/// One request to Redis for a key: give-backs, then a reservation.
#[derive(Clone, Copy, Default)]
pub(crate) struct LeaseRequest {
    pub(crate) need_min: u64,
    pub(crate) need_total: u64,
    pub(crate) extra: u64,
    pub(crate) give_backs: [GiveBack; 2],
    /// The slot a grant goes to (`None`: nothing is requested).
    target: Option<usize>,
    /// Units this request reports as used (released from their leases).
    pub(crate) used_released: u64,
    /// Units this request gives back unused.
    pub(crate) returned: u64,
}

impl LeaseRequest {
    /// A request that only gives back (nothing is reserved).
    pub(crate) fn giving_back(give_backs: [GiveBack; 2]) -> Self {
        Self {
            give_backs,
            ..Self::default()
        }
    }
}

/// Redis's answer to a [`LeaseRequest`].
pub(crate) struct Grant {
    pub(crate) granted: u64,
    pub(crate) start: f64,
    pub(crate) epoch: f64,
    pub(crate) capacity: u64,
    pub(crate) available_after: u64,
    pub(crate) reset_ms: u64,
    pub(crate) remaining_after_waiting: u64,
}

/// The outcome of taking from the leases.
pub(crate) enum Take {
    Taken {
        /// The leases run low: the caller should wake the sync task.
        renew: bool,
    },
    Short,
}

/// One key's leases (two slots, so a lease can be renewed while the previous one still
/// serves), its demand and Redis's last refusal.
#[derive(Default)]
pub(crate) struct Leases {
    slots: [Slot; 2],
    book: Mutex<[SlotBook; 2]>,
    need_total: AtomicU64,
    need_min: AtomicU64,
    /// What callers ever asked of this key (first attempts), and its value when the running
    /// demand period began (at `demand_since`).
    demand: AtomicU64,
    period_start_demand: AtomicU64,
    demand_since: AtomicU64,
    /// Demand per lease period over the last complete period (at least a lease long).
    period_demand: AtomicU64,
    newest_grant: AtomicU64,
    renew_early: AtomicBool,
    refusal: Refusal,
}

impl Leases {
    pub(crate) fn new(now_ms: u64) -> Self {
        let leases = Self::default();
        leases.need_min.store(NO_NEED, Ordering::Relaxed);
        leases.demand_since.store(now_ms, Ordering::Relaxed);
        leases
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [SlotBook; 2]> {
        self.book
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Takes `count` from the lease that ends first, else the other. `demand`: count this
    /// attempt as demand (a caller's first attempt, not its retries).
    #[inline]
    pub(crate) fn take(&self, now_ms: u64, count: u64, demand: bool) -> Take {
        if demand {
            self.demand.fetch_add(count, Ordering::Relaxed);
        }
        let [a, b] = &self.slots;
        let (first, second) = if a.until.load(Ordering::Relaxed) <= b.until.load(Ordering::Relaxed)
        {
            (a, b)
        } else {
            (b, a)
        };
        if !(first.take(now_ms, count) || second.take(now_ms, count)) {
            return Take::Short;
        }
        let left = first.available(now_ms) + second.available(now_ms);
        let renew = left * 4 < self.newest_grant.load(Ordering::Relaxed)
            && !self.renew_early.swap(true, Ordering::AcqRel);
        Take::Taken { renew }
    }

    /// Takes back up to `count` units this instance admitted from its live leases: they are
    /// released from the leases' buckets by the returned give-backs (which the caller sends),
    /// never more than were used, so every unit the instance can still admit stays reserved.
    pub(crate) fn refund_used(&self, now_ms: u64, count: u64) -> (u64, [GiveBack; 2]) {
        let mut book = self.lock();
        let mut left = count;
        let mut give_backs = [GiveBack::default(); 2];
        for (index, entry) in book.iter_mut().enumerate() {
            let slot = &self.slots[index];
            if left == 0 || entry.granted == 0 || now_ms >= slot.until.load(Ordering::Acquire) {
                continue;
            }
            let used =
                (entry.granted - entry.released).saturating_sub(slot.quota.load(Ordering::Acquire));
            let back = used.min(left);
            entry.released += back;
            left -= back;
            give_backs[index] = GiveBack {
                start: entry.start,
                epoch: entry.epoch,
                amount: back,
            };
        }
        (count - left, give_backs)
    }

    /// Counts `count` as demand without taking anything.
    pub(crate) fn note_demand(&self, count: u64) {
        self.demand.fetch_add(count, Ordering::Relaxed);
    }

    /// Unused quota this instance holds right now.
    pub(crate) fn available(&self, now_ms: u64) -> u64 {
        self.slots.iter().map(|slot| slot.available(now_ms)).sum()
    }

    /// Redis's recent refusal of `count`, as the redis provider would give it, if it still holds.
    pub(crate) fn refused(
        &self,
        now_ms: u64,
        count: u64,
        window_ms: u64,
    ) -> Option<RateLimitDecision> {
        let refusal = &self.refusal;
        if now_ms >= refusal.until.load(Ordering::Acquire)
            || count <= refusal.available.load(Ordering::Acquire)
        {
            return None;
        }
        let retry_after_ms = if count > refusal.capacity.load(Ordering::Acquire) {
            window_ms
        } else {
            refusal
                .reset_at
                .load(Ordering::Acquire)
                .saturating_sub(now_ms)
                .max(1)
        };
        Some(RateLimitDecision::Rejected {
            window_size_seconds: window_ms / 1000,
            retry_after_ms,
            remaining_after_waiting: refusal.remaining_after_waiting.load(Ordering::Acquire),
        })
    }

    /// A caller waits for Redis to cover `count`.
    pub(crate) fn register(&self, count: u64) {
        self.need_total.fetch_add(count, Ordering::AcqRel);
        self.need_min.fetch_min(count, Ordering::AcqRel);
    }

    /// Forgets what callers wait for (they are answered another way); whether any waited.
    pub(crate) fn take_need(&self) -> bool {
        self.need_min.store(NO_NEED, Ordering::Release);
        self.need_total.swap(0, Ordering::AcqRel) > 0
    }

    /// Whether a sync round may have something to do for this key (cheap, no lock).
    pub(crate) fn may_need_sync(&self, now_ms: u64, policy: &LeasePolicy) -> bool {
        self.need_total.load(Ordering::Acquire) > 0
            || self.renew_early.load(Ordering::Acquire)
            || self.slots.iter().any(|slot| {
                let until = slot.until.load(Ordering::Acquire);
                until != 0 && now_ms + policy.renew_margin_ms >= until
            })
            || (policy.release_used && self.has_lease())
    }

    fn has_lease(&self) -> bool {
        self.slots
            .iter()
            .any(|slot| slot.until.load(Ordering::Acquire) != 0)
    }

    /// Whether this key holds no lease (its entry can be forgotten without losing quota).
    pub(crate) fn is_settled(&self) -> bool {
        self.lock().iter().all(|slot| slot.granted == slot.released)
    }

    /// Decides this round's give-backs and reservation; `None` when there is nothing to send.
    /// `capacity` bounds `extra` (to a sixteenth of it). `report`: the caller sends a call for
    /// this key anyway. With `release_used`, every call sent also releases the units used so
    /// far (the caller reports them as observed in the same call, so nothing is ever counted
    /// neither as reserved nor as observed).
    pub(crate) fn plan(
        &self,
        now_ms: u64,
        capacity: u64,
        policy: &LeasePolicy,
        report: bool,
    ) -> Option<LeaseRequest> {
        let mut book = self.lock();
        let need_total = self.need_total.swap(0, Ordering::AcqRel);
        let need_min = self.need_min.swap(NO_NEED, Ordering::AcqRel);
        let running_low = self.renew_early.swap(false, Ordering::AcqRel);
        let mut request = LeaseRequest::default();
        let mut free = [false; 2];
        // Ended leases give back what they did not use.
        for (index, entry) in book.iter_mut().enumerate() {
            if entry.granted == 0 {
                free[index] = true;
            } else if now_ms >= self.slots[index].until.load(Ordering::Acquire) {
                self.close_slot(index, entry, &mut request, policy.release_used);
                free[index] = true;
            }
        }
        let newest = if book[0].serial >= book[1].serial {
            0
        } else {
            1
        };
        // A lease about to end is renewed if it was used: a key called about once a lease
        // keeps a live lease instead of waiting for Redis on every call. (A key called once
        // gets one renewal, which is not used and so not renewed.)
        let ending = !free[newest] && {
            let slot = &self.slots[newest];
            let used =
                slot.quota.load(Ordering::Acquire) < book[newest].granted - book[newest].released;
            now_ms + policy.renew_margin_ms >= slot.until.load(Ordering::Acquire) && used
        };
        if need_total > 0 || running_low || ending {
            // The next lease goes to a free slot, else replaces the older lease, whose unused
            // quota is given back now (safe at any time: the swap takes what no caller took).
            let target = match free {
                [true, true] => 0,
                [true, false] => 0,
                [false, true] => 1,
                [false, false] => 1 - newest,
            };
            if !free[target] {
                self.close_slot(target, &mut book[target], &mut request, policy.release_used);
            }
            let holding = self.available(now_ms);
            let projected = self.projected_demand(now_ms, policy.lease_ms);
            // Unused quota held at once (both leases) stays within a sixteenth of the capacity
            // beyond what waiting callers asked for: that is what a crash can strand.
            request.extra = projected
                .saturating_sub(holding.saturating_add(need_total))
                .min((capacity / 16).saturating_sub(holding));
            request.need_total = need_total;
            request.need_min = if need_min == NO_NEED { 0 } else { need_min };
            if need_total > 0 || request.extra > 0 {
                request.target = Some(target);
            }
        }
        let sends = request.target.is_some()
            || request.give_backs.iter().any(|give| give.amount > 0)
            || report;
        if !sends {
            return None;
        }
        if policy.release_used {
            for (index, entry) in book.iter_mut().enumerate() {
                if entry.granted == 0 {
                    continue;
                }
                let used = (entry.granted - entry.released)
                    .saturating_sub(self.slots[index].quota.load(Ordering::Acquire));
                if used > 0 {
                    entry.released += used;
                    request.used_released += used;
                    let earlier = request.give_backs[index].amount;
                    request.give_backs[index] = GiveBack {
                        start: entry.start,
                        epoch: entry.epoch,
                        amount: earlier + used,
                    };
                }
            }
        }
        Some(request)
    }

    /// Demand over the next lease, with half again as headroom: the larger of the last complete
    /// period's rate and the running period's count spread over at least a lease (so a burst
    /// counts once, not as a rate). Periods last at least a lease, however often this runs:
    /// measured over one sync interval, a steady demand would look a lease/interval times
    /// smaller. Called with the book locked.
    fn projected_demand(&self, now_ms: u64, lease_ms: u64) -> u64 {
        let lease_ms = u128::from(lease_ms.max(1));
        let elapsed = u128::from(now_ms.saturating_sub(self.demand_since.load(Ordering::Acquire)));
        let total = self.demand.load(Ordering::Acquire);
        let demand =
            u128::from(total.saturating_sub(self.period_start_demand.load(Ordering::Acquire)));
        let running = demand * lease_ms / elapsed.max(lease_ms);
        if elapsed >= lease_ms {
            self.period_start_demand.store(total, Ordering::Release);
            self.demand_since.store(now_ms, Ordering::Release);
            let per_lease = (demand * lease_ms / elapsed).min(u128::from(u64::MAX)) as u64;
            self.period_demand.store(per_lease, Ordering::Release);
        }
        let per_lease = running.max(u128::from(self.period_demand.load(Ordering::Acquire)));
        (per_lease * 3).div_ceil(2).min(u128::from(u64::MAX)) as u64
    }

    /// Ends slot `index`: gives its unused quota back in `request` and, with `release_used`
    /// (suppressed, whose used units are reported as observed), releases the used units too.
    /// Absolute keeps used units in the lease's bucket: they stay counted a window after it.
    fn close_slot(
        &self,
        index: usize,
        entry: &mut SlotBook,
        request: &mut LeaseRequest,
        release_used: bool,
    ) {
        let slot = &self.slots[index];
        slot.until.store(0, Ordering::Release);
        let left = slot.quota.swap(0, Ordering::AcqRel);
        let outstanding = entry.granted - entry.released;
        let unused = left.min(outstanding);
        let used = outstanding - unused;
        request.returned += unused;
        let mut amount = unused;
        if release_used {
            request.used_released += used;
            amount += used;
        }
        let earlier = request.give_backs[index].amount;
        request.give_backs[index] = GiveBack {
            start: entry.start,
            epoch: entry.epoch,
            amount: earlier + amount,
        };
        *entry = SlotBook::default();
    }

    /// Ends every lease (close): what `plan` would give back if both ended now.
    pub(crate) fn close_all(&self, request: &mut LeaseRequest, release_used: bool) {
        let mut book = self.lock();
        for index in 0..2 {
            if book[index].granted > 0 {
                let mut entry = book[index];
                self.close_slot(index, &mut entry, request, release_used);
                book[index] = entry;
            }
        }
    }

    /// Records Redis's answer: the grant goes to the request's slot, valid until `lease_end`
    /// (local clock, counted from before the request was sent).
    pub(crate) fn granted(&self, request: &LeaseRequest, grant: &Grant, lease_end: u64) {
        if let Some(target) = request.target {
            if grant.granted > 0 {
                let mut book = self.lock();
                let serial = book[0].serial.max(book[1].serial) + 1;
                book[target] = SlotBook {
                    serial,
                    granted: grant.granted,
                    released: 0,
                    start: grant.start,
                    epoch: grant.epoch,
                };
                drop(book);
                self.newest_grant.store(grant.granted, Ordering::Relaxed);
                self.slots[target]
                    .quota
                    .store(grant.granted, Ordering::Release);
                self.slots[target].until.store(lease_end, Ordering::Release);
            }
        }
    }

    /// Remembers that Redis could not cover what was asked (or clears it when it could).
    pub(crate) fn note_refusal(
        &self,
        request: &LeaseRequest,
        grant: &Grant,
        now_ms: u64,
        policy: &LeasePolicy,
    ) {
        let refusal = &self.refusal;
        if request.need_total > 0 && grant.granted < request.need_total {
            refusal
                .available
                .store(grant.available_after, Ordering::Release);
            refusal.capacity.store(grant.capacity, Ordering::Release);
            refusal
                .reset_at
                .store(now_ms + grant.reset_ms, Ordering::Release);
            refusal
                .remaining_after_waiting
                .store(grant.remaining_after_waiting, Ordering::Release);
            // Kept at least a sync interval (a count that can never fit has no reset time), so
            // the callers this answer was for read it before it expires.
            let until = now_ms
                + grant
                    .reset_ms
                    .clamp(policy.min_refusal_ms, policy.refusal_ms);
            refusal.until.store(until, Ordering::Release);
        } else if request.need_total > 0 {
            refusal.until.store(0, Ordering::Release);
        }
    }

    /// Forgets every lease without giving anything back (after `reset`, whose DEL already freed
    /// the quota in Redis).
    pub(crate) fn forget(&self) {
        let mut book = self.lock();
        for index in 0..2 {
            self.slots[index].until.store(0, Ordering::Release);
            self.slots[index].quota.store(0, Ordering::Release);
            book[index] = SlotBook::default();
        }
        self.refusal.until.store(0, Ordering::Release);
        self.newest_grant.store(0, Ordering::Relaxed);
    }
}
