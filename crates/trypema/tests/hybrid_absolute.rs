//! The hybrid provider's absolute strategy against a real Redis (`TRYPEMA_TEST_REDIS_URL`).
//!
//! Leases are reserved in Redis and served locally; the scripts read the server's clock, so
//! time cannot be mocked: windows are 1 s and the tests sleep for real. Every test works under
//! its own random prefix and keys. The tests that count server-wide commands or kill the
//! server run against a private `redis-server` they start themselves; the load tests take
//! the `CPU` lock exclusively ([`support::heavy`]), so that their timing is not skewed by each
//! other.
#![cfg(feature = "redis-tokio")]

mod support;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use support::{
    all_command_calls, assert_allowed, builder_at, busiest_window, connect, heavy,
    hybrid_redis_url, key, light, rate, redis_error_message, rejected_within, reset_stats,
    restart_and_recover, unique, PrivateRedis,
};
use trypema::{redis::RedisKey, RateLimitDecision, RateLimiter, TrypemaError};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A limiter over a fresh connection to `url` (each limiter its own connection manager, as
/// if it were another process).
async fn limiter_at(url: &str, prefix: &str, window_s: u64, sync_ms: Option<u64>) -> RateLimiter {
    let builder = builder_at(url, prefix, window_s).await;
    let builder = match sync_ms {
        Some(sync_ms) => builder.sync_interval_ms(sync_ms),
        None => builder,
    };
    builder.build().expect("valid settings")
}

async fn limiter(prefix: &str, window_s: u64) -> RateLimiter {
    limiter_at(&hybrid_redis_url(), prefix, window_s, None).await
}

async fn inc(rl: &RateLimiter, key: &RedisKey, rate: f64, count: u64) -> RateLimitDecision {
    rl.hybrid()
        .absolute()
        .inc(key, &self::rate(rate), count)
        .await
        .expect("hybrid absolute inc")
}

/// `(retry_after_ms, remaining_after_waiting)` of a `Rejected` decision for a 1 s window with
/// capacity `capacity`. A lease's reservation is counted from when the lease ends (at most
/// 50 ms ahead for a 1 s window), so a hint may reach past 1001 ms by that much.
#[track_caller]
fn rejected(decision: RateLimitDecision, capacity: u64) -> (u64, u64) {
    let (retry_after_ms, remaining_after_waiting) = rejected_within(decision, 1001 + 50);
    assert!(
        remaining_after_waiting <= capacity,
        "remaining_after_waiting above the capacity {capacity}: {decision:?}"
    );
    (retry_after_ms, remaining_after_waiting)
}

/// Timestamps (µs, sorted) per aligned window `[start + k·window, start + (k+1)·window)` up to
/// `end`.
fn per_window(sorted: &[u64], start: u64, end: u64, window_us: u64) -> Vec<usize> {
    (0..)
        .map(|k| start + k * window_us)
        .take_while(|&from| from < end)
        .map(|from| {
            sorted
                .iter()
                .filter(|&&at| at >= from && at < from + window_us)
                .count()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Capacity, counts and hints
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_is_floor_of_window_times_rate_then_rejected() {
    let _guard = light().await;
    let rl = limiter(&unique("habs"), 1).await;
    let k = key("cap");
    // W = 1 s, rate 7.5: C = 7.
    assert_allowed(rl.hybrid().absolute().is_allowed(&k).await.unwrap());
    for call in 0..7 {
        assert_eq!(
            inc(&rl, &k, 7.5, 1).await,
            RateLimitDecision::Allowed,
            "call {call}"
        );
    }
    let (retry_after_ms, remaining) = rejected(inc(&rl, &k, 7.5, 1).await, 7);
    assert!(
        remaining < 7,
        "some of the window must have been used: {remaining}"
    );
    // Nothing is recorded by a rejection, so it stays rejected; is_allowed agrees.
    for _ in 0..20 {
        rejected(inc(&rl, &k, 7.5, 1).await, 7);
    }
    rejected(rl.hybrid().absolute().is_allowed(&k).await.unwrap(), 7);
    // Try-locally answers the same without I/O (the window is known to be full).
    // (`None` would mean the lease ended meanwhile, so it has to ask Redis: also fine.)
    if let Some(decision) = rl.hybrid().absolute().try_inc_locally(k.as_str(), 1) {
        rejected(decision, 7);
    }

    // The hint is honest: once it has passed, the window has room again.
    tokio::time::sleep(Duration::from_millis(retry_after_ms + 30)).await;
    assert_allowed(inc(&rl, &k, 7.5, 1).await);

    // A sub-1 capacity admits nothing.
    let zero = key("cap0");
    rejected(inc(&rl, &zero, 0.5, 1).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_greater_than_one() {
    let _guard = light().await;
    let rl = limiter(&unique("habs"), 1).await;
    let k = key("count");
    // C = 10.
    assert_allowed(inc(&rl, &k, 10.0, 4).await);
    assert_allowed(inc(&rl, &k, 10.0, 4).await);
    rejected(inc(&rl, &k, 10.0, 3).await, 10); // 8 + 3 > 10
    assert_allowed(inc(&rl, &k, 10.0, 2).await); // exactly 10
    rejected(inc(&rl, &k, 10.0, 1).await, 10);

    // A fresh key: n = C is allowed at once.
    let exact = key("countexact");
    assert_allowed(inc(&rl, &exact, 10.0, 10).await);
    rejected(inc(&rl, &exact, 10.0, 1).await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_count_larger_than_the_capacity_is_rejected_and_records_nothing() {
    let _guard = light().await;
    let prefix = unique("habs");
    let rl = limiter(&prefix, 1).await;
    let k = key("over");
    // C = 10.
    rejected(inc(&rl, &k, 10.0, 11).await, 10);
    rejected(inc(&rl, &k, 10.0, 1000).await, 10);
    // Had the rejected calls been counted, these 10 would not fit.
    assert_allowed(inc(&rl, &k, 10.0, 10).await);
    rejected(inc(&rl, &k, 10.0, 1).await, 10);

    // Same on a second instance, which shares the window: it is full now.
    let other = limiter(&prefix, 1).await;
    rejected(inc(&other, &k, 10.0, 1).await, 10);
    rejected(inc(&other, &k, 10.0, 11).await, 10);
}

// ---------------------------------------------------------------------------------------------
// Shared limit with the redis provider
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hybrid_and_redis_providers_share_one_limit() {
    let _guard = light().await;
    let prefix = unique("habs");
    let rl = limiter(&prefix, 1).await;
    let redis_side = limiter(&prefix, 1).await;
    let r = rate(100.0); // C = 100

    // The hybrid takes 60; once its lease has ended and handed back what it did not use,
    // the redis provider gets exactly the other 40.
    let k = key("shared");
    for _ in 0..60 {
        assert_allowed(inc(&rl, &k, 100.0, 1).await);
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut redis_allowed = 0;
    loop {
        match redis_side.redis().absolute().inc(&k, &r, 1).await.unwrap() {
            RateLimitDecision::Allowed => redis_allowed += 1,
            decision => {
                rejected(decision, 100);
                break;
            }
        }
        assert!(redis_allowed <= 100, "the redis provider never stops");
    }
    assert_eq!(redis_allowed, 40, "the redis provider sees the hybrid's 60");
    // And the hybrid sees the redis provider's 40.
    rejected(inc(&rl, &k, 100.0, 1).await, 100);
    rejected(rl.hybrid().absolute().is_allowed(&k).await.unwrap(), 100);

    // The other way round: the redis provider fills the window, the hybrid is rejected.
    let k2 = key("shared2");
    for _ in 0..100 {
        assert_allowed(redis_side.redis().absolute().inc(&k2, &r, 1).await.unwrap());
    }
    rejected(inc(&rl, &k2, 100.0, 1).await, 100);

    // While the hybrid holds a lease, its reservation counts for the redis provider too: the
    // two together never admit more than C, whatever the interleaving.
    let k3 = key("shared3");
    let mut total = 0;
    for round in 0..300 {
        let decision = if round % 2 == 0 {
            inc(&rl, &k3, 100.0, 1).await
        } else {
            redis_side.redis().absolute().inc(&k3, &r, 1).await.unwrap()
        };
        if decision == RateLimitDecision::Allowed {
            total += 1;
        }
    }
    assert!(
        total <= 100,
        "{total} admitted by the two providers, C = 100"
    );
    assert!(total >= 50, "only {total} admitted, C = 100");
}

// ---------------------------------------------------------------------------------------------
// The fast path
// ---------------------------------------------------------------------------------------------

/// After warm-up, hot keys with ample capacity are served from their leases: the server runs
/// at most one `EVALSHA` per 100 admitted calls (it is far fewer in practice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fast_path_does_no_redis_io() {
    let _guard = heavy().await;
    let server = PrivateRedis::start();
    let rl = limiter_at(&server.url(), &unique("hfast"), 1, None).await;
    let mut admin = connect(&server.url()).await;
    let keys: Vec<RedisKey> = (0..4).map(|i| key(&format!("hot{i}"))).collect();
    let r = rate(1_000_000.0);
    for k in &keys {
        for _ in 0..100 {
            assert_allowed(rl.hybrid().absolute().inc(k, &r, 1).await.unwrap());
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    for k in &keys {
        assert_allowed(rl.hybrid().absolute().inc(k, &r, 1).await.unwrap());
    }

    reset_stats(&mut admin).await;
    const CALLS: usize = 10_000;
    let started = Instant::now();
    let mut local = 0;
    let mut waited = 0;
    for round in 0..CALLS / 500 {
        for call in 0..500 {
            let k = &keys[(round * 500 + call) % keys.len()];
            let decision = match rl.hybrid().absolute().try_inc_locally(k.as_str(), 1) {
                Some(decision) => {
                    local += 1;
                    decision
                }
                None => {
                    waited += 1;
                    rl.hybrid().absolute().inc(k, &r, 1).await.unwrap()
                }
            };
            assert_allowed(decision);
        }
        // Spread the calls over ~200 ms, so that leases are renewed along the way.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    let calls = all_command_calls(&mut admin).await;
    let evalsha = calls
        .iter()
        .find(|(name, _)| name == "evalsha")
        .map_or(0, |(_, n)| *n);
    // What a client can send (the rest of the statistics are the scripts' own commands).
    let by_limiter: u64 = calls
        .iter()
        .filter(|(name, _)| {
            ["evalsha", "eval", "time", "ping"].contains(&name.as_str())
                || name.starts_with("script")
        })
        .map(|(_, n)| *n)
        .sum();
    eprintln!(
        "fast path: {CALLS} calls in {elapsed:?}, {local} decided by try_inc_locally, \
         {waited} by inc; server saw {evalsha} EVALSHA, {by_limiter} client commands: {calls:?}"
    );
    assert!(
        evalsha as usize <= CALLS / 100,
        "{evalsha} EVALSHA for {CALLS} admitted calls: more than 1 per 100"
    );
    assert!(
        by_limiter as usize <= CALLS / 100,
        "{by_limiter} commands for {CALLS} admitted calls: more than 1 per 100: {calls:?}"
    );
    assert!(
        local >= CALLS * 9 / 10,
        "only {local} of {CALLS} calls were decided locally"
    );
}

// ---------------------------------------------------------------------------------------------
// Zero overshoot across instances
// ---------------------------------------------------------------------------------------------

/// Runs `tasks` tasks per limiter calling `inc(key, rate, 1)` for `run`, each call paced by
/// `pause` (or just a `yield_now`), and returns every `Allowed`'s time in µs since `origin`,
/// sorted.
async fn hammer(
    limiters: &[Arc<RateLimiter>],
    key: &RedisKey,
    rate: f64,
    tasks: usize,
    run: Duration,
    pause: Option<Duration>,
    origin: Instant,
) -> Vec<u64> {
    let deadline = origin + run;
    let mut handles = Vec::new();
    for rl in limiters {
        for task in 0..tasks {
            let (rl, key) = (rl.clone(), key.clone());
            handles.push(tokio::spawn(async move {
                let r = self::rate(rate);
                let mut allowed = Vec::new();
                if let Some(pause) = pause {
                    // Spread the tasks' calls over the pause.
                    tokio::time::sleep(pause * task as u32 / tasks as u32).await;
                }
                while Instant::now() < deadline {
                    match rl.hybrid().absolute().inc(&key, &r, 1).await {
                        Ok(RateLimitDecision::Allowed) => {
                            allowed.push(origin.elapsed().as_micros() as u64);
                        }
                        Ok(RateLimitDecision::Rejected { retry_after_ms, .. }) => {
                            assert!(retry_after_ms > 0, "retry_after_ms 0");
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                    match pause {
                        Some(pause) => tokio::time::sleep(pause).await,
                        None => tokio::task::yield_now().await,
                    }
                }
                allowed
            }));
        }
    }
    let mut allowed = Vec::new();
    for handle in handles {
        allowed.extend(handle.await.expect("task panicked"));
    }
    allowed.sort_unstable();
    allowed
}

/// Two instances (two connection managers) hammer one key of capacity 300 (W = 1 s) with
/// 64 tasks each for three windows: no 1000 ms span ever holds more than 300 admissions,
/// and the windows after the first are at least 90% used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_never_overshoot_and_use_the_window() {
    let _guard = heavy().await;
    let prefix = unique("hexact");
    let limiters = [
        Arc::new(limiter(&prefix, 1).await),
        Arc::new(limiter(&prefix, 1).await),
    ];
    let k = key("two");
    let run = Duration::from_millis(3300);
    let origin = Instant::now();
    let allowed = hammer(&limiters, &k, 300.0, 64, run, None, origin).await;
    let end = origin.elapsed().as_micros() as u64;
    assert!(!allowed.is_empty(), "nothing admitted");

    let (busiest, at) = busiest_window(&allowed, 1_000_000);
    let start = allowed[0];
    let windows = per_window(&allowed, start, end, 1_000_000);
    eprintln!(
        "two instances, C = 300: {} admitted in {:?}; busiest 1000 ms span {busiest} (from \
         {:.3} s); per window from the first admission {windows:?}",
        allowed.len(),
        run,
        at as f64 / 1e6,
    );
    assert!(
        busiest <= 300,
        "{busiest} admitted within 1000 ms starting {:.3} s, C = 300; per window {windows:?}",
        at as f64 / 1e6
    );
    // The full windows after the first one (which holds the start-up burst).
    let full = ((end - start) / 1_000_000) as usize;
    assert!(full >= 3, "the run was too short: {windows:?}");
    for (index, &count) in windows.iter().enumerate().take(full).skip(1) {
        assert!(
            count >= 270,
            "window {index} admitted only {count}, expected ≥ 90% of 300; {windows:?}"
        );
    }
}

/// A lease that gives back unused quota while its renewal opens the window's second bucket
/// must leave the window's total in Redis equal to what its buckets hold: a later window
/// admits exactly its capacity, not more.
///
/// Regression test: with one bucket in the window, the give-back is subtracted from the newest
/// bucket's count only; when the same call then opens a second bucket, the first is kept as
/// the oldest with its count from before the give-back. When it leaves the window the total
/// drops by more than it held, and the window admits that much more than C for as long as the
/// key's state lives. A 1 ms rate group makes every renewal open a bucket (with the default
/// 100 ms the same happens about every 100 ms of a key's first busy period).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_give_back_keeps_the_window_total() {
    let _guard = light().await;
    let rl = builder_at(&hybrid_redis_url(), &unique("hgive"), 1)
        .await
        .rate_group_size_ms(1)
        .build()
        .expect("valid settings");
    let k = key("giveback");
    let r = rate(640.0); // C = 640; a first lease is C / 64 = 10
    let started = Instant::now();
    // One call: a lease of 10 (its bucket starts when it ends, ~50 ms from now), 1 used. Its
    // renewal, two sync intervals before it ends, gives 9 back and leases 1 more in a second
    // bucket; that lease ends unused and gives its 1 back.
    assert_allowed(rl.hybrid().absolute().inc(&k, &r, 1).await.unwrap());
    // One call through the redis provider keeps the key's state alive once those two buckets
    // have left the window.
    tokio::time::sleep(Duration::from_millis(600).saturating_sub(started.elapsed())).await;
    assert_allowed(rl.redis().absolute().inc(&k, &r, 1).await.unwrap());
    // The hybrid's buckets (starts ≤ ~100 ms) have left; the window holds exactly 1.
    tokio::time::sleep(Duration::from_millis(1250).saturating_sub(started.elapsed())).await;
    let mut admitted = 0;
    while rl.redis().absolute().inc(&k, &r, 1).await.unwrap() == RateLimitDecision::Allowed {
        admitted += 1;
        assert!(admitted <= 1000, "never rejected");
    }
    assert!(
        started.elapsed() < Duration::from_millis(1600),
        "too slow to be sure of the window's content ({:?})",
        started.elapsed()
    );
    assert_eq!(
        admitted, 639,
        "the window held 1 of C = 640, so 639 fit; {admitted} were admitted"
    );
}

/// A steady, paced load at twice the capacity spread over two instances: leases are renewed
/// while they are in use, not emptied in one burst, so this is where a lease's reservation
/// must cover every admission made under it for a full window.
///
/// Two bounds are checked. Any 900 ms span (the window less one 100 ms bucket, i.e. what the
/// bucketed window of the `redis` provider guarantees) must hold at most C; that catches the
/// window total being under-counted in Redis. Any 1000 ms span must hold at most C as well:
/// the hybrid's own stated guarantee ("a lease is recorded in a bucket that starts when the
/// lease ends ... it stays counted for at least a full window after each admission").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_load_never_overshoots() {
    let _guard = heavy().await;
    let prefix = unique("hpaced");
    let limiters = [
        Arc::new(limiter(&prefix, 1).await),
        Arc::new(limiter(&prefix, 1).await),
    ];
    let k = key("paced");
    // 2 instances × 6 tasks × one call per 20 ms = 600 calls/s against C = 300 per second.
    let run = Duration::from_millis(3300);
    let origin = Instant::now();
    let allowed = hammer(
        &limiters,
        &k,
        300.0,
        6,
        run,
        Some(Duration::from_millis(20)),
        origin,
    )
    .await;
    let end = origin.elapsed().as_micros() as u64;
    assert!(!allowed.is_empty(), "nothing admitted");
    let (bucketed, bucketed_at) = busiest_window(&allowed, 900_000);
    let (busiest, at) = busiest_window(&allowed, 1_000_000);
    let windows = per_window(&allowed, allowed[0], end, 1_000_000);
    eprintln!(
        "paced, 600/s offered, C = 300: {} admitted; busiest 900 ms span {bucketed} (from \
         {:.3} s), busiest 1000 ms span {busiest} (from {:.3} s); per window {windows:?}",
        allowed.len(),
        bucketed_at as f64 / 1e6,
        at as f64 / 1e6,
    );
    assert!(
        bucketed <= 300,
        "{bucketed} admitted within 900 ms starting {:.3} s, C = 300: the window total in \
         Redis was under-counted; per window {windows:?}",
        bucketed_at as f64 / 1e6
    );
    assert!(
        busiest <= 300,
        "{busiest} admitted within 1000 ms starting {:.3} s, C = 300; per window {windows:?}",
        at as f64 / 1e6
    );
}

// ---------------------------------------------------------------------------------------------
// Redis trouble
// ---------------------------------------------------------------------------------------------

/// The server dies: a key with a fresh lease is still served (locally, without error) for the
/// rest of it, a key never seen fails with `TRYPEMA_REDIS` instead of hanging; the server
/// comes back on the same port: the limiter recovers by itself and serves from leases again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_and_coming_back() {
    // Mostly waiting: runs alongside the load tests.
    let mut server = PrivateRedis::start();
    // W = 10 s and a 50 ms sync interval: leases of min(10 × 50, 10 000 / 20) = 500 ms,
    // renewed (when in use) two sync intervals before they end.
    let rl = limiter_at(&server.url(), &unique("htrouble"), 10, Some(50)).await;
    let r = rate(1000.0); // C = 10 000; a first lease is C / 64 = 156
    let warm = key("warm");
    assert_allowed(rl.hybrid().absolute().inc(&warm, &r, 1).await.unwrap());
    let leased_at = Instant::now();

    server.kill();
    let killed_at = leased_at.elapsed();
    // Served from the lease, with no error, until shortly before the renewal (at 400 ms).
    let mut served = 0;
    while leased_at.elapsed() < Duration::from_millis(300) {
        let local = rl.hybrid().absolute().try_inc_locally(warm.as_str(), 1);
        assert_eq!(
            local,
            Some(RateLimitDecision::Allowed),
            "try_inc_locally {:?} after the lease was granted (server killed after {killed_at:?})",
            leased_at.elapsed()
        );
        let decision = tokio::time::timeout(
            Duration::from_millis(100),
            rl.hybrid().absolute().inc(&warm, &r, 1),
        )
        .await
        .expect("a leased key must not wait for Redis");
        assert_eq!(
            decision.expect("a leased key must not fail"),
            RateLimitDecision::Allowed
        );
        served += 2;
        // Slow enough not to run the lease below a quarter, which would renew it early.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(served >= 20, "only {served} calls in 300 ms");

    // A key never seen needs Redis: an error, promptly, not a hang.
    let fresh = key("fresh");
    let asked = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(15),
        rl.hybrid().absolute().inc(&fresh, &r, 1),
    )
    .await
    .expect("inc on a never-seen key must fail, not hang, while Redis is down");
    let failed_after = asked.elapsed();
    let message = redis_error_message(result);
    assert!(
        failed_after <= Duration::from_secs(10) + Duration::from_millis(500),
        "the error took {failed_after:?}"
    );
    // Once its lease is over, the warm key cannot be admitted without Redis either: no
    // admission is ever made on quota that Redis did not grant.
    let lease_over = Duration::from_millis(600);
    tokio::time::sleep(lease_over.saturating_sub(leased_at.elapsed())).await;
    assert_eq!(
        rl.hybrid().absolute().try_inc_locally(warm.as_str(), 1),
        None,
        "the lease is over and Redis is down: nothing can be decided locally"
    );
    let result = tokio::time::timeout(
        Duration::from_secs(15),
        rl.hybrid().absolute().inc(&warm, &r, 1),
    )
    .await
    .expect("inc after the lease ended must fail, not hang, while Redis is down");
    assert!(
        matches!(result, Err(TrypemaError::Redis(_))),
        "expected TrypemaError::Redis once the lease is over, got {result:?}"
    );

    // Back on the same port (empty: no scripts loaded, no state): calls succeed again on
    // their own within a few seconds.
    let recovered = restart_and_recover(
        &mut server,
        || rl.hybrid().absolute().inc(&fresh, &r, 1),
        assert_allowed,
    )
    .await;
    eprintln!(
        "redis trouble: {served} calls served from the lease after the kill; a never-seen key \
         failed after {failed_after:?} ({message}); recovered {recovered:?} after the restart"
    );
    assert!(
        recovered < Duration::from_secs(10),
        "recovery took {recovered:?}"
    );
    // Leases resume: the fresh key and the warm one are served locally again.
    assert_eq!(
        rl.hybrid().absolute().try_inc_locally(fresh.as_str(), 1),
        Some(RateLimitDecision::Allowed)
    );
    assert_allowed(rl.hybrid().absolute().inc(&warm, &r, 1).await.unwrap());
    assert_eq!(
        rl.hybrid().absolute().try_inc_locally(warm.as_str(), 1),
        Some(RateLimitDecision::Allowed)
    );
}
