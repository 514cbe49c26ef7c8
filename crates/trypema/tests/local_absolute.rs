//! The local provider's absolute strategy, driven by a mock clock (plus two real-clock
//! concurrency tests).

mod common;

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Barrier,
    },
    thread,
};

use common::{rate, rejected, Mocked};
use trypema::{Quota, QuotaDecision, RateLimitDecision, RateLimiter};

use RateLimitDecision::Allowed;

#[test]
fn capacity_is_floor_of_window_times_rate() {
    let t = Mocked::new(10, 10);
    let abs = t.rl.local().absolute();
    let r = rate(2.5);
    for i in 0..25 {
        assert_eq!(
            abs.inc("k", &r, 1),
            Allowed,
            "call {i} of 25 must be allowed"
        );
    }
    assert!(matches!(
        abs.inc("k", &r, 1),
        RateLimitDecision::Rejected { .. }
    ));

    // A fractional product is rounded down: 1 s × 2.99/s admits 2.
    let t = Mocked::new(1, 10);
    let abs = t.rl.local().absolute();
    let r = rate(2.99);
    assert_eq!(abs.inc("k", &r, 1), Allowed);
    assert_eq!(abs.inc("k", &r, 1), Allowed);
    assert!(matches!(
        abs.inc("k", &r, 1),
        RateLimitDecision::Rejected { .. }
    ));

    // A rate below 1/window gives a capacity of 0: nothing is ever admitted.
    let t = Mocked::new(1, 10);
    let abs = t.rl.local().absolute();
    assert!(matches!(
        abs.inc("k", &rate(0.5), 1),
        RateLimitDecision::Rejected { .. }
    ));
}

#[test]
fn counts_greater_than_one() {
    let t = Mocked::new(10, 10);
    let abs = t.rl.local().absolute();
    let r = rate(1.0); // C = 10
    assert_eq!(abs.inc("k", &r, 4), Allowed);
    assert_eq!(abs.inc("k", &r, 4), Allowed); // 8
    assert_eq!(abs.inc("k", &r, 3), rejected(10, 10_001, 0), "8 + 3 > 10");
    assert_eq!(abs.inc("k", &r, 2), Allowed, "8 + 2 == 10 fits exactly");
    assert_eq!(abs.inc("k", &r, 1), rejected(10, 10_001, 0));
    assert_eq!(abs.inc("k", &r, 0), Allowed, "a zero count never goes over");

    // A count larger than the capacity is refused even on a fresh key, and told to wait a
    // whole window (W·1000 ms exactly), with or without state.
    assert_eq!(abs.inc("fresh", &r, 11), rejected(10, 10_000, 0));
    assert_eq!(abs.inc("fresh", &r, 10), Allowed);
    assert_eq!(abs.inc("fresh", &r, 11), rejected(10, 10_000, 0));
}

#[test]
fn a_count_above_the_capacity_waits_a_whole_window() {
    let mut t = Mocked::new(10, 10);
    let r = rate(1.0); // C = 10
    assert_eq!(t.rl.local().absolute().inc("k", &r, 3), Allowed);
    t.at(4000);
    assert_eq!(t.rl.local().absolute().inc("k", &r, 4), Allowed);
    t.at(6000);
    // n <= C: the oldest bucket (3 at 0) leaves at 10 001; 4 are left then.
    assert_eq!(
        t.rl.local().absolute().inc("k", &r, 4),
        rejected(10, 4001, 4)
    );
    // n > C: a whole window, whatever the buckets; what is left after the oldest is the same.
    assert_eq!(
        t.rl.local().absolute().inc("k", &r, 11),
        rejected(10, 10_000, 4)
    );
    assert_eq!(
        t.rl.local().absolute().inc("k", &r, u64::MAX),
        rejected(10, 10_000, 4)
    );
    // Nothing was recorded by the refusals.
    assert_eq!(t.rl.local().absolute().inc("k", &r, 3), Allowed);
}

/// `inc` with a count of 0 is always `Allowed` and creates no state.
#[test]
fn a_zero_count_creates_no_state() {
    let t = Mocked::new(10, 10);
    let r = rate(1.0);
    assert_eq!(t.rl.local().absolute().inc("zero", &r, 0), Allowed);
    assert_eq!(t.rl.local().absolute().key_count(), 0, "absolute");
    assert_eq!(t.rl.local().suppressed().inc("zero", &r, 0), Allowed);
    assert_eq!(t.rl.local().suppressed().key_count(), 0, "suppressed");
}

#[test]
fn a_zero_count_is_always_allowed_and_fixes_no_rate() {
    let mut t = Mocked::new(1, 10);
    // A zero count on a fresh key does not fix the key's rate: the first real inc does.
    assert_eq!(t.rl.local().absolute().inc("k", &rate(1.0), 0), Allowed);
    assert_eq!(t.rl.local().absolute().inc("k", &rate(5.0), 5), Allowed);
    assert_eq!(
        t.rl.local().absolute().inc("k", &rate(5.0), 1),
        rejected(1, 1001, 0)
    );
    // A full window still takes a zero count.
    assert_eq!(t.rl.local().absolute().inc("k", &rate(5.0), 0), Allowed);
    // Once the window is empty a zero count changes nothing either.
    t.at(1001);
    assert_eq!(t.rl.local().absolute().inc("k", &rate(1.0), 0), Allowed);
    assert_eq!(t.rl.local().absolute().inc("k", &rate(3.0), 3), Allowed);
    assert_eq!(
        t.rl.local().absolute().inc("k", &rate(3.0), 1),
        rejected(1, 1001, 0)
    );
}

#[test]
fn rejected_inc_records_nothing() {
    let mut t = Mocked::new(10, 10);
    let r = rate(1.0); // C = 10
    assert_eq!(t.rl.local().absolute().inc("k", &r, 6), Allowed);
    t.advance(500);
    assert_eq!(t.rl.local().absolute().inc("k", &r, 3), Allowed); // 9 in two buckets
    t.advance(500);
    let abs = t.rl.local().absolute();
    let expected = rejected(10, 10_001 - 1000, 3);
    for _ in 0..100 {
        assert_eq!(abs.inc("k", &r, 2), expected, "9 + 2 > 10, hints unchanged");
    }
    // The hundred refusals left no trace: exactly one more unit still fits.
    assert_eq!(abs.inc("k", &r, 1), Allowed);
    assert_eq!(abs.inc("k", &r, 1), rejected(10, 9001, 4));
}

#[test]
fn rejection_hints_for_a_multi_bucket_window() {
    let mut t = Mocked::new(1, 10);
    let r = rate(9.0); // C = 9
    t.at(0);
    assert_eq!(t.rl.local().absolute().inc("k", &r, 3), Allowed);
    t.at(100);
    assert_eq!(t.rl.local().absolute().inc("k", &r, 2), Allowed);
    t.at(250);
    assert_eq!(t.rl.local().absolute().inc("k", &r, 4), Allowed); // 9 = C

    t.at(500);
    // The oldest bucket (start 0, count 3) leaves at 1001.
    assert_eq!(t.rl.local().absolute().inc("k", &r, 1), rejected(1, 501, 6));
    t.at(1000);
    assert_eq!(
        t.rl.local().absolute().inc("k", &r, 1),
        rejected(1, 1, 6),
        "a bucket exactly one window old is still counted"
    );
    t.at(1001);
    assert_eq!(
        t.rl.local().absolute().inc("k", &r, 1),
        Allowed,
        "3 left, 6 + 1 <= 9"
    );
    // Now buckets are 100:2, 250:4, 1001:1 → 7 in the window.
    assert_eq!(t.rl.local().absolute().inc("k", &r, 3), rejected(1, 100, 5));
    t.at(1101);
    // 100:2 has left: 250:4 is the oldest.
    assert_eq!(t.rl.local().absolute().inc("k", &r, 5), rejected(1, 150, 1));
    assert_eq!(t.rl.local().absolute().inc("k", &r, 4), Allowed); // 9 again
    assert_eq!(t.rl.local().absolute().is_allowed("k"), rejected(1, 150, 5));
}

#[test]
fn increments_less_than_a_group_apart_share_a_bucket() {
    let mut t = Mocked::new(1, 100);
    let r = rate(5.0); // C = 5
                       // 0, 50 and 99 join the bucket that started at 0; 100 opens a new one; 150 joins it.
    for ms in [0, 50, 99, 100, 150] {
        t.at(ms);
        assert_eq!(
            t.rl.local().absolute().inc("k", &r, 1),
            Allowed,
            "at {ms} ms"
        );
    }
    assert_eq!(
        t.rl.local().absolute().inc("k", &r, 1),
        rejected(1, 851, 2),
        "the oldest bucket holds the 3 increments made at 0, 50 and 99 ms"
    );
    t.at(1001);
    // That whole bucket leaves at once.
    assert_eq!(t.rl.local().absolute().inc("k", &r, 3), Allowed);
    assert_eq!(t.rl.local().absolute().inc("k", &r, 1), rejected(1, 100, 3));

    // Grouping is measured from the bucket's start, not from the previous increment:
    // 0 and 60 share a bucket, 120 does not join it although it is only 60 ms after 60.
    let mut t = Mocked::new(1, 100);
    for ms in [0, 60, 120, 130, 220] {
        t.at(ms);
        assert_eq!(
            t.rl.local().absolute().inc("k", &r, 1),
            Allowed,
            "at {ms} ms"
        );
    }
    // Buckets: 0:2, 120:2, 220:1.
    assert_eq!(t.rl.local().absolute().inc("k", &r, 1), rejected(1, 781, 3));
    t.at(1001);
    assert_eq!(t.rl.local().absolute().inc("k", &r, 2), Allowed);
    assert_eq!(t.rl.local().absolute().inc("k", &r, 1), rejected(1, 120, 3));

    // A window is never divided into more than 500 buckets: the group in force is
    // max(G, ceil(W·1000 / 500)). With W = 10 s and G = 10 ms that is 20 ms: increments 19 ms
    // apart share a bucket, 20 ms apart they do not.
    let mut t = Mocked::new(10, 10);
    let r = rate(0.5); // C = 5
    assert_eq!(t.rl.local().absolute().inc("k", &r, 1), Allowed);
    t.at(19);
    assert_eq!(t.rl.local().absolute().inc("k", &r, 1), Allowed);
    t.at(20);
    assert_eq!(t.rl.local().absolute().inc("k", &r, 3), Allowed);
    assert_eq!(
        t.rl.local().absolute().inc("k", &r, 1),
        rejected(10, 10_001 - 20, 3),
        "the increments at 0 and 19 ms share the oldest bucket"
    );

    // With W = 1 s the group in force is at least 2 ms: a 1 ms group coalesces increments
    // 1 ms apart, and only those less than 2 ms apart.
    let mut t = Mocked::new(1, 1);
    let r = rate(5.0); // C = 5
    assert_eq!(t.rl.local().absolute().inc("k", &r, 1), Allowed);
    t.advance(1);
    assert_eq!(t.rl.local().absolute().inc("k", &r, 1), Allowed);
    t.advance(1);
    assert_eq!(t.rl.local().absolute().inc("k", &r, 3), Allowed);
    assert_eq!(
        t.rl.local().absolute().inc("k", &r, 1),
        rejected(1, 999, 3),
        "the increments at 0 and 1 ms share the oldest bucket"
    );

    // W = 3600 s: 7200 ms, whatever G.
    let mut t = Mocked::new(3600, 1);
    let r = rate(1.0); // C = 3600
    assert_eq!(t.rl.local().absolute().inc("k", &r, 1000), Allowed);
    t.at(7199);
    assert_eq!(t.rl.local().absolute().inc("k", &r, 2000), Allowed);
    t.at(7200);
    assert_eq!(t.rl.local().absolute().inc("k", &r, 600), Allowed);
    assert_eq!(
        t.rl.local().absolute().inc("k", &r, 1),
        rejected(3600, 3_600_001 - 7200, 600)
    );
}

#[test]
fn everything_expires_after_the_window() {
    let mut t = Mocked::new(2, 10);
    let r = rate(1.0); // C = 2
    assert_eq!(t.rl.local().absolute().inc("k", &r, 2), Allowed);
    t.at(1999);
    assert_eq!(t.rl.local().absolute().inc("k", &r, 1), rejected(2, 2, 0));
    t.at(2000);
    assert_eq!(t.rl.local().absolute().inc("k", &r, 1), rejected(2, 1, 0));
    assert_eq!(t.rl.local().absolute().is_allowed("k"), rejected(2, 1, 0));
    t.at(2001);
    assert_eq!(t.rl.local().absolute().is_allowed("k"), Allowed);
    assert_eq!(t.rl.local().absolute().inc("k", &r, 1), Allowed);
    assert_eq!(t.rl.local().absolute().inc("k", &r, 1), Allowed);
    assert_eq!(
        t.rl.local().absolute().inc("k", &r, 1),
        rejected(2, 2001, 0)
    );
    // A long idle period empties the window just the same.
    t.advance(3_600_000);
    assert_eq!(t.rl.local().absolute().inc("k", &r, 2), Allowed);
}

#[test]
fn the_first_rate_sticks_until_the_window_is_empty() {
    let mut t = Mocked::new(1, 10);
    let abs = t.rl.local().absolute();
    // Created with 3/s: a later, larger rate does not raise the capacity.
    assert_eq!(abs.inc("k", &rate(3.0), 1), Allowed);
    assert_eq!(abs.inc("k", &rate(100.0), 1), Allowed);
    assert_eq!(abs.inc("k", &rate(100.0), 1), Allowed);
    assert!(matches!(
        abs.inc("k", &rate(100.0), 1),
        RateLimitDecision::Rejected { .. }
    ));
    // Created with 100/s: a later, smaller rate does not lower it.
    assert_eq!(abs.inc("big", &rate(100.0), 50), Allowed);
    assert_eq!(abs.inc("big", &rate(1.0), 50), Allowed);
    assert!(matches!(
        abs.inc("big", &rate(1.0), 1),
        RateLimitDecision::Rejected { .. }
    ));

    // The rate sticks while any bucket is alive, even after older ones have left.
    t.at(600);
    let abs = t.rl.local().absolute();
    assert_eq!(abs.inc("s", &rate(2.0), 1), Allowed);
    t.at(1200);
    assert_eq!(t.rl.local().absolute().inc("s", &rate(2.0), 1), Allowed);
    t.at(1601); // the 600 bucket has left, the 1200 one is alive
    let abs = t.rl.local().absolute();
    assert_eq!(abs.inc("s", &rate(50.0), 1), Allowed);
    assert_eq!(
        abs.inc("s", &rate(50.0), 1),
        rejected(1, 600, 1),
        "still 2/s"
    );

    // Once the window is empty, the next inc's rate applies.
    t.at(1001 + 1000);
    let abs = t.rl.local().absolute();
    for i in 0..5 {
        assert_eq!(
            abs.inc("k", &rate(5.0), 1),
            Allowed,
            "call {i} under the new rate"
        );
    }
    assert_eq!(abs.inc("k", &rate(5.0), 1), rejected(1, 1001, 0));
    assert_eq!(abs.inc("big", &rate(1.0), 1), Allowed);
    assert_eq!(
        abs.inc("big", &rate(100.0), 1),
        rejected(1, 1001, 0),
        "now 1/s"
    );
}

#[test]
fn is_allowed_reports_without_recording() {
    let mut t = Mocked::new(1, 10);
    let r = rate(3.0); // C = 3
    {
        let abs = t.rl.local().absolute();
        assert_eq!(abs.is_allowed("unknown"), Allowed);
        assert_eq!(abs.key_count(), 0, "is_allowed must not create state");
        assert_eq!(abs.inc("k", &r, 2), Allowed);
        // One more unit fits, so is_allowed says yes, even though a count of 2 would not fit.
        for _ in 0..50 {
            assert_eq!(abs.is_allowed("k"), Allowed);
        }
        assert_eq!(abs.inc("k", &r, 2), rejected(1, 1001, 0));
    }
    t.at(300);
    {
        let abs = t.rl.local().absolute();
        assert_eq!(
            abs.inc("k", &r, 1),
            Allowed,
            "the 50 is_allowed calls recorded nothing"
        );
        let expected = rejected(1, 701, 1);
        assert_eq!(
            abs.is_allowed("k"),
            expected,
            "in_window == C is a refusal, same hints"
        );
        assert_eq!(abs.inc("k", &r, 1), expected);
        assert_eq!(abs.key_count(), 1);
    }
    t.at(1001);
    assert_eq!(
        t.rl.local().absolute().is_allowed("k"),
        Allowed,
        "1 left in the window"
    );
    t.at(1301);
    assert_eq!(
        t.rl.local().absolute().is_allowed("k"),
        Allowed,
        "window empty"
    );
    // Still nothing was recorded: the full capacity is available.
    assert_eq!(t.rl.local().absolute().inc("k", &r, 3), Allowed);
}

#[test]
fn keys_are_independent() {
    let mut t = Mocked::new(1, 10);
    let abs = t.rl.local().absolute();
    assert_eq!(abs.inc("a", &rate(2.0), 2), Allowed);
    assert_eq!(abs.inc("a", &rate(2.0), 1), rejected(1, 1001, 0));
    // "b" has its own window and its own rate.
    for _ in 0..7 {
        assert_eq!(abs.inc("b", &rate(7.0), 1), Allowed);
    }
    assert_eq!(abs.inc("b", &rate(7.0), 1), rejected(1, 1001, 0));
    assert_eq!(abs.is_allowed("c"), Allowed);
    assert_eq!(abs.key_count(), 2);
    t.at(500);
    let abs = t.rl.local().absolute();
    assert_eq!(abs.inc("c", &rate(1.0), 1), Allowed);
    assert_eq!(
        abs.inc("a", &rate(2.0), 1),
        rejected(1, 501, 0),
        "untouched by b and c"
    );
    // Keys that differ only in case or by a prefix are different keys.
    assert_eq!(abs.inc("A", &rate(2.0), 2), Allowed);
    assert_eq!(abs.inc("a ", &rate(2.0), 2), Allowed);
    assert_eq!(abs.key_count(), 5);
    // The suppressed strategy keeps its own state under the same name.
    assert_eq!(t.rl.local().suppressed().inc("a", &rate(2.0), 2), Allowed);
    assert_eq!(t.rl.local().suppressed().key_count(), 1);
    assert_eq!(t.rl.local().absolute().is_allowed("a"), rejected(1, 501, 0));
}

#[test]
fn concurrent_callers_never_exceed_the_capacity() {
    const THREADS: usize = 8;
    const CALLS: usize = 2_000;
    // Real clock, long window: nothing expires during the test. C = 4000 × 0.25 = 1000.
    let rl = Arc::new(
        RateLimiter::local_builder()
            .window_size_seconds(4000)
            .build()
            .unwrap(),
    );
    let r = rate(0.25);
    let capacity = 1000;
    let allowed = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let (rl, allowed, start) = (rl.clone(), allowed.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                for _ in 0..CALLS {
                    match rl.local().absolute().inc("shared", &r, 1) {
                        Allowed => {
                            allowed.fetch_add(1, Ordering::Relaxed);
                        }
                        RateLimitDecision::Rejected {
                            window_size_seconds,
                            remaining_after_waiting,
                            ..
                        } => {
                            assert_eq!(window_size_seconds, 4000);
                            assert!(remaining_after_waiting < capacity);
                        }
                        other => panic!("absolute returned {other:?}"),
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("a caller panicked");
    }
    assert_eq!(allowed.load(Ordering::Relaxed), capacity);
    assert!(matches!(
        rl.local().absolute().is_allowed("shared"),
        RateLimitDecision::Rejected { .. }
    ));
}

#[test]
fn many_threads_on_many_keys() {
    const THREADS: usize = 8;
    const KEYS: usize = 200;
    const ROUNDS: usize = 30;
    let rl = Arc::new(
        RateLimiter::local_builder()
            .window_size_seconds(3600)
            .build()
            .unwrap(),
    );
    // Each key admits floor(3600 × 2^-8) = 14 units per hour; keys get 8 × 30 = 240 attempts.
    let r = rate(0.003_906_25);
    let allowed: Arc<Vec<AtomicU64>> = Arc::new((0..KEYS).map(|_| AtomicU64::new(0)).collect());
    let start = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|thread_index| {
            let (rl, allowed, start) = (rl.clone(), allowed.clone(), start.clone());
            thread::spawn(move || {
                start.wait();
                for round in 0..ROUNDS {
                    for offset in 0..KEYS {
                        // Every thread walks the keys in a different order.
                        let k = (offset * (2 * thread_index + 1) + round) % KEYS;
                        let key = format!("key-{k}");
                        if rl.local().absolute().inc(&key, &r, 1) == Allowed {
                            allowed[k].fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = rl.local().absolute().is_allowed(&key);
                        let _ = rl.local().suppressed().inc(&key, &r, 1);
                        let f = rl.local().suppressed().get_suppression_factor(&key);
                        assert!((0.0..=1.0).contains(&f), "factor {f}");
                    }
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().expect("a caller panicked");
    }
    for (k, count) in allowed.iter().enumerate() {
        assert_eq!(count.load(Ordering::Relaxed), 14, "key-{k}");
    }
    assert_eq!(rl.local().absolute().key_count(), KEYS);
    assert_eq!(rl.local().suppressed().key_count(), KEYS);
}

#[test]
fn quota_get_refund_and_reset() {
    let mut t = Mocked::new(10, 100);
    let r = rate(1.0); // C = 10
    let quota = |limit: f64, remaining: u64, reset_ms: u64| Quota {
        limit,
        remaining,
        reset_ms,
    };
    {
        let abs = t.rl.local().absolute();
        // Without state: the whole capacity, nothing to wait for; nothing is recorded.
        assert_eq!(abs.get("k", &r), quota(10.0, 10, 0));
        assert_eq!(abs.key_count(), 0);
        assert_eq!(
            abs.inc_with_quota("k", &r, 4),
            QuotaDecision {
                decision: Allowed,
                quota: quota(10.0, 6, 10_001),
                degraded: false
            }
        );
    }
    t.at(3000);
    {
        let abs = t.rl.local().absolute();
        // The same decision as inc, with the quota after it.
        assert_eq!(
            abs.inc_with_quota("k", &r, 7),
            QuotaDecision {
                decision: rejected(10, 7001, 0),
                quota: quota(10.0, 6, 7001),
                degraded: false
            }
        );
        assert_eq!(abs.inc("k", &r, 3), Allowed); // buckets [0: 4, 3000: 3]
        assert_eq!(abs.get("k", &r), quota(10.0, 3, 7001));
        // A later rate does not change the sticky capacity.
        assert_eq!(abs.get("k", &rate(100.0)), quota(10.0, 3, 7001));
        // Refunds take back the newest units first: 3 from the bucket at 3000, 2 from the one
        // at 0.
        assert_eq!(abs.refund("k", 5), 5);
        assert_eq!(abs.get("k", &r), quota(10.0, 8, 7001));
        assert_eq!(abs.inc("k", &r, 9), rejected(10, 7001, 0));
        // Never below zero: only the 2 left are taken back. The window is then empty, so the
        // rate no longer sticks.
        assert_eq!(abs.refund("k", 100), 2);
        assert_eq!(abs.get("k", &rate(2.0)), quota(20.0, 20, 0));
        assert_eq!(abs.refund("unknown", 3), 0);
        assert_eq!(abs.inc("k", &rate(2.0), 20), Allowed);
        // reset forgets the key.
        abs.reset("k");
        assert_eq!(abs.key_count(), 0);
        assert_eq!(abs.get("k", &r), quota(10.0, 10, 0));
        assert_eq!(abs.inc("k", &r, 10), Allowed);
    }
}

/// A refund takes back only units still in the window: what has left it is not "recorded"
/// any more (and the Redis provider, which evicts first, answers 0 here).
#[test]
fn refund_takes_back_nothing_that_left_the_window() {
    let mut t = Mocked::new(1, 10);
    let r = rate(5.0);
    assert_eq!(t.rl.local().absolute().inc("k", &r, 5), Allowed);
    assert_eq!(t.rl.local().suppressed().inc("k", &r, 5), Allowed);
    t.at(1001);
    assert_eq!(t.rl.local().absolute().refund("k", 5), 0, "absolute");
    assert_eq!(t.rl.local().suppressed().refund("k", 5), 0, "suppressed");
}
