//! The hybrid provider's absolute strategy against a real Redis (`TRYPEMA_TEST_REDIS_URL`).
//!
//! Leases are reserved in Redis and served locally; the scripts read the server's clock, so
//! time cannot be mocked: windows are 1 s and the tests sleep for real. A lease is recorded in
//! a bucket that starts when the lease ends (`lease_ms` = 50 ms after the grant for a 1 s
//! window), so rejection hints name that start. Every test works under its own random prefix
//! and keys. The tests that count server-wide commands or kill the server run against a
//! private `redis-server` they start themselves; the load tests take the `CPU` lock
//! exclusively ([`support::heavy`]), so that their timing is not skewed by each other.
#![cfg(trypema_redis)]

mod support;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use support::{
    all_command_calls, assert_allowed, assert_rejected, assert_within_command_timeout, builder_at,
    busiest_window, connect, expected_retry, heavy, hybrid_redis_url, key, light,
    outage_error_message, rate, rejected_for_good, reset_stats, restart_and_recover, rt,
    sleep_past, timed, unique, DelayProxy, PrivateRedis, Span, COMMAND_TIMEOUT_MS,
};
use trypema::{redis::RedisKey, RateLimitDecision, RateLimiter, RateLimiterBuilder, TrypemaError};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// How long a lease lasts: a twentieth of the window, at least four sync intervals, at most
/// the window.
fn lease_ms(window_s: u64, sync_ms: u64) -> u64 {
    (window_s * 1000 / 20).max(4 * sync_ms).min(window_s * 1000)
}

/// The lease of a 1 s window with the default 10 ms sync interval.
const LEASE_MS: u64 = 50;

/// A limiter over a fresh connection to `url` (each limiter its own connection manager, as
/// if it were another process), with `settings` applied to the builder.
async fn limiter_with(
    url: &str,
    prefix: &str,
    window_s: u64,
    settings: impl FnOnce(RateLimiterBuilder) -> RateLimiterBuilder,
) -> RateLimiter {
    settings(builder_at(url, prefix, window_s).await)
        .build()
        .expect("valid settings")
}

async fn limiter(prefix: &str, window_s: u64) -> RateLimiter {
    limiter_with(&hybrid_redis_url(), prefix, window_s, |builder| builder).await
}

async fn inc(rl: &RateLimiter, key: &RedisKey, rate: f64, count: u64) -> RateLimitDecision {
    rl.hybrid()
        .absolute()
        .inc(key, &self::rate(rate), count)
        .await
        .expect("hybrid absolute inc")
}

/// [`inc`], with the span it ran in.
async fn inc_at(
    rl: &RateLimiter,
    key: &RedisKey,
    rate: f64,
    count: u64,
) -> (RateLimitDecision, Span) {
    timed(inc(rl, key, rate, count)).await
}

/// Checks the rejection hints of one key of a 1 s window, whose oldest bucket was opened by a
/// call made during `opened`, `offset_ms` after that call's server time (`LEASE_MS` for a
/// lease, 0 for a call of the redis provider).
///
/// The hybrid counts a refusal's `retry_after_ms` from when it sent the request that learned
/// it (a refusal is reused locally for a few ms), so a hint may be early by up to that round
/// trip: the lower bound is lowered by the longest rejected call seen so far (a rejected call
/// that waited for Redis spans that round trip).
struct Hints {
    opened: Span,
    offset_ms: u64,
    round_trip: Duration,
}

impl Hints {
    fn new(opened: Span, offset_ms: u64) -> Self {
        Self {
            opened,
            offset_ms,
            round_trip: Duration::ZERO,
        }
    }

    /// Asserts that `decision` (made during `at`) is the rejection of this key with
    /// `remaining` left after the oldest bucket; returns `retry_after_ms`.
    #[track_caller]
    fn check(&mut self, decision: RateLimitDecision, at: Span, remaining: u64) -> u64 {
        self.round_trip = self.round_trip.max(at.took());
        let exact = expected_retry(1000, self.offset_ms, self.opened, at);
        let early = self.round_trip.as_micros().div_ceil(1000) as u64;
        let range = exact.start().saturating_sub(early).max(1)..=*exact.end();
        assert_rejected(decision, 1, range, remaining)
    }
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

/// Waits (at most 3 s) until `rl`'s hybrid holds no lease, everything leased having been used
/// (`used` units) or given back, and has taken no new lease for `quiet`: after its callers
/// stop, a busy key may still take one more lease (sized to the demand just seen, at the
/// sync after its lease ran low), which is given back when it ends. Returns how long it took.
async fn wait_until_settled(rl: &RateLimiter, used: u64, quiet: Duration) -> Duration {
    let begin = Instant::now();
    let mut last = (u64::MAX, u64::MAX);
    let mut unchanged_since = Instant::now();
    loop {
        let metrics = rl.metrics();
        let now = (metrics.hybrid_leased_units, metrics.hybrid_returned_units);
        if now != last {
            last = now;
            unchanged_since = Instant::now();
        }
        if now.0 - now.1 == used && unchanged_since.elapsed() >= quiet {
            return begin.elapsed();
        }
        assert!(
            begin.elapsed() < Duration::from_secs(3),
            "the hybrid still holds leases 3 s later: leased {}, returned {}, used {used}",
            now.0,
            now.1
        );
        rt::sleep(Duration::from_millis(5)).await;
    }
}

/// Quiet long enough for a 1 s window's last lease to be taken, end and be given back.
const SETTLED: Duration = Duration::from_millis(LEASE_MS + 50);

// ---------------------------------------------------------------------------------------------
// Capacity, counts and hints
// ---------------------------------------------------------------------------------------------

#[test]
fn capacity_is_floor_of_window_times_rate_then_rejected() {
    rt::run(async {
        let _guard = light().await;
        let rl = limiter(&unique("habs"), 1).await;
        let k = key("cap");
        // W = 1 s, rate 7.5: C = 7. Leases are at most C / 16 = 0 beyond what callers wait
        // for, so each call reserves exactly its 1, in a bucket of its own (2 ms apart: a
        // lease joins a bucket only if it starts in the same ms).
        assert_allowed(rl.hybrid().absolute().is_allowed(&k).await.unwrap());
        let (decision, first) = inc_at(&rl, &k, 7.5, 1).await;
        assert_allowed(decision);
        for call in 1..7 {
            rt::sleep(Duration::from_millis(2)).await;
            assert_eq!(
                inc(&rl, &k, 7.5, 1).await,
                RateLimitDecision::Allowed,
                "call {call}"
            );
        }
        let mut hints = Hints::new(first, LEASE_MS);
        let (decision, refused) = inc_at(&rl, &k, 7.5, 1).await;
        let retry = hints.check(decision, refused, 6);
        // Nothing is recorded by a rejection, so it stays rejected; is_allowed agrees.
        for _ in 0..20 {
            let (decision, at) = inc_at(&rl, &k, 7.5, 1).await;
            hints.check(decision, at, 6);
        }
        let (decision, at) = timed(rl.hybrid().absolute().is_allowed(&k)).await;
        hints.check(decision.unwrap(), at, 6);
        // Try-locally answers the same without I/O while the refusal is fresh (`None` means
        // it is older than a quarter lease, so Redis must be asked: also right).
        let at = Span::now();
        if let Some(decision) = rl.hybrid().absolute().try_inc_locally(k.as_str(), 1) {
            hints.check(decision, at, 6);
        }

        // The hint is honest: once it has passed (counted from the end of the call that got
        // it, plus that call's round trip, by which it may be early), the window has room.
        sleep_past(retry + refused.took().as_millis() as u64 + 1, refused).await;
        assert_allowed(inc(&rl, &k, 7.5, 1).await);

        // A sub-1 capacity admits nothing: the count can never fit, so a whole window.
        let zero = key("cap0");
        assert_eq!(inc(&rl, &zero, 0.5, 1).await, rejected_for_good(1, 0));
    })
}

#[test]
fn counts_greater_than_one() {
    rt::run(async {
        let _guard = light().await;
        let rl = limiter(&unique("habs"), 1).await;
        let k = key("count");
        // C = 10; leases are exactly what callers wait for (C / 16 = 0), one bucket each.
        let (decision, first) = inc_at(&rl, &k, 10.0, 4).await;
        assert_allowed(decision);
        rt::sleep(Duration::from_millis(2)).await;
        assert_allowed(inc(&rl, &k, 10.0, 4).await);
        let mut hints = Hints::new(first, LEASE_MS);
        let (decision, at) = inc_at(&rl, &k, 10.0, 3).await; // 8 + 3 > 10
        hints.check(decision, at, 4);
        rt::sleep(Duration::from_millis(2)).await;
        assert_allowed(inc(&rl, &k, 10.0, 2).await); // exactly 10
        let (decision, at) = inc_at(&rl, &k, 10.0, 1).await;
        hints.check(decision, at, 6);

        // A fresh key: n = C is allowed at once.
        let exact = key("countexact");
        let (decision, first) = inc_at(&rl, &exact, 10.0, 10).await;
        assert_allowed(decision);
        let (decision, at) = inc_at(&rl, &exact, 10.0, 1).await;
        Hints::new(first, LEASE_MS).check(decision, at, 0);

        // A zero count is allowed without reserving anything.
        let zero = key("countzero");
        assert_allowed(inc(&rl, &zero, 10.0, 0).await);
        assert_allowed(inc(&rl, &exact, 10.0, 0).await);
    })
}

#[test]
fn a_count_larger_than_the_capacity_is_rejected_and_records_nothing() {
    rt::run(async {
        let _guard = light().await;
        let prefix = unique("habs");
        let rl = limiter(&prefix, 1).await;
        let k = key("over");
        // C = 10: a larger count waits a whole window, and reserves nothing.
        assert_eq!(inc(&rl, &k, 10.0, 11).await, rejected_for_good(1, 0));
        assert_eq!(inc(&rl, &k, 10.0, 1000).await, rejected_for_good(1, 0));
        // Had the rejected calls been counted, these 10 would not fit.
        let (decision, first) = inc_at(&rl, &k, 10.0, 10).await;
        assert_allowed(decision);
        let (decision, at) = inc_at(&rl, &k, 10.0, 1).await;
        Hints::new(first, LEASE_MS).check(decision, at, 0);

        // Same on a second instance, which shares the window: it is full now.
        let other = limiter(&prefix, 1).await;
        let (decision, at) = inc_at(&other, &k, 10.0, 1).await;
        Hints::new(first, LEASE_MS).check(decision, at, 0);
        assert_eq!(inc(&other, &k, 10.0, 11).await, rejected_for_good(1, 0));
    })
}

/// A call whose count can never fit is refused by Redis once; the caller gets that refusal,
/// however long the round trip took (the refusal is timed from the answer, and kept at least a
/// sync interval: a key without state has no reset time).
#[test]
fn a_count_that_never_fits_is_refused_over_a_slow_link() {
    rt::run(async {
        let _guard = light().await;
        // 5 ms each way: a 10 ms round trip.
        let proxy = DelayProxy::start(Duration::from_millis(5));
        let rl = limiter_with(&proxy.url(), &unique("hslow"), 1, |builder| {
            builder.command_timeout_ms(1000)
        })
        .await;
        let (result, span) = timed(rl.hybrid().absolute().inc(&key("slow0"), &rate(0.5), 1)).await;
        assert_eq!(
            result,
            Ok(rejected_for_good(1, 0)),
            "after {:?}",
            span.took()
        );
        let (result, span) =
            timed(rl.hybrid().absolute().inc(&key("slow11"), &rate(10.0), 11)).await;
        assert_eq!(
            result,
            Ok(rejected_for_good(1, 0)),
            "after {:?}",
            span.took()
        );
    })
}

// ---------------------------------------------------------------------------------------------
// Leases
// ---------------------------------------------------------------------------------------------

/// A key's first lease is sized to the demand seen (about 2 units: the caller's 1 and as much
/// again), not to the capacity; what a lease did not use goes back to Redis when it ends.
#[test]
fn the_first_lease_is_demand_sized_and_unused_quota_goes_back() {
    rt::run(async {
        let _guard = light().await;
        let prefix = unique("hlease");
        let rl = limiter(&prefix, 1).await;
        let k = key("first");
        // C = 1000: a lease may hold up to C / 16 = 62 beyond what callers wait for.
        assert_allowed(inc(&rl, &k, 1000.0, 1).await);
        let leased = rl.metrics().hybrid_leased_units;
        assert_eq!(
            leased, 2,
            "the first lease: 1 for the caller + 1 (1.5 × demand, rounded up)"
        );
        // The redis provider sees the lease as used until it ends...
        let quota = rl.redis().absolute().get(&k, &rate(1000.0)).await.unwrap();
        assert_eq!(quota.remaining, 998);
        // ...and everything it did not use goes back. The used lease is renewed once before it
        // ends (a key called about once a lease keeps a live lease); the renewal is not used,
        // so it is not renewed and goes back when it ends.
        let settled = wait_until_settled(&rl, 1, SETTLED).await - SETTLED;
        assert!(
            settled <= Duration::from_millis(2 * LEASE_MS + 10 + 100),
            "the unused units came back {settled:?} later: a lease ends after {LEASE_MS} ms"
        );
        let metrics = rl.metrics();
        assert!(
            metrics.hybrid_leased_units <= 4,
            "one renewal at most: {} units leased",
            metrics.hybrid_leased_units
        );
        assert_eq!(
            metrics.hybrid_returned_units,
            metrics.hybrid_leased_units - 1,
            "all but the admitted unit came back"
        );
        let quota = rl.redis().absolute().get(&k, &rate(1000.0)).await.unwrap();
        assert_eq!(quota.remaining, 999);
    })
}

/// `close()` gives back every unused lease at once.
#[test]
fn close_gives_back_unused_leases() {
    rt::run(async {
        let _guard = light().await;
        let prefix = unique("hclose");
        // W = 10 s: leases of 500 ms, so they are still running when close() is called.
        let rl = limiter(&prefix, 10).await;
        let k = key("close");
        let r = rate(100.0); // C = 1000
                             // 50 calls at once: the lease covers the 50 waiting plus half again for demand.
        let calls = (0..50).map(|_| rl.hybrid().absolute().inc(&k, &r, 1));
        for decision in futures_util::future::join_all(calls).await {
            assert_allowed(decision.unwrap());
        }
        let metrics = rl.metrics();
        let held = metrics.hybrid_leased_units - metrics.hybrid_returned_units - 50;
        assert!(held > 0, "the hybrid holds unused quota: {metrics:?}");
        rl.close().await.expect("close");
        let metrics = rl.metrics();
        assert_eq!(
            metrics.hybrid_leased_units - metrics.hybrid_returned_units,
            50,
            "close() gives back all {held} unused units: {metrics:?}"
        );
        let quota = rl.redis().absolute().get(&k, &r).await.unwrap();
        assert_eq!(quota.remaining, 950, "Redis holds exactly the 50 used");
    })
}

// ---------------------------------------------------------------------------------------------
// Shared limit with the redis provider
// ---------------------------------------------------------------------------------------------

#[test]
fn hybrid_and_redis_providers_share_one_limit() {
    rt::run(async {
        let _guard = light().await;
        let prefix = unique("habs");
        let rl = limiter(&prefix, 1).await;
        let redis_side = limiter(&prefix, 1).await;
        let r = rate(100.0); // C = 100

        // The hybrid takes 60; once its leases have ended and handed back what they did not
        // use, the redis provider gets exactly the other 40.
        let k = key("shared");
        for _ in 0..60 {
            assert_allowed(inc(&rl, &k, 100.0, 1).await);
        }
        wait_until_settled(&rl, 60, SETTLED).await;
        let mut redis_allowed = 0;
        loop {
            match redis_side.redis().absolute().inc(&k, &r, 1).await.unwrap() {
                RateLimitDecision::Allowed => redis_allowed += 1,
                RateLimitDecision::Rejected { .. } => break,
                other => panic!("absolute returned {other:?}"),
            }
            assert!(redis_allowed <= 100, "the redis provider never stops");
        }
        assert_eq!(redis_allowed, 40, "the redis provider sees the hybrid's 60");
        // And the hybrid sees the redis provider's 40.
        assert!(matches!(
            inc(&rl, &k, 100.0, 1).await,
            RateLimitDecision::Rejected { .. }
        ));
        assert!(matches!(
            rl.hybrid().absolute().is_allowed(&k).await.unwrap(),
            RateLimitDecision::Rejected { .. }
        ));

        // The other way round: the redis provider fills the window (one bucket of 100, G =
        // 100 ms), the hybrid is rejected with hints naming that bucket.
        let k2 = key("shared2");
        let (decision, first) = timed(redis_side.redis().absolute().inc(&k2, &r, 100)).await;
        assert_allowed(decision.unwrap());
        let (decision, at) = inc_at(&rl, &k2, 100.0, 1).await;
        Hints::new(first, 0).check(decision, at, 0);

        // While the hybrid holds a lease, its reservation counts for the redis provider too:
        // the two together never admit more than C. W = 10 s here (C = 100 at rate 10), so
        // nothing leaves the window while the test runs.
        let slow = limiter(&prefix, 10).await;
        let slow_redis = limiter(&prefix, 10).await;
        let r10 = rate(10.0);
        let k3 = key("shared3");
        let started = Instant::now();
        let mut total = 0;
        for round in 0..300 {
            let decision = if round % 2 == 0 {
                slow.hybrid().absolute().inc(&k3, &r10, 1).await.unwrap()
            } else {
                slow_redis
                    .redis()
                    .absolute()
                    .inc(&k3, &r10, 1)
                    .await
                    .unwrap()
            };
            total += u64::from(decision == RateLimitDecision::Allowed);
        }
        // Once the hybrid has given back what it holds, exactly C - total fit.
        slow.close().await.expect("close");
        let rest = 100 - total;
        if rest > 0 {
            assert_allowed(
                slow_redis
                    .redis()
                    .absolute()
                    .inc(&k3, &r10, rest)
                    .await
                    .unwrap(),
            );
        }
        assert!(matches!(
            slow_redis
                .redis()
                .absolute()
                .inc(&k3, &r10, 1)
                .await
                .unwrap(),
            RateLimitDecision::Rejected { .. }
        ));
        assert!(
            started.elapsed() < Duration::from_secs(9),
            "the machine is too slow for this test: the first admissions may have left the \
             10 s window ({:?})",
            started.elapsed()
        );
        assert!(
            total <= 100,
            "{total} admitted by the two providers, C = 100"
        );
    })
}

// ---------------------------------------------------------------------------------------------
// The fast path
// ---------------------------------------------------------------------------------------------

/// After warm-up, hot keys with ample capacity are served from their leases: at least 99% of
/// the calls are decided without I/O, and Redis is touched by the sync task in batches (one
/// pipelined round trip for all the keys that need it, one `EVALSHA` each), at most once per
/// 50 calls; the client sends nothing but `EVALSHA`.
#[test]
fn the_fast_path_does_no_redis_io() {
    rt::run(async {
        let _guard = heavy().await;
        const SYNC_MS: u64 = 10;
        let server = PrivateRedis::start();
        let rl = limiter_with(&server.url(), &unique("hfast"), 1, |builder| {
            builder.sync_interval_ms(SYNC_MS)
        })
        .await;
        let mut admin = connect(&server.url()).await;
        let keys: Vec<RedisKey> = (0..4).map(|i| key(&format!("hot{i}"))).collect();
        let r = rate(1_000_000.0);
        for k in &keys {
            for _ in 0..100 {
                assert_allowed(rl.hybrid().absolute().inc(k, &r, 1).await.unwrap());
            }
        }
        rt::sleep(Duration::from_millis(100)).await;
        for k in &keys {
            assert_allowed(rl.hybrid().absolute().inc(k, &r, 1).await.unwrap());
        }

        reset_stats(&mut admin).await;
        let round_trips_before = rl.metrics().redis_round_trips;
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
            rt::sleep(Duration::from_millis(10)).await;
        }
        let elapsed = started.elapsed();
        let round_trips = rl.metrics().redis_round_trips - round_trips_before;
        let calls = all_command_calls(&mut admin).await;
        let count = |command: &str| {
            calls
                .iter()
                .find(|(name, _)| name == command)
                .map_or(0, |(_, n)| *n)
        };
        let evalsha = count("evalsha");
        eprintln!(
            "fast path: {CALLS} calls in {elapsed:?}, {local} decided by try_inc_locally, \
             {waited} by inc; {round_trips} round trips, server saw {evalsha} EVALSHA: {calls:?}"
        );
        // What a client can send besides EVALSHA (TIME and the rest are the scripts' own).
        for command in ["eval", "ping", "del", "script|load"] {
            assert_eq!(count(command), 0, "{command}: {calls:?}");
        }
        // Batched: one pipelined round trip covers every key that needs Redis.
        assert!(
            evalsha <= round_trips * keys.len() as u64,
            "{evalsha} EVALSHA in {round_trips} round trips for {} keys",
            keys.len()
        );
        // Leases are sized to 1.5 × the demand since a key's last request, so a hot key goes
        // back to Redis every sync interval or two, however many calls it serves: on a 2-core
        // machine 98 to 125 EVALSHA for these 10 000 calls (about 1 per 90). The bound, 1 per
        // 50 calls, is twice that.
        assert!(
            evalsha as usize <= CALLS / 50,
            "{evalsha} EVALSHA for {CALLS} admitted calls: more than 1 per 50"
        );
        assert!(
            local >= CALLS * 99 / 100,
            "only {local} of {CALLS} calls were decided locally"
        );
    })
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
            handles.push(rt::spawn(async move {
                let r = self::rate(rate);
                let mut allowed = Vec::new();
                if let Some(pause) = pause {
                    // Spread the tasks' calls over the pause.
                    rt::sleep(pause * task as u32 / tasks as u32).await;
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
                        Some(pause) => rt::sleep(pause).await,
                        None => rt::yield_now().await,
                    }
                }
                allowed
            }));
        }
    }
    let mut allowed = Vec::new();
    for handle in handles {
        allowed.extend(handle.await);
    }
    allowed.sort_unstable();
    allowed
}

/// Two instances (two connection managers) hammer one key of capacity 300 (W = 1 s) with
/// 64 tasks each for three windows: no 1000 ms span ever holds more than 300 admissions, and
/// the capacity is used.
///
/// Zero overshoot holds for the times the admissions were made: each is made under a lease
/// whose bucket starts when the lease ends, after the admission, and stays counted a window.
///
/// Use: a unit is counted from when its lease ends (up to `lease_ms` after it was admitted)
/// for a whole window, and leased again at the first sync after it leaves; so each unit can be
/// admitted at most once per `W + lease_ms + sync_interval` = 1060 ms. Over spans of that
/// length, at least 90% of C must be admitted (the rest covers round trips and scheduling 128
/// tasks on 2 cores).
#[test]
fn two_instances_never_overshoot_and_use_the_window() {
    rt::run(async {
        let _guard = heavy().await;
        let prefix = unique("hexact");
        let limiters = [
            Arc::new(limiter(&prefix, 1).await),
            Arc::new(limiter(&prefix, 1).await),
        ];
        let k = key("two");
        let run = Duration::from_millis(3500);
        let origin = Instant::now();
        let allowed = hammer(&limiters, &k, 300.0, 64, run, None, origin).await;
        let end = origin.elapsed().as_micros() as u64;
        assert!(!allowed.is_empty(), "nothing admitted");

        let (busiest, at) = busiest_window(&allowed, 1_000_000);
        let start = allowed[0];
        let cycle_us = (1000 + lease_ms(1, 10) + 10) * 1000;
        let windows = per_window(&allowed, start, end, cycle_us);
        eprintln!(
            "two instances, C = 300: {} admitted in {:?}; busiest 1000 ms span {busiest} (from \
             {:.3} s); per {} ms from the first admission {windows:?}",
            allowed.len(),
            run,
            at as f64 / 1e6,
            cycle_us / 1000,
        );
        assert!(
            busiest <= 300,
            "{busiest} admitted within 1000 ms starting {:.3} s, C = 300; per window {windows:?}",
            at as f64 / 1e6
        );
        // The full spans after the first one (which holds the start-up burst).
        let full = ((end - start) / cycle_us) as usize;
        assert!(full >= 3, "the run was too short: {windows:?}");
        for (index, &count) in windows.iter().enumerate().take(full).skip(1) {
            assert!(
                count >= 270,
                "span {index} admitted only {count}, expected ≥ 90% of 300; {windows:?}"
            );
        }
    })
}

/// Give-backs and renewals must leave the window's total in Redis equal to what its buckets
/// hold: once every hybrid bucket has left the window, a later window admits exactly its
/// capacity minus what is still in it, not more and not less.
///
/// Regression test (the old layout lost count when a give-back and the opening of a second
/// bucket happened in one call). A 1 ms rate group (2 ms in force) puts every lease in a
/// bucket of its own.
#[test]
fn lease_give_back_keeps_the_window_total() {
    rt::run(async {
        let _guard = light().await;
        let prefix = unique("hgive");
        let hybrid = builder_at(&hybrid_redis_url(), &prefix, 1)
            .await
            .rate_group_size_ms(1)
            .build()
            .expect("valid settings");
        let rl = limiter(&prefix, 1).await;
        let k = key("giveback");
        let r = rate(640.0); // C = 640; leases up to 40 beyond what callers wait for
                             // 40 calls, one every 3 ms: leases grow with the demand, are renewed while in use and
                             // give back what is left when they end.
        for _ in 0..40 {
            assert_allowed(hybrid.hybrid().absolute().inc(&k, &r, 1).await.unwrap());
            rt::sleep(Duration::from_millis(3)).await;
        }
        wait_until_settled(&hybrid, 40, SETTLED).await;
        assert!(
            hybrid.metrics().hybrid_returned_units > 0,
            "nothing was given back: {:?}",
            hybrid.metrics()
        );
        // No more leases: the instance is closed and dropped (its sync task ends with it; a
        // round already under way finishes within 100 ms on loopback).
        hybrid.close().await.expect("close");
        drop(hybrid);
        rt::sleep(Duration::from_millis(100)).await;
        // Every hybrid bucket starts at most lease_ms after its grant, all made before now:
        // they have all left 1001 ms after that (+ 2 ms of whole-ms rounding).
        let hybrid_gone = Instant::now() + Duration::from_millis(LEASE_MS + 1001 + 2);
        // One call through the redis provider keeps the key's state alive meanwhile.
        rt::sleep(Duration::from_millis(300)).await;
        let (decision, kept) = timed(rl.redis().absolute().inc(&k, &r, 1)).await;
        assert_allowed(decision.unwrap());
        rt::sleep(hybrid_gone.saturating_duration_since(Instant::now())).await;
        // The window holds exactly that 1: 639 fit, and not one more.
        let (decision, at) = timed(rl.redis().absolute().inc(&k, &r, 639)).await;
        assert_eq!(
            decision.unwrap(),
            RateLimitDecision::Allowed,
            "the window held more than the 1 unit still in it"
        );
        let decision = rl.redis().absolute().inc(&k, &r, 1).await.unwrap();
        assert!(
            at.answered < kept.sent + Duration::from_millis(1000),
            "the machine is too slow for this test: the unit that keeps the state may have \
             left the window ({:?} later)",
            at.answered - kept.sent
        );
        assert!(
            matches!(decision, RateLimitDecision::Rejected { .. }),
            "the window held less than what its buckets hold: {decision:?}"
        );
    })
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
#[test]
fn paced_load_never_overshoots() {
    rt::run(async {
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
    })
}

// ---------------------------------------------------------------------------------------------
// Redis trouble
// ---------------------------------------------------------------------------------------------

/// The server dies: a key with a lease is still served locally, without error, until that
/// lease ends (`lease_ms` after the request that got it, which was sent before the kill), and
/// never after; a call that needs Redis fails with an outage error within the command timeout
/// instead of hanging; the server comes back on the same port: the limiter recovers by itself
/// and serves from leases again.
#[test]
fn redis_going_away_and_coming_back() {
    rt::run(async {
        // Timing matters (the lease's end is checked to 2 ms): not alongside the load tests.
        let _guard = light().await;
        const SYNC_MS: u64 = 50;
        let mut server = PrivateRedis::start();
        // W = 10 s and a 50 ms sync interval: leases of max(10 000 / 20, 4 × 50) = 500 ms.
        let lease = Duration::from_millis(lease_ms(10, SYNC_MS));
        let rl = limiter_with(&server.url(), &unique("htrouble"), 10, |builder| {
            builder
                .sync_interval_ms(SYNC_MS)
                .command_timeout_ms(COMMAND_TIMEOUT_MS)
        })
        .await;
        let r = rate(1000.0); // C = 10 000; leases up to 625 beyond what callers wait for
        let warm = key("warm");
        // One call of 100: a lease of 100 + 50 (1.5 × the demand of 100), so 50 are left.
        let (decision, granted) = timed(rl.hybrid().absolute().inc(&warm, &r, 100)).await;
        assert_allowed(decision.unwrap());
        assert_eq!(rl.metrics().hybrid_leased_units, 150);

        server.kill();
        // Served from the lease, with no error and no waiting, one call per 15 ms (fewer than
        // the 50 units left), until the lease ends; never after.
        let mut served = 0;
        let mut last_served = Instant::now();
        let ended = loop {
            let now = Instant::now();
            match rl.hybrid().absolute().try_inc_locally(warm.as_str(), 1) {
                Some(decision) => {
                    assert_allowed(decision);
                    served += 1;
                    last_served = now;
                }
                None => break now,
            }
            // The lease ends `lease` after a time within `granted` (by the limiter's clock;
            // 2 ms for that clock and this one to disagree).
            assert!(
                now < granted.answered + lease + Duration::from_millis(2),
                "admitted locally {:?} after the lease was granted: past its end ({lease:?})",
                now - granted.sent
            );
            rt::sleep(Duration::from_millis(15)).await;
        };
        assert!(served < 50, "{served} served from a lease with 50 left");
        assert!(
            ended + Duration::from_millis(2) >= granted.sent + lease,
            "the lease stopped serving {:?} after it was granted (after {served} calls), before \
             it ended ({lease:?})",
            ended - granted.sent
        );
        eprintln!(
            "served {served} calls locally after the kill, the last {:?} after the grant",
            last_served - granted.sent
        );

        // Now the warm key needs Redis: an outage error within the command timeout. So does a
        // key never seen.
        let (result, span) = timed(rl.hybrid().absolute().inc(&warm, &r, 1)).await;
        assert_within_command_timeout(span.took(), "inc on the warm key after its lease");
        outage_error_message(result);
        let fresh = key("fresh");
        let (result, span) = timed(rl.hybrid().absolute().inc(&fresh, &r, 1)).await;
        assert_within_command_timeout(span.took(), "inc on a never-seen key");
        let message = outage_error_message(result);
        assert!(rl.is_redis_degraded());
        // Nothing is admitted locally without a lease.
        assert_eq!(
            rl.hybrid().absolute().try_inc_locally(warm.as_str(), 1),
            None
        );

        // Back on the same port (empty: no scripts loaded, no state): calls succeed again on
        // their own.
        let recovered = restart_and_recover(
            &mut server,
            || rl.hybrid().absolute().inc(&fresh, &r, 1),
            assert_allowed,
        )
        .await;
        eprintln!(
            "redis trouble: a never-seen key failed ({message}); recovered {recovered:?} after \
             the restart"
        );
        assert!(!rl.is_redis_degraded());
        // Leases resume: a call of 10 gets a lease of half as much again, and the next calls
        // are served from it.
        for k in [&fresh, &warm] {
            assert_allowed(rl.hybrid().absolute().inc(k, &r, 10).await.unwrap());
            assert_eq!(
                rl.hybrid().absolute().try_inc_locally(k.as_str(), 1),
                Some(RateLimitDecision::Allowed),
                "{k}"
            );
        }
    })
}

#[test]
fn unreachable_redis_fails_within_the_command_timeout() {
    rt::run(async {
        let rl = support::unreachable_limiter().await;
        let k = key("unreachable");
        let (result, span) = timed(rl.hybrid().absolute().inc(&k, &rate(5.0), 1)).await;
        assert_within_command_timeout(span.took(), "hybrid inc on a closed port");
        match result {
            Err(TrypemaError::RedisConnection(_) | TrypemaError::RedisTimeout(_)) => {}
            other => panic!("expected an outage error, got {other:?}"),
        }
    })
}
