//! The Redis provider's suppressed strategy against a real Redis (`TRYPEMA_TEST_REDIS_URL`).
//!
//! The scripts read the server's clock, so time cannot be mocked: windows are short and the
//! tests sleep for real. Every test works under its own random prefix and keys, since tests
//! share one Redis and run in parallel; the few that read server-wide statistics (or flush
//! the script cache) take the `SERVER` lock exclusively ([`support::exclusive`]).
#![cfg(feature = "redis-tokio")]

mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use redis::aio::ConnectionManager;
use support::{
    assert_allowed, assert_each_call_is_one_evalsha, client_addr, client_commands, command,
    connection, entity_of, exclusive, key, rate, redis_builder, redis_error_message, reset_stats,
    scan, unique, unreachable_limiter, Env, Monitor,
};
use trypema::{redis::RedisKey, RateLimitDecision, RateLimiter, TrypemaError};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// This binary's [`Env`]: prefixes start with `tsup`; limiters take a hard limit factor.
impl Env {
    async fn new() -> Self {
        Self::with_prefix("tsup").await
    }

    /// A limiter over a fresh connection with this test's prefix.
    async fn limiter(&self, window_s: u64, group_ms: u64, hard_limit_factor: f64) -> RateLimiter {
        build_limiter(&self.prefix, window_s, group_ms, hard_limit_factor).await
    }
}

async fn build_limiter(
    prefix: &str,
    window_s: u64,
    group_ms: u64,
    hard_limit_factor: f64,
) -> RateLimiter {
    redis_builder(prefix, window_s, group_ms)
        .await
        .hard_limit_factor(hard_limit_factor)
        .build()
        .expect("valid settings")
}

/// `(suppression_factor, is_allowed)` of a `Suppressed` decision.
#[track_caller]
fn suppressed(decision: RateLimitDecision) -> (f64, bool) {
    match decision {
        RateLimitDecision::Suppressed {
            suppression_factor,
            is_allowed,
        } => {
            assert!(
                (0.0..=1.0).contains(&suppression_factor),
                "factor out of [0, 1]: {decision:?}"
            );
            (suppression_factor, is_allowed)
        }
        other => panic!("expected Suppressed, got {other:?}"),
    }
}

async fn inc(rl: &RateLimiter, key: &RedisKey, rate: f64, count: u64) -> RateLimitDecision {
    rl.redis()
        .suppressed()
        .inc(key, &self::rate(rate), count)
        .await
        .expect("suppressed inc")
}

async fn factor(rl: &RateLimiter, key: &RedisKey) -> f64 {
    let factor = rl
        .redis()
        .suppressed()
        .get_suppression_factor(key)
        .await
        .expect("get_suppression_factor");
    assert!((0.0..=1.0).contains(&factor), "factor {factor}");
    factor
}

/// A serialized copy (`DUMP`) of every key under `pattern`, for comparing state.
async fn snapshot(admin: &mut ConnectionManager, pattern: &str) -> BTreeMap<String, Vec<u8>> {
    let mut copies = BTreeMap::new();
    for name in scan(admin, pattern).await {
        let dump: Vec<u8> = redis::cmd("DUMP")
            .arg(&name)
            .query_async(admin)
            .await
            .expect("DUMP");
        copies.insert(name, dump);
    }
    copies
}

// ---------------------------------------------------------------------------------------------
// Decisions
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_while_accepted_plus_n_fits_the_soft_capacity() {
    let env = Env::new().await;
    // W = 1 s, rate 10: S = 10, H = 20.
    let rl = env.limiter(1, 1000, 2.0).await;
    let k = key("soft");
    assert_allowed(inc(&rl, &k, 10.0, 4).await);
    assert_allowed(inc(&rl, &k, 10.0, 4).await);
    assert_allowed(inc(&rl, &k, 10.0, 2).await); // accepted + n = 10 = S
                                                 // Over S: 1 - rate / perceived, with perceived at most 11 per second.
    let (f, _) = suppressed(inc(&rl, &k, 10.0, 1).await);
    assert!(f <= 1.0 - 10.0 / 11.0 + 1e-9, "factor {f}");

    // A fresh key: n = S is allowed outright...
    let exact = key("softexact");
    assert_allowed(inc(&rl, &exact, 10.0, 10).await);
    // ...n = S + 1 is not Allowed, but nothing was accepted yet, so f = 0 and it is admitted.
    let over = key("softover");
    assert_eq!(
        inc(&rl, &over, 10.0, 11).await,
        RateLimitDecision::Suppressed {
            suppression_factor: 0.0,
            is_allowed: true
        }
    );

    // With H = S, a first call bigger than S would break the ceiling: declined.
    let strict = env.limiter(1, 1000, 1.0).await;
    let big = key("softbig");
    let (_, admitted) = suppressed(inc(&strict, &big, 10.0, 11).await);
    assert!(!admitted, "n > H must never be admitted");
    assert_allowed(inc(&strict, &big, 10.0, 10).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn factor_is_zero_for_an_unknown_key_and_creates_nothing() {
    let mut env = Env::new().await;
    let rl = env.limiter(1, 100, 1.5).await;
    let k = key("unknown");
    for _ in 0..5 {
        assert_eq!(factor(&rl, &k).await, 0.0);
    }
    assert!(!env.exists(&env.entity(&k, "s")).await);
    assert!(env.keys().await.is_empty());
    assert_allowed(inc(&rl, &k, 5.0, 5).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_suppression_factor_records_nothing() {
    let mut env = Env::new().await;
    // W = 1 s, rate 10, one bucket: S = 10, H = 30.
    let rl = env.limiter(1, 1000, 3.0).await;
    let k = key("factor");
    let name = env.entity(&k, "s");
    // Nothing accepted yet, so f = 0 and all 20 are admitted; now accepted = observed = 20.
    assert_eq!(
        inc(&rl, &k, 10.0, 20).await,
        RateLimitDecision::Suppressed {
            suppression_factor: 0.0,
            is_allowed: true
        }
    );
    let pattern = format!("{name}*");
    let before = snapshot(&mut env.admin, &pattern).await;
    assert!(before.contains_key(&name));
    // f = 1 - rate / perceived = 1 - 10 / 20, however often it is asked for.
    for _ in 0..20 {
        let f = factor(&rl, &k).await;
        assert!((f - 0.5).abs() < 1e-9, "factor {f}, expected 0.5");
    }
    assert_eq!(
        snapshot(&mut env.admin, &pattern).await,
        before,
        "reading the factor changed the state"
    );
    // Had those calls been observed, perceived would be 40 and f = 0.75.
    let (f, _) = suppressed(inc(&rl, &k, 10.0, 1).await);
    assert!((f - (1.0 - 10.0 / 21.0)).abs() < 0.02, "factor {f}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admissions_leave_the_window_with_their_bucket() {
    let env = Env::new().await;
    // H = S = 5, so a call is admitted exactly when it fits.
    let rl = env.limiter(1, 50, 1.0).await;
    let k = key("slide");
    assert_allowed(inc(&rl, &k, 5.0, 2).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_allowed(inc(&rl, &k, 5.0, 3).await);
    assert!(!inc(&rl, &k, 5.0, 1).await.is_allowed());
    // ~1.05 s after the first bucket opened it has left the window, the second has not:
    // 3 accepted remain, so 2 fit and a third does not.
    tokio::time::sleep(Duration::from_millis(750)).await;
    assert_allowed(inc(&rl, &k, 5.0, 2).await);
    let (f, admitted) = suppressed(inc(&rl, &k, 5.0, 1).await);
    assert!(!admitted && f == 1.0, "at the ceiling");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hard_ceiling_caps_a_burst() {
    let env = Env::new().await;
    // hard_limit_factor 1.0, rate 10, W = 1 s: H = S = 10.
    let rl = Arc::new(env.limiter(1, 100, 1.0).await);
    let k = Arc::new(key("burst"));
    let burst: Vec<_> = (0..100)
        .map(|_| {
            let (rl, k) = (rl.clone(), k.clone());
            tokio::spawn(async move { inc(&rl, &k, 10.0, 1).await })
        })
        .collect();
    let mut admitted = 0;
    for call in burst {
        let decision = call.await.unwrap();
        if decision.is_allowed() {
            admitted += 1;
        } else {
            assert_eq!(
                decision,
                RateLimitDecision::Suppressed {
                    suppression_factor: 1.0,
                    is_allowed: false
                }
            );
        }
    }
    assert!(admitted <= 10, "{admitted} admitted, H = 10");
    assert_eq!(admitted, 10, "the first S calls always fit");
    assert_eq!(factor(&rl, &k).await, 1.0, "at the ceiling f = 1");

    // hard_limit_factor 1.5: between S = 10 and H = 15 admitted.
    let rl = env.limiter(1, 100, 1.5).await;
    let k = key("burst15");
    let mut admitted = 0;
    for _ in 0..100 {
        if inc(&rl, &k, 10.0, 1).await.is_allowed() {
            admitted += 1;
        }
    }
    assert!((10..=15).contains(&admitted), "{admitted} admitted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_instances_never_admit_more_than_h() {
    let env = Env::new().await;
    // Two limiters, two connections; W = 10 s, rate 50, hard 1.5: S = 500, H = 750.
    let limiters = [
        Arc::new(env.limiter(10, 100, 1.5).await),
        Arc::new(env.limiter(10, 100, 1.5).await),
    ];
    let k = Arc::new(key("exact"));
    const ATTEMPTS: usize = 3000;
    let attempts = Arc::new(AtomicUsize::new(0));
    let admitted = Arc::new(AtomicUsize::new(0));
    let allowed = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for rl in &limiters {
        for _ in 0..64 {
            let (rl, k, attempts, admitted, allowed) = (
                rl.clone(),
                k.clone(),
                attempts.clone(),
                admitted.clone(),
                allowed.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while attempts.fetch_add(1, Ordering::Relaxed) < ATTEMPTS {
                    let decision = inc(&rl, &k, 50.0, 1).await;
                    if decision == RateLimitDecision::Allowed {
                        allowed.fetch_add(1, Ordering::Relaxed);
                    }
                    if decision.is_allowed() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("task panicked");
    }
    let (admitted, allowed) = (
        admitted.load(Ordering::Relaxed),
        allowed.load(Ordering::Relaxed),
    );
    assert_eq!(allowed, 500, "exactly S calls fit under the soft capacity");
    assert!(
        (500..=750).contains(&admitted),
        "{admitted} admitted: must be within [S, H] = [500, 750]"
    );
}

/// Offers 3× the rate, evenly paced, for 2.5 windows; the admitted rate must settle near the
/// rate (not near the offered load), and no window may ever admit more than H.
///
/// With H = 2 S the first window's burst (S admitted at once, then the factor takes over)
/// does not echo into later windows, which a tight ceiling would cause: with H = S the window
/// stays pinned at S and its burst repeats every window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_overload_settles_near_the_rate() {
    const WINDOW_S: u64 = 2;
    const RATE: f64 = 50.0;
    const OFFERED: f64 = 150.0;
    const HARD: f64 = 2.0;
    const RUN_S: f64 = 5.0;
    let env = Env::new().await;
    let rl = Arc::new(env.limiter(WINDOW_S, 100, HARD).await);
    let k = Arc::new(key("steady"));
    let hard_capacity = (WINDOW_S as f64 * RATE * HARD) as usize; // 150

    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / OFFERED));
    let mut calls = Vec::new();
    for _ in 0..(OFFERED * RUN_S) as usize {
        ticks.tick().await;
        let (rl, k) = (rl.clone(), k.clone());
        calls.push(tokio::spawn(async move {
            let decision = inc(&rl, &k, RATE, 1).await;
            (started.elapsed().as_secs_f64(), decision.is_allowed())
        }));
    }
    let mut admitted = Vec::new();
    for call in calls {
        let (at, is_allowed) = call.await.expect("call panicked");
        if is_allowed {
            admitted.push(at);
        }
    }
    admitted.sort_by(f64::total_cmp);
    let end = started.elapsed().as_secs_f64();
    let per_second: Vec<usize> = (0..end.ceil() as usize)
        .map(|s| {
            admitted
                .iter()
                .filter(|&&t| t >= s as f64 && t < s as f64 + 1.0)
                .count()
        })
        .collect();

    // Never more than H in any window. Times are client-side (when each reply arrived), so
    // the windows checked are 50 ms shorter than the server's to absorb reply jitter.
    let window = WINDOW_S as f64 - 0.05;
    let mut first = 0;
    let mut busiest = 0;
    for (last, &t) in admitted.iter().enumerate() {
        while admitted[first] <= t - window {
            first += 1;
        }
        busiest = busiest.max(last + 1 - first);
    }
    assert!(
        busiest <= hard_capacity,
        "{busiest} admitted within one window, H = {hard_capacity}; per second {per_second:?}"
    );

    // After the first window the admitted rate is near the rate, not the offered load.
    let after: Vec<f64> = admitted
        .iter()
        .copied()
        .filter(|&t| t >= WINDOW_S as f64)
        .collect();
    let admitted_rate = after.len() as f64 / (end - WINDOW_S as f64);
    eprintln!(
        "steady overload: offered {OFFERED}/s, rate {RATE}/s, admitted {admitted_rate:.1}/s \
         after the first window; per second {per_second:?}; busiest window {busiest}"
    );
    assert!(
        (RATE * 0.75..=RATE * 1.25).contains(&admitted_rate),
        "admitted {admitted_rate:.1}/s after the first window, expected {RATE} ± 25%; \
         per second {per_second:?}"
    );
    // Single seconds are noisier (each call is a coin toss): only a looser bound holds there.
    for second in WINDOW_S as usize..end.floor() as usize {
        assert!(
            (RATE * 0.5..=RATE * 1.5).contains(&(per_second[second] as f64)),
            "{} admitted in second {second}, expected {RATE} ± 50%; per second {per_second:?}",
            per_second[second]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Sticky rate and expiry
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_is_sticky_until_the_state_expires() {
    let env = Env::new().await;
    // hard 1.0, so anything past S is declined.
    let rl = env.limiter(1, 100, 1.0).await;
    let k = key("sticky");
    // The first inc fixes rate 5 (S = 5); a larger rate later does not raise it.
    assert_allowed(inc(&rl, &k, 5.0, 1).await);
    assert_allowed(inc(&rl, &k, 100.0, 4).await);
    let (f, admitted) = suppressed(inc(&rl, &k, 100.0, 1).await);
    assert!(!admitted && f == 1.0, "the stored rate 5 still applies");

    // Once the state has expired, the next first inc fixes the new rate (S = 100).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_allowed(inc(&rl, &k, 100.0, 60).await);
    assert_allowed(inc(&rl, &k, 1.0, 40).await);
    let (_, admitted) = suppressed(inc(&rl, &k, 1.0, 1).await);
    assert!(!admitted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_expires_after_the_window() {
    let mut env = Env::new().await;
    let rl = env.limiter(1, 100, 1.0).await;
    let k = key("expiry");
    assert_allowed(inc(&rl, &k, 5.0, 5).await);
    let (_, admitted) = suppressed(inc(&rl, &k, 5.0, 1).await);
    assert!(!admitted);
    assert_eq!(factor(&rl, &k).await, 1.0);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        !env.exists(&env.entity(&k, "s")).await,
        "the key's TTL ends with its window"
    );
    assert_eq!(factor(&rl, &k).await, 0.0);
    assert_allowed(inc(&rl, &k, 5.0, 5).await);
}

// ---------------------------------------------------------------------------------------------
// Isolation and layout
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppressed_and_absolute_state_do_not_collide() {
    let mut env = Env::new().await;
    let rl = env.limiter(1, 100, 1.0).await;
    let k = key("shared");
    assert_allowed(inc(&rl, &k, 5.0, 5).await);
    let (_, admitted) = suppressed(inc(&rl, &k, 5.0, 1).await);
    assert!(!admitted);
    // The same key under the absolute strategy starts from nothing: all 5 fit.
    let r = rate(5.0);
    assert_allowed(rl.redis().absolute().is_allowed(&k).await.unwrap());
    assert_allowed(rl.redis().absolute().inc(&k, &r, 5).await.unwrap());
    assert!(matches!(
        rl.redis().absolute().inc(&k, &r, 1).await.unwrap(),
        RateLimitDecision::Rejected { .. }
    ));
    // And the suppressed state is untouched.
    assert_eq!(factor(&rl, &k).await, 1.0);
    assert_eq!(
        env.entities().await,
        BTreeSet::from([env.entity(&k, "a"), env.entity(&k, "s")])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_prefixes_do_not_collide() {
    let mut env = Env::new().await;
    let other_prefix = unique("tsupother");
    let rl = env.limiter(1, 100, 1.0).await;
    let other = build_limiter(&other_prefix, 1, 100, 1.0).await;
    let k = key("prefixed");
    assert_allowed(inc(&rl, &k, 5.0, 5).await);
    assert!(!inc(&rl, &k, 5.0, 1).await.is_allowed());
    assert_eq!(factor(&other, &k).await, 0.0);
    assert_allowed(inc(&other, &k, 5.0, 5).await);
    assert_eq!(env.entities().await, BTreeSet::from([env.entity(&k, "s")]));
    let other_keys = scan(&mut env.admin, &format!("{{{other_prefix}:*")).await;
    assert_eq!(
        other_keys
            .iter()
            .map(|name| entity_of(name))
            .collect::<BTreeSet<_>>(),
        BTreeSet::from([format!("{{{other_prefix}:{}}}:s", k.as_str())])
    );
}

// ---------------------------------------------------------------------------------------------
// Expiry: every key has a TTL, and idle state leaves Redis by itself
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_written_key_has_a_ttl() {
    let mut env = Env::new().await;
    // S = H = 6.
    let rl = env.limiter(1, 50, 1.0).await;
    let k = key("ttl");
    assert_allowed(inc(&rl, &k, 6.0, 1).await);
    env.assert_ttls("the first inc").await;
    assert_allowed(inc(&rl, &k, 6.0, 1).await);
    env.assert_ttls("an inc joining the bucket").await;
    for opened in 2..=4 {
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_allowed(inc(&rl, &k, 6.0, 1).await);
        env.assert_ttls(&format!("an inc opening bucket {opened}"))
            .await;
    }
    assert_allowed(inc(&rl, &k, 6.0, 1).await);
    assert!(!inc(&rl, &k, 6.0, 1).await.is_allowed());
    env.assert_ttls("a declined inc").await;
    assert_eq!(factor(&rl, &k).await, 1.0);
    env.assert_ttls("get_suppression_factor").await;
    // The newest bucket opened moments ago: the TTL was renewed to about a full window.
    let name = env.entity(&k, "s");
    assert!(env.pttl(&name).await > 800);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_state_leaves_redis_without_a_sweeper() {
    let mut env = Env::new().await;
    let rl = env.limiter(1, 20, 1.5).await;
    let keys: Vec<RedisKey> = (0..20).map(|i| key(&format!("idle{i}x"))).collect();
    for round in 0..4 {
        for k in &keys {
            let _ = inc(&rl, k, 2.0, 1).await;
        }
        if round < 3 {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    for k in &keys {
        let _ = factor(&rl, k).await;
    }
    let written = env.entities().await;
    assert_eq!(written.len(), keys.len(), "{written:?}");
    env.assert_ttls("the writes").await;
    drop(rl);

    // Idle for window + 1 s: nothing is left under this test's prefix.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let left = env.keys().await;
    assert!(left.is_empty(), "keys left after expiry: {left:?}");
}

// ---------------------------------------------------------------------------------------------
// Round trips: one EVALSHA per call; the script reloads after SCRIPT FLUSH
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_call_is_one_evalsha() {
    let _exclusive = exclusive().await;
    let prefix = unique("tsupstat");
    let rl = build_limiter(&prefix, 1, 100, 1.5).await;
    let mut admin = connection().await;
    let admin_addr = client_addr(&mut admin).await;
    let k = key("stat");
    // Make sure the script is cached before counting.
    assert_allowed(inc(&rl, &k, 10.0, 1).await);

    let monitor = Monitor::start();
    reset_stats(&mut admin).await;
    const CALLS: u64 = 30;
    for i in 0..CALLS {
        if i % 5 == 4 {
            let _ = factor(&rl, &k).await;
        } else {
            let _ = inc(&rl, &k, 10.0, 1).await; // allowed, then suppressed
        }
    }
    assert_each_call_is_one_evalsha(&mut admin, monitor, &admin_addr, CALLS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_is_reloaded_after_script_flush() {
    let _exclusive = exclusive().await;
    let prefix = unique("tsupflush");
    let rl = build_limiter(&prefix, 1, 100, 1.0).await;
    let mut admin = connection().await;
    let admin_addr = client_addr(&mut admin).await;
    let k = key("flush");
    assert_allowed(inc(&rl, &k, 3.0, 1).await);

    let monitor = Monitor::start();
    let _: () = command(&mut admin, "SCRIPT", "FLUSH").await;
    assert_allowed(inc(&rl, &k, 3.0, 2).await);
    assert!(!inc(&rl, &k, 3.0, 1).await.is_allowed());
    assert_eq!(factor(&rl, &k).await, 1.0);
    let seen = monitor.stop(&mut admin).await;
    let sent = client_commands(&seen, &admin_addr);
    let count = |name: &str| sent.iter().filter(|command| *command == name).count();
    assert_eq!(
        count("evalsha"),
        4,
        "one NOSCRIPT miss, then 3 hits: {sent:?}"
    );
    assert_eq!(
        count("script") + count("eval"),
        1,
        "the script is loaded exactly once: {sent:?}"
    );
    assert_eq!(sent.len(), 5, "{sent:?}");
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_is_an_error() {
    let rl = unreachable_limiter().await;
    let k = key("unreachable");
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        rl.redis().suppressed().inc(&k, &rate(5.0), 1),
    )
    .await
    .expect("fails promptly");
    redis_error_message(result);
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        rl.redis().suppressed().get_suppression_factor(&k),
    )
    .await
    .expect("fails promptly");
    assert!(matches!(result, Err(TrypemaError::Redis(_))), "{result:?}");
}
