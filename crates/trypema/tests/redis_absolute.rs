//! The Redis provider's absolute strategy against a real Redis (`TRYPEMA_TEST_REDIS_URL`).
//!
//! The scripts read the server's clock, so time cannot be mocked: windows are 1 s and the
//! tests sleep for real. Every test works under its own random prefix and keys, since tests
//! share one Redis and run in parallel; the few that read server-wide statistics (or flush
//! the script cache) take the `SERVER` lock exclusively ([`support::exclusive`]).
#![cfg(feature = "redis-tokio")]

mod support;

use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use support::{
    assert_allowed, assert_each_call_is_one_evalsha, client_addr, client_commands, command,
    connection, entity_of, exclusive, key, rate, redis_builder, redis_error_message,
    rejected_within, reset_stats, scan, unique, unreachable_limiter, Env, Monitor,
};
use trypema::{redis::RedisKey, RateLimitDecision, RateLimiter, TrypemaError};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// This binary's [`Env`]: prefixes start with `tabs`; limiters use the absolute settings.
impl Env {
    async fn new() -> Self {
        Self::with_prefix("tabs").await
    }

    /// A limiter over a fresh connection with this test's prefix.
    async fn limiter(&self, window_s: u64, group_ms: u64) -> RateLimiter {
        build_limiter(&self.prefix, window_s, group_ms).await
    }
}

async fn build_limiter(prefix: &str, window_s: u64, group_ms: u64) -> RateLimiter {
    redis_builder(prefix, window_s, group_ms)
        .await
        .build()
        .expect("valid settings")
}

/// `(retry_after_ms, remaining_after_waiting)` of a `Rejected` decision for a 1 s window.
#[track_caller]
fn rejected(decision: RateLimitDecision) -> (u64, u64) {
    rejected_within(decision, 1001)
}

async fn inc(rl: &RateLimiter, key: &RedisKey, rate: f64, count: u64) -> RateLimitDecision {
    rl.redis()
        .absolute()
        .inc(key, &self::rate(rate), count)
        .await
        .expect("absolute inc")
}

async fn is_allowed(rl: &RateLimiter, key: &RedisKey) -> RateLimitDecision {
    rl.redis()
        .absolute()
        .is_allowed(key)
        .await
        .expect("absolute is_allowed")
}

// ---------------------------------------------------------------------------------------------
// Capacity and counting
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_is_floor_of_window_times_rate() {
    let env = Env::new().await;

    // W = 1 s, rate 5.7: C = 5.
    let rl = env.limiter(1, 100).await;
    let k = key("cap");
    for _ in 0..5 {
        assert_allowed(inc(&rl, &k, 5.7, 1).await);
    }
    rejected(inc(&rl, &k, 5.7, 1).await);

    // W = 2 s, rate 2.5: C = 5.
    let rl2 = env.limiter(2, 100).await;
    let k2 = key("cap2");
    for _ in 0..5 {
        assert_allowed(inc(&rl2, &k2, 2.5, 1).await);
    }
    match inc(&rl2, &k2, 2.5, 1).await {
        RateLimitDecision::Rejected {
            window_size_seconds,
            retry_after_ms,
            ..
        } => {
            assert_eq!(window_size_seconds, 2);
            assert!(retry_after_ms > 0 && retry_after_ms <= 2001);
        }
        other => panic!("expected Rejected, got {other:?}"),
    }

    // W = 1 s, rate 0.5: C = floor(0.5) = 0, so nothing is ever admitted or stored.
    let k3 = key("cap0");
    let (_, remaining) = rejected(inc(&rl, &k3, 0.5, 1).await);
    assert_eq!(remaining, 0);
    let mut env = env;
    assert!(!env.exists(&env.entity(&k3, "a")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_greater_than_one() {
    let mut env = Env::new().await;
    let rl = env.limiter(1, 1000).await;
    let k = key("count");
    // C = 10.
    assert_allowed(inc(&rl, &k, 10.0, 4).await);
    assert_allowed(inc(&rl, &k, 10.0, 4).await);
    rejected(inc(&rl, &k, 10.0, 3).await); // 8 + 3 > 10
    assert_allowed(inc(&rl, &k, 10.0, 2).await); // exactly 10
    rejected(inc(&rl, &k, 10.0, 1).await);

    // A fresh key: n = C is allowed, n = C + 1 is rejected and creates no state.
    let exact = key("countexact");
    assert_allowed(inc(&rl, &exact, 10.0, 10).await);
    rejected(inc(&rl, &exact, 10.0, 1).await);
    let over = key("countover");
    let (_, remaining) = rejected(inc(&rl, &over, 10.0, 11).await);
    assert_eq!(remaining, 0);
    assert!(!env.exists(&env.entity(&over, "a")).await);
    assert_allowed(inc(&rl, &over, 10.0, 10).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_inc_records_nothing() {
    let env = Env::new().await;
    let rl = env.limiter(1, 1000).await;
    let k = key("norecord");
    // C = 10, one bucket (G = 1 s).
    assert_allowed(inc(&rl, &k, 10.0, 6).await);
    for _ in 0..20 {
        let (_, remaining) = rejected(inc(&rl, &k, 10.0, 5).await);
        assert_eq!(remaining, 0, "one bucket holds everything");
    }
    // Had any rejected call been counted, these 4 would not fit.
    assert_allowed(inc(&rl, &k, 10.0, 4).await);
    rejected(inc(&rl, &k, 10.0, 1).await);
}

// ---------------------------------------------------------------------------------------------
// Rejection hints and buckets
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejection_hints_with_two_buckets() {
    let env = Env::new().await;
    let rl = env.limiter(1, 50).await;
    let k = key("hints");
    // C = 10: bucket one holds 3, bucket two (opened > G later) holds 7.
    assert_allowed(inc(&rl, &k, 10.0, 3).await);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_allowed(inc(&rl, &k, 10.0, 7).await);

    let (retry, remaining) = rejected(inc(&rl, &k, 10.0, 1).await);
    assert_eq!(remaining, 7, "in_window (10) minus the oldest bucket (3)");
    // The oldest bucket started at least ~150 ms ago, so it leaves in at most ~851 ms.
    assert!(
        retry <= 1001 - 149,
        "retry_after_ms {retry} ignores the elapsed 150 ms"
    );
    // is_allowed gives the same hints.
    let (check_retry, check_remaining) = rejected(is_allowed(&rl, &k).await);
    assert_eq!(check_remaining, 7);
    assert!(check_retry <= retry);

    // After retry_after_ms the oldest bucket is gone: exactly its 3 fit again.
    tokio::time::sleep(Duration::from_millis(retry + 30)).await;
    assert_allowed(inc(&rl, &k, 10.0, 3).await);
    let (_, remaining) = rejected(inc(&rl, &k, 10.0, 1).await);
    assert_eq!(
        remaining, 3,
        "buckets are now 7 then 3: in_window 10 minus the oldest (7)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_leave_the_window_one_at_a_time() {
    let env = Env::new().await;
    let rl = env.limiter(1, 50).await;
    let k = key("slide");
    // C = 10 in four buckets ~150 ms apart: [1, 2, 3, 4].
    for count in 1..=4 {
        if count > 1 {
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        assert_allowed(inc(&rl, &k, 10.0, count).await);
    }
    let (retry, remaining) = rejected(inc(&rl, &k, 10.0, 1).await);
    assert_eq!(remaining, 9, "10 minus the oldest bucket (1)");
    // Each wait frees exactly the oldest bucket's count; new incs open buckets at the end.
    tokio::time::sleep(Duration::from_millis(retry + 30)).await;
    rejected(inc(&rl, &k, 10.0, 2).await);
    assert_allowed(inc(&rl, &k, 10.0, 1).await); // buckets [2, 3, 4, 1]
    let (retry, remaining) = rejected(inc(&rl, &k, 10.0, 1).await);
    assert_eq!(remaining, 8, "10 minus the oldest bucket (2)");
    assert!(
        retry <= 200,
        "the next bucket leaves ~150 ms later, not {retry} ms"
    );
    tokio::time::sleep(Duration::from_millis(retry + 30)).await;
    rejected(inc(&rl, &k, 10.0, 3).await);
    assert_allowed(inc(&rl, &k, 10.0, 2).await); // buckets [3, 4, 1, 2]
    let (_, remaining) = rejected(is_allowed(&rl, &k).await);
    assert_eq!(remaining, 7, "10 minus the oldest bucket (3)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_less_than_g_apart_share_a_bucket() {
    let env = Env::new().await;
    let rl = env.limiter(1, 400).await;

    // Two incs 50 ms apart join one bucket: waiting frees everything.
    let k = key("coalesce");
    assert_allowed(inc(&rl, &k, 5.0, 2).await);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_allowed(inc(&rl, &k, 5.0, 3).await);
    let (_, remaining) = rejected(inc(&rl, &k, 5.0, 1).await);
    assert_eq!(remaining, 0, "both incs share the oldest (only) bucket");

    // A bucket is joined while it *started* less than G ago: incs at 0 and ~50 ms share one;
    // one at ~500 ms (more than G after the bucket's start) opens another.
    let k = key("coalesce2");
    assert_allowed(inc(&rl, &k, 5.0, 1).await);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_allowed(inc(&rl, &k, 5.0, 1).await);
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_allowed(inc(&rl, &k, 5.0, 3).await);
    let (_, remaining) = rejected(inc(&rl, &k, 5.0, 1).await);
    assert_eq!(
        remaining, 3,
        "buckets [2, 3]: in_window 5 minus the oldest (2)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_expires_after_the_window() {
    let mut env = Env::new().await;
    let rl = env.limiter(1, 100).await;
    let k = key("expiry");
    for _ in 0..3 {
        assert_allowed(inc(&rl, &k, 3.0, 1).await);
    }
    rejected(inc(&rl, &k, 3.0, 1).await);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        !env.exists(&env.entity(&k, "a")).await,
        "the key's TTL ends with its window"
    );
    assert_allowed(is_allowed(&rl, &k).await);
    for _ in 0..3 {
        assert_allowed(inc(&rl, &k, 3.0, 1).await);
    }
    rejected(inc(&rl, &k, 3.0, 1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_is_sticky_until_the_state_expires() {
    let env = Env::new().await;
    let rl = env.limiter(1, 100).await;
    let k = key("sticky");
    // The first inc fixes C = 3; a later, larger rate does not raise it...
    assert_allowed(inc(&rl, &k, 3.0, 1).await);
    assert_allowed(inc(&rl, &k, 100.0, 2).await);
    rejected(inc(&rl, &k, 100.0, 1).await);
    rejected(inc(&rl, &k, 1000.0, 1).await);

    // ...until the state has expired; then the next first inc fixes a new one (C = 100).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_allowed(inc(&rl, &k, 100.0, 50).await);
    assert_allowed(inc(&rl, &k, 1.0, 50).await);
    rejected(inc(&rl, &k, 1.0, 1).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn is_allowed_reports_without_recording() {
    let mut env = Env::new().await;
    let rl = env.limiter(1, 1000).await;
    let k = key("check");
    // No state: Allowed, and still no state.
    for _ in 0..5 {
        assert_allowed(is_allowed(&rl, &k).await);
    }
    assert!(!env.exists(&env.entity(&k, "a")).await);

    // Below capacity: Allowed, and checking takes nothing.
    assert_allowed(inc(&rl, &k, 4.0, 3).await);
    for _ in 0..10 {
        assert_allowed(is_allowed(&rl, &k).await);
    }
    assert_allowed(inc(&rl, &k, 4.0, 1).await);

    // At capacity: Rejected with the same hints as inc.
    let (retry, remaining) = rejected(is_allowed(&rl, &k).await);
    let (inc_retry, inc_remaining) = rejected(inc(&rl, &k, 4.0, 1).await);
    assert_eq!(remaining, inc_remaining);
    assert!(retry.abs_diff(inc_retry) <= 50, "{retry} vs {inc_retry}");
}

// ---------------------------------------------------------------------------------------------
// Isolation and layout
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_and_suppressed_state_do_not_collide() {
    let mut env = Env::new().await;
    let rl = env.limiter(1, 100).await;
    let k = key("shared");
    let r = rate(5.0);
    for _ in 0..5 {
        assert_allowed(inc(&rl, &k, 5.0, 1).await);
    }
    rejected(inc(&rl, &k, 5.0, 1).await);
    // The same key under the suppressed strategy starts from nothing.
    assert_eq!(
        rl.redis()
            .suppressed()
            .get_suppression_factor(&k)
            .await
            .unwrap(),
        0.0
    );
    for _ in 0..5 {
        assert_allowed(rl.redis().suppressed().inc(&k, &r, 1).await.unwrap());
    }
    // And absolute is still exactly as full as before.
    rejected(inc(&rl, &k, 5.0, 1).await);

    assert_eq!(
        env.entities().await,
        BTreeSet::from([env.entity(&k, "a"), env.entity(&k, "s")]),
        "separate state per strategy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn different_prefixes_do_not_collide() {
    let mut env = Env::new().await;
    let other_prefix = unique("tabsother");
    let rl = env.limiter(1, 100).await;
    let other = build_limiter(&other_prefix, 1, 100).await;
    let k = key("prefixed");
    for _ in 0..3 {
        assert_allowed(inc(&rl, &k, 3.0, 1).await);
    }
    rejected(inc(&rl, &k, 3.0, 1).await);
    for _ in 0..3 {
        assert_allowed(inc(&other, &k, 3.0, 1).await);
    }
    rejected(inc(&other, &k, 3.0, 1).await);
    assert_eq!(env.entities().await, BTreeSet::from([env.entity(&k, "a")]));
    let other_keys = scan(&mut env.admin, &format!("{{{other_prefix}:*")).await;
    assert_eq!(
        other_keys
            .iter()
            .map(|name| entity_of(name))
            .collect::<BTreeSet<_>>(),
        BTreeSet::from([format!("{{{other_prefix}:{}}}:a", k.as_str())])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_hash_tagged_by_prefix_and_key() {
    let mut env = Env::new().await;
    let rl = env.limiter(1, 20).await;
    let k = key("layout");
    // Several buckets each, so any per-bucket keys exist too.
    for _ in 0..4 {
        assert_allowed(inc(&rl, &k, 5.0, 1).await);
        let decision = rl.redis().suppressed().inc(&k, &rate(5.0), 1).await;
        assert_allowed(decision.unwrap());
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    let prefix = env.prefix.clone();
    let (absolute, suppressed) = (
        format!("{{{prefix}:{}}}:a", k.as_str()),
        format!("{{{prefix}:{}}}:s", k.as_str()),
    );
    // Every key is `{prefix:key}:a` or `{prefix:key}:s`, possibly with a further `:` part,
    // so all of an entity's keys share the hash tag `{prefix:key}`.
    let tag = format!("{{{prefix}:{}}}:", k.as_str());
    for name in env.keys().await {
        assert!(name.starts_with(&tag), "{name} lacks the hash tag {tag}");
    }
    assert_eq!(
        env.entities().await,
        BTreeSet::from([absolute.clone(), suppressed.clone()])
    );
    assert!(env.exists(&absolute).await, "{absolute} must exist");
    assert!(env.exists(&suppressed).await, "{suppressed} must exist");

    // Without redis_prefix the prefix is `trypema`.
    assert_eq!(RedisKey::default_prefix().as_str(), "trypema");
    let default = RateLimiter::builder(connection().await)
        .window_size_seconds(1)
        .build()
        .unwrap();
    let k = key("layoutdefault");
    assert_allowed(inc(&default, &k, 5.0, 1).await);
    let keys = scan(&mut env.admin, &format!("{{trypema:{}}}*", k.as_str())).await;
    assert_eq!(
        keys.iter()
            .map(|name| entity_of(name))
            .collect::<BTreeSet<_>>(),
        BTreeSet::from([format!("{{trypema:{}}}:a", k.as_str())])
    );
}

#[test]
fn invalid_redis_keys_are_rejected() {
    let long = "x".repeat(256);
    for bad in ["a:b", "", ":", long.as_str()] {
        assert!(
            matches!(
                RedisKey::try_from(bad),
                Err(TrypemaError::InvalidRedisKey(_))
            ),
            "{bad:?} must be rejected"
        );
        assert!(matches!(
            RedisKey::try_from(bad.to_string()),
            Err(TrypemaError::InvalidRedisKey(_))
        ));
        let error = RedisKey::new(bad).unwrap_err();
        assert_eq!(error.code(), "TRYPEMA_INVALID_REDIS_KEY");
    }
    let longest = "x".repeat(255);
    assert_eq!(
        RedisKey::try_from(longest.as_str()).unwrap().as_str(),
        longest
    );
    // 255 bytes, not characters.
    assert!(RedisKey::try_from("é".repeat(128)).is_err());
    assert_eq!(RedisKey::try_from("user_123").unwrap().as_str(), "user_123");
}

#[test]
#[should_panic]
fn redis_key_new_or_panic_panics_on_an_invalid_key() {
    let _ = RedisKey::new_or_panic("a:b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_prefixes_fail_the_build() {
    let _env = Env::new().await;
    let long = "p".repeat(256);
    for bad in ["a:b", "", long.as_str()] {
        let result = RateLimiter::builder(connection().await)
            .redis_prefix(bad)
            .build();
        match result {
            Err(error @ TrypemaError::InvalidRedisPrefix(_)) => {
                assert_eq!(error.code(), "TRYPEMA_INVALID_REDIS_PREFIX")
            }
            Err(other) => panic!("prefix {bad:?}: expected InvalidRedisPrefix, got {other:?}"),
            Ok(_) => panic!("prefix {bad:?} must be rejected"),
        }
    }
    assert!(RateLimiter::builder(connection().await)
        .redis_prefix("p".repeat(255))
        .build()
        .is_ok());
}

// ---------------------------------------------------------------------------------------------
// Expiry: every key has a TTL, and idle state leaves Redis by itself
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_written_key_has_a_ttl() {
    let mut env = Env::new().await;
    let rl = env.limiter(1, 50).await;
    let k = key("ttl");
    // C = 6.
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
    rejected(inc(&rl, &k, 6.0, 1).await);
    env.assert_ttls("a rejected inc").await;
    rejected(is_allowed(&rl, &k).await);
    env.assert_ttls("is_allowed").await;
    // The newest bucket opened moments ago: the TTL was renewed to about a full window.
    let name = env.entity(&k, "a");
    assert!(env.pttl(&name).await > 800);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_state_leaves_redis_without_a_sweeper() {
    let mut env = Env::new().await;
    let rl = env.limiter(1, 20).await;
    let keys: Vec<RedisKey> = (0..20).map(|i| key(&format!("idle{i}x"))).collect();
    for round in 0..4 {
        for k in &keys {
            let _ = inc(&rl, k, 4.0, 1).await;
            let _ = rl.redis().suppressed().inc(k, &rate(2.0), 1).await.unwrap();
        }
        if round < 3 {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    for k in &keys {
        let _ = is_allowed(&rl, k).await;
        let _ = rl
            .redis()
            .suppressed()
            .get_suppression_factor(k)
            .await
            .unwrap();
    }
    let written = env.entities().await;
    assert_eq!(written.len(), 40, "{written:?}");
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
    let prefix = unique("tabsstat");
    let rl = build_limiter(&prefix, 1, 100).await;
    let mut admin = connection().await;
    let admin_addr = client_addr(&mut admin).await;
    let k = key("stat");
    // Make sure the script is cached before counting.
    assert_allowed(inc(&rl, &k, 10.0, 1).await);

    let monitor = Monitor::start();
    reset_stats(&mut admin).await;
    const CALLS: u64 = 25;
    for i in 0..CALLS {
        if i % 5 == 4 {
            let _ = is_allowed(&rl, &k).await;
        } else {
            let _ = inc(&rl, &k, 10.0, 1).await; // both allowed and rejected calls
        }
    }
    assert_each_call_is_one_evalsha(&mut admin, monitor, &admin_addr, CALLS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_is_reloaded_after_script_flush() {
    let _exclusive = exclusive().await;
    let prefix = unique("tabsflush");
    let rl = build_limiter(&prefix, 1, 100).await;
    let mut admin = connection().await;
    let admin_addr = client_addr(&mut admin).await;
    let k = key("flush");
    assert_allowed(inc(&rl, &k, 3.0, 1).await);

    let monitor = Monitor::start();
    let _: () = command(&mut admin, "SCRIPT", "FLUSH").await;
    assert_allowed(inc(&rl, &k, 3.0, 1).await);
    assert_allowed(inc(&rl, &k, 3.0, 1).await);
    rejected(inc(&rl, &k, 3.0, 1).await);
    rejected(is_allowed(&rl, &k).await);
    let seen = monitor.stop(&mut admin).await;
    let sent = client_commands(&seen, &admin_addr);
    let count = |name: &str| sent.iter().filter(|command| *command == name).count();
    assert_eq!(
        count("evalsha"),
        5,
        "one NOSCRIPT miss, then 4 hits: {sent:?}"
    );
    assert!(
        count("script") + count("eval") == 1,
        "the script is loaded exactly once: {sent:?}"
    );
    assert_eq!(sent.len(), 6, "{sent:?}");
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_redis_is_an_error() {
    // Connecting eagerly fails promptly; a lazily connecting manager builds, but every call
    // reports the Redis error.
    let rl = unreachable_limiter().await;
    let k = key("unreachable");
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        rl.redis().absolute().inc(&k, &rate(5.0), 1),
    )
    .await
    .expect("a call to a closed port must fail promptly");
    redis_error_message(result);
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        rl.redis().absolute().is_allowed(&k),
    )
    .await
    .expect("fails promptly");
    assert!(matches!(result, Err(TrypemaError::Redis(_))), "{result:?}");
}

// ---------------------------------------------------------------------------------------------
// Exactness under concurrency
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_instances_admit_exactly_capacity() {
    let env = Env::new().await;
    // Two limiters, two connections: as if two processes shared the Redis.
    let limiters = [
        Arc::new(env.limiter(10, 100).await),
        Arc::new(env.limiter(10, 100).await),
    ];
    let k = Arc::new(key("exact"));
    const ATTEMPTS: usize = 3000;
    const TASKS_PER_LIMITER: usize = 64;
    let attempts = Arc::new(AtomicUsize::new(0));
    let allowed = Arc::new(AtomicUsize::new(0));
    let rejections = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for rl in &limiters {
        for _ in 0..TASKS_PER_LIMITER {
            let (rl, k, attempts, allowed, rejections) = (
                rl.clone(),
                k.clone(),
                attempts.clone(),
                allowed.clone(),
                rejections.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while attempts.fetch_add(1, Ordering::Relaxed) < ATTEMPTS {
                    // W = 10 s, rate 50: C = 500.
                    match rl.redis().absolute().inc(&k, &rate(50.0), 1).await.unwrap() {
                        RateLimitDecision::Allowed => {
                            allowed.fetch_add(1, Ordering::Relaxed);
                        }
                        RateLimitDecision::Rejected {
                            retry_after_ms,
                            window_size_seconds: 10,
                            ..
                        } if retry_after_ms > 0 && retry_after_ms <= 10_001 => {
                            rejections.fetch_add(1, Ordering::Relaxed);
                        }
                        other => panic!("unexpected decision {other:?}"),
                    }
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("task panicked");
    }
    assert_eq!(allowed.load(Ordering::Relaxed), 500, "exactly C admitted");
    assert_eq!(rejections.load(Ordering::Relaxed), ATTEMPTS - 500);
}
