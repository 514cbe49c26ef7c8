//! The hybrid provider's suppressed strategy against a real Redis (`TRYPEMA_TEST_REDIS_URL`).
//!
//! Decisions are local, on the window totals read from Redis at each sync plus this
//! instance's own calls since. Windows are 1–2 s and the tests sleep for real. Every test
//! works under its own random prefix and keys; the one that kills the server runs a private
//! `redis-server`; the load tests take the `CPU` lock exclusively ([`support::heavy`]).
#![cfg(feature = "redis-tokio")]

mod support;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use support::{
    builder_at, busiest_window, connect, heavy, hybrid_redis_url, key, light, rate,
    redis_error_message, restart_and_recover, unique, PrivateRedis,
};
use trypema::{redis::RedisKey, RateLimitDecision, RateLimiter};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A limiter over a fresh connection to `url` (each limiter its own connection manager, as
/// if it were another process).
async fn limiter_at(url: &str, prefix: &str, window_s: u64, hard_limit_factor: f64) -> RateLimiter {
    builder_at(url, prefix, window_s)
        .await
        .hard_limit_factor(hard_limit_factor)
        .build()
        .expect("valid settings")
}

async fn limiter(prefix: &str, window_s: u64, hard_limit_factor: f64) -> RateLimiter {
    limiter_at(&hybrid_redis_url(), prefix, window_s, hard_limit_factor).await
}

async fn inc(rl: &RateLimiter, key: &RedisKey, rate: f64, count: u64) -> RateLimitDecision {
    let decision = rl
        .hybrid()
        .suppressed()
        .inc(key, &self::rate(rate), count)
        .await
        .expect("hybrid suppressed inc");
    check(decision)
}

async fn factor(rl: &RateLimiter, key: &RedisKey) -> f64 {
    let factor = rl
        .hybrid()
        .suppressed()
        .get_suppression_factor(key)
        .await
        .expect("get_suppression_factor");
    assert!(
        (0.0..=1.0).contains(&factor),
        "suppression factor {factor} outside [0, 1]"
    );
    factor
}

/// Every decision of the suppressed strategy is `Allowed` or `Suppressed` with a factor in
/// `[0, 1]`.
#[track_caller]
fn check(decision: RateLimitDecision) -> RateLimitDecision {
    match decision {
        RateLimitDecision::Allowed => {}
        RateLimitDecision::Suppressed {
            suppression_factor, ..
        } => assert!(
            (0.0..=1.0).contains(&suppression_factor),
            "suppression factor outside [0, 1]: {decision:?}"
        ),
        other => panic!("the suppressed strategy never rejects: {other:?}"),
    }
    decision
}

// ---------------------------------------------------------------------------------------------
// Decisions
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_up_to_the_soft_capacity_then_suppressed() {
    let _guard = light().await;
    // W = 1 s, rate 20, hard factor 1: S = H = 20, so past S everything is declined.
    let rl = limiter(&unique("hsup"), 1, 1.0).await;
    let k = key("soft");
    for call in 0..20 {
        assert_eq!(
            inc(&rl, &k, 20.0, 1).await,
            RateLimitDecision::Allowed,
            "call {call}"
        );
    }
    for _ in 0..10 {
        assert_eq!(
            inc(&rl, &k, 20.0, 1).await,
            RateLimitDecision::Suppressed {
                suppression_factor: 1.0,
                is_allowed: false
            }
        );
    }
    // Decided locally, without I/O, now that the key's totals are known.
    assert_eq!(
        rl.hybrid().suppressed().try_inc_locally(k.as_str(), 1),
        Some(RateLimitDecision::Suppressed {
            suppression_factor: 1.0,
            is_allowed: false
        })
    );
    assert_eq!(factor(&rl, &k).await, 1.0);

    // Counts: 6 fit in S = 10; 6 + 5 do not; 6 + 4 do.
    let counted = key("count");
    assert_eq!(
        inc(&rl, &counted, 10.0, 6).await,
        RateLimitDecision::Allowed
    );
    assert!(!inc(&rl, &counted, 10.0, 5).await.is_allowed());
    assert_eq!(
        inc(&rl, &counted, 10.0, 4).await,
        RateLimitDecision::Allowed
    );
    assert!(!inc(&rl, &counted, 10.0, 1).await.is_allowed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppression_factor_is_zero_for_an_unknown_key_and_in_0_1_otherwise() {
    let _guard = light().await;
    let prefix = unique("hsup");
    // W = 1 s, rate 10, hard factor 2: S = 10, H = 20.
    let rl = limiter(&prefix, 1, 2.0).await;
    let unknown = key("unknown");
    assert_eq!(factor(&rl, &unknown).await, 0.0);
    assert_eq!(factor(&rl, &unknown).await, 0.0, "asking records nothing");

    let k = key("busy");
    assert_eq!(factor(&rl, &k).await, 0.0);
    for _ in 0..5 {
        inc(&rl, &k, 10.0, 1).await;
    }
    assert_eq!(factor(&rl, &k).await, 0.0, "below S");
    let mut admitted = 5;
    for _ in 0..25 {
        if inc(&rl, &k, 10.0, 1).await.is_allowed() {
            admitted += 1;
        }
    }
    assert!(admitted <= 20, "{admitted} admitted, H = 20");
    // 30 observed in the last second against a rate of 10: f = 1 − 10 / 30 unless the hard
    // ceiling is reached (f = 1).
    let f = factor(&rl, &k).await;
    assert!(
        f > 0.5,
        "factor {f} after 30 calls against S = 10 (admitted {admitted})"
    );

    // Another instance, with no local state, reads the same window from Redis once the first
    // has pushed its counts (at its next sync).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let other = limiter(&prefix, 1, 2.0).await;
    let seen = factor(&other, &k).await;
    assert!(seen > 0.5, "second instance sees factor {seen}, first {f}");
    assert_eq!(factor(&other, &unknown).await, 0.0);

    // Once the window has passed, the key is unknown again: factor 0.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(factor(&other, &k).await, 0.0);
}

// ---------------------------------------------------------------------------------------------
// Across instances
// ---------------------------------------------------------------------------------------------

/// Two instances, each offering 1.5× the rate (3× combined), evenly paced, for three windows:
/// after the first window the combined admitted rate is near the rate, not near the offered
/// load.
///
/// The hard factor is 2: with H = S the window would stay pinned at S and the first window's
/// burst would repeat every window (admitted per second alternating between S and 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_overload_from_two_instances_settles_near_the_rate() {
    const WINDOW_S: u64 = 2;
    // A rate high enough that one second's count is not dominated by the coin tosses
    // (about ±6% here), low enough to pace precisely.
    const RATE: f64 = 200.0;
    const OFFERED_EACH: f64 = 300.0;
    const HARD: f64 = 2.0;
    const RUN: Duration = Duration::from_millis(6000);
    let _guard = heavy().await;
    let prefix = unique("hsteady");
    let limiters = [
        Arc::new(limiter(&prefix, WINDOW_S, HARD).await),
        Arc::new(limiter(&prefix, WINDOW_S, HARD).await),
    ];
    let k = key("steady");

    let origin = Instant::now();
    let period = Duration::from_secs_f64(1.0 / OFFERED_EACH);
    let mut tasks = Vec::new();
    for (index, rl) in limiters.iter().enumerate() {
        let (rl, k) = (rl.clone(), k.clone());
        tasks.push(tokio::spawn(async move {
            let mut admitted = Vec::new();
            let mut offered = 0u64;
            // Offset the two instances by half a period.
            let mut next = origin + period * index as u32 / 2;
            while next < origin + RUN {
                tokio::time::sleep_until(next.into()).await;
                offered += 1;
                if inc(&rl, &k, RATE, 1).await.is_allowed() {
                    admitted.push(origin.elapsed().as_micros() as u64);
                }
                next += period;
            }
            (offered, admitted)
        }));
    }
    let mut admitted = Vec::new();
    let mut offered = 0;
    for task in tasks {
        let (o, a) = task.await.expect("task panicked");
        offered += o;
        admitted.extend(a);
    }
    admitted.sort_unstable();
    let seconds = RUN.as_secs() as usize;
    let per_second: Vec<usize> = (0..seconds as u64)
        .map(|s| admitted.iter().filter(|&&at| at / 1_000_000 == s).count())
        .collect();
    let after_first_window: usize = per_second[WINDOW_S as usize..].iter().sum();
    let admitted_rate = after_first_window as f64 / (seconds - WINDOW_S as usize) as f64;
    let hard_capacity = (WINDOW_S as f64 * RATE * HARD) as usize;
    // Spans one 100 ms bucket shorter than the window: a bucket leaves the window by its
    // start, so the calls late in a bucket are counted for less than a full window.
    let (busiest, _) = busiest_window(&admitted, WINDOW_S * 1_000_000 - 100_000);
    eprintln!(
        "steady overload: {offered} offered ({}/s), rate {RATE}/s: admitted per second \
         {per_second:?}, {admitted_rate:.1}/s after the first window; busiest {WINDOW_S} s \
         window (less a bucket) {busiest} (H = {hard_capacity})",
        OFFERED_EACH * 2.0
    );
    assert!(
        offered as f64 >= OFFERED_EACH * 2.0 * RUN.as_secs_f64() * 0.95,
        "the load generator fell behind: {offered} offered"
    );
    assert!(
        (RATE * 0.75..=RATE * 1.25).contains(&admitted_rate),
        "admitted {admitted_rate:.1}/s after the first window, expected {RATE} ± 25%; per \
         second {per_second:?}"
    );
    for (second, &count) in per_second.iter().enumerate().skip(WINDOW_S as usize) {
        assert!(
            (RATE * 0.75..=RATE * 1.25).contains(&(count as f64)),
            "{count} admitted in second {second}, expected {RATE} ± 25%; per second \
             {per_second:?}"
        );
    }
    // Paced traffic is seen by both instances within a sync interval: the ceiling holds up
    // to what two instances can admit between two syncs.
    assert!(
        busiest <= hard_capacity + hard_capacity / 20,
        "{busiest} admitted within {WINDOW_S} s less a bucket, H = {hard_capacity}; per second \
         {per_second:?}"
    );
}

/// Instances see each other's traffic one sync late, so under a burst each may admit up to
/// what the factor allows on its own view before it learns of the other's admissions: the
/// stated bound for N instances is N × H per window. Measured here for two instances
/// hammering one key with 32 tasks each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_from_two_instances_stays_within_the_stated_bound() {
    let _guard = heavy().await;
    let prefix = unique("hburst");
    // W = 1 s, rate 100, hard factor 1.5: S = 100, H = 150.
    let limiters = [
        Arc::new(limiter(&prefix, 1, 1.5).await),
        Arc::new(limiter(&prefix, 1, 1.5).await),
    ];
    let k = key("burst");
    let origin = Instant::now();
    let run = Duration::from_millis(2500);
    let mut tasks = Vec::new();
    for rl in &limiters {
        for _ in 0..32 {
            let (rl, k) = (rl.clone(), k.clone());
            tasks.push(tokio::spawn(async move {
                let mut admitted = Vec::new();
                while origin.elapsed() < run {
                    if inc(&rl, &k, 100.0, 1).await.is_allowed() {
                        admitted.push(origin.elapsed().as_micros() as u64);
                    }
                    tokio::task::yield_now().await;
                }
                admitted
            }));
        }
    }
    let mut admitted = Vec::new();
    for task in tasks {
        admitted.extend(task.await.expect("task panicked"));
    }
    admitted.sort_unstable();
    // As above, spans one 100 ms bucket shorter than the window.
    let (busiest, _) = busiest_window(&admitted, 900_000);
    let per_100ms: Vec<usize> = (0..run.as_millis() as u64 / 100)
        .map(|slot| admitted.iter().filter(|&&at| at / 100_000 == slot).count())
        .collect();
    eprintln!(
        "burst from two instances (S = 100, H = 150 each): {} admitted in {run:?}; busiest \
         900 ms span {busiest}; per 100 ms {per_100ms:?}",
        admitted.len()
    );
    assert!(
        busiest >= 150,
        "only {busiest} admitted in the busiest window"
    );
    assert!(
        busiest <= 2 * 150,
        "{busiest} admitted within 900 ms by two instances: above 2 × H = 300; per 100 ms \
         {per_100ms:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Redis trouble
// ---------------------------------------------------------------------------------------------

/// The server dies: a key whose totals are fresh is still decided locally, without error; a
/// key never seen fails with `TRYPEMA_REDIS` instead of hanging; the server comes back on the
/// same port: the limiter recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_and_coming_back() {
    // Mostly waiting: runs alongside the load tests.
    let mut server = PrivateRedis::start();
    let prefix = unique("hstrouble");
    let rl = limiter_at(&server.url(), &prefix, 2, 1.5).await;
    let warm = key("warm");
    assert_eq!(inc(&rl, &warm, 100.0, 1).await, RateLimitDecision::Allowed);
    let synced_at = Instant::now();

    server.kill();
    // The view stays usable for a window after its last sync: decided locally, no error.
    let mut served = 0;
    while synced_at.elapsed() < Duration::from_millis(1000) {
        let decision = rl
            .hybrid()
            .suppressed()
            .try_inc_locally(warm.as_str(), 1)
            .expect("a key synced less than a window ago is decided locally");
        check(decision);
        let decision = tokio::time::timeout(
            Duration::from_millis(100),
            rl.hybrid().suppressed().inc(&warm, &rate(100.0), 1),
        )
        .await
        .expect("a key with a fresh view must not wait for Redis")
        .expect("a key with a fresh view must not fail");
        check(decision);
        served += 2;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = factor(&rl, &warm).await;

    let fresh = key("fresh");
    let asked = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(15),
        rl.hybrid().suppressed().inc(&fresh, &rate(100.0), 1),
    )
    .await
    .expect("inc on a never-seen key must fail, not hang, while Redis is down");
    let failed_after = asked.elapsed();
    let message = redis_error_message(result);
    assert!(
        failed_after <= Duration::from_millis(10_500),
        "the error took {failed_after:?}"
    );

    let recovered = restart_and_recover(
        &mut server,
        || async { rl.hybrid().suppressed().inc(&fresh, &rate(100.0), 1).await },
        |decision| assert_eq!(check(decision), RateLimitDecision::Allowed),
    )
    .await;
    eprintln!(
        "suppressed, redis trouble: {served} calls decided locally after the kill; a \
         never-seen key failed after {failed_after:?} ({message}); recovered {recovered:?} after the restart"
    );
    assert!(
        rl.hybrid()
            .suppressed()
            .try_inc_locally(fresh.as_str(), 1)
            .is_some(),
        "decided locally again after recovery"
    );
    // The counts the warm key made while Redis was away are kept and reach the new server
    // with the next syncs.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut admin = connect(&server.url()).await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(format!("{{{prefix}:{}}}:s", warm.as_str()))
        .query_async(&mut admin)
        .await
        .expect("EXISTS");
    assert_eq!(
        exists, 1,
        "the warm key's pending counts never reached the new server"
    );
}
