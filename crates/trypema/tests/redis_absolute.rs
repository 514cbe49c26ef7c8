//! The Redis provider's absolute strategy against a real Redis (`TRYPEMA_TEST_REDIS_URL`).
//!
//! The scripts read the server's clock, so time cannot be mocked: windows are 1 s and the
//! tests sleep for real. Rejection hints are checked against the times (by this process's
//! clock) of the calls that opened the buckets they name ([`support::expected_retry`]). Every
//! test works under its own random prefix and keys, since tests share one Redis and run in
//! parallel; the few that read server-wide statistics (or flush the script cache) take the
//! `SERVER` lock exclusively ([`support::exclusive`]).
#![cfg(trypema_redis)]

mod support;

use std::{
    collections::BTreeSet,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use support::{
    assert_allowed, assert_each_call_is_one_evalsha, assert_expired_with_the_window,
    assert_rejected, assert_within_command_timeout, client_addr, client_commands, command,
    connection, connection_error_message, exclusive, expected_retry, key, rate, redis_builder,
    rejected_for_good, reset_stats, rt, scan, sleep_past, timed, unique, unreachable_limiter,
    wait_for, wait_until_gone, Env, Monitor, SilentServer, Span, COMMAND_TIMEOUT_MS,
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

async fn inc(rl: &RateLimiter, key: &RedisKey, rate: f64, count: u64) -> RateLimitDecision {
    rl.redis()
        .absolute()
        .inc(key, &self::rate(rate), count)
        .await
        .expect("absolute inc")
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

async fn is_allowed(rl: &RateLimiter, key: &RedisKey) -> RateLimitDecision {
    rl.redis()
        .absolute()
        .is_allowed(key)
        .await
        .expect("absolute is_allowed")
}

/// Asserts that a rejection made during `at` names the bucket opened during `opened` as the
/// oldest of a 1 s window, with `remaining` left after it; returns `retry_after_ms`.
#[track_caller]
fn rejected_1s(decision: RateLimitDecision, opened: Span, at: Span, remaining: u64) -> u64 {
    assert_rejected(decision, 1, expected_retry(1000, 0, opened, at), remaining)
}

// ---------------------------------------------------------------------------------------------
// Capacity and counting
// ---------------------------------------------------------------------------------------------

#[test]
fn capacity_is_floor_of_window_times_rate() {
    rt::run(async {
        let mut env = Env::new().await;

        // W = 1 s, rate 5.7: C = 5. One bucket (G = W), so nothing is left after it.
        let rl = env.limiter(1, 1000).await;
        let k = key("cap");
        let (decision, first) = inc_at(&rl, &k, 5.7, 1).await;
        assert_allowed(decision);
        for _ in 0..4 {
            assert_allowed(inc(&rl, &k, 5.7, 1).await);
        }
        let (decision, at) = inc_at(&rl, &k, 5.7, 1).await;
        rejected_1s(decision, first, at, 0);

        // W = 2 s, rate 2.5: C = 5.
        let rl2 = env.limiter(2, 2000).await;
        let k2 = key("cap2");
        let (decision, first) = inc_at(&rl2, &k2, 2.5, 1).await;
        assert_allowed(decision);
        for _ in 0..4 {
            assert_allowed(inc(&rl2, &k2, 2.5, 1).await);
        }
        let (decision, at) = inc_at(&rl2, &k2, 2.5, 1).await;
        assert_rejected(decision, 2, expected_retry(2000, 0, first, at), 0);

        // W = 1 s, rate 0.5: C = floor(0.5) = 0. A count above the capacity waits a whole
        // window, and nothing is ever admitted or stored.
        let k3 = key("cap0");
        assert_eq!(inc(&rl, &k3, 0.5, 1).await, rejected_for_good(1, 0));
        assert!(!env.exists(&env.entity(&k3, "a")).await);
    })
}

#[test]
fn counts_greater_than_one() {
    rt::run(async {
        let mut env = Env::new().await;
        let rl = env.limiter(1, 1000).await;
        let k = key("count");
        // C = 10, one bucket.
        let (decision, first) = inc_at(&rl, &k, 10.0, 4).await;
        assert_allowed(decision);
        assert_allowed(inc(&rl, &k, 10.0, 4).await);
        let (decision, at) = inc_at(&rl, &k, 10.0, 3).await; // 8 + 3 > 10
        rejected_1s(decision, first, at, 0);
        assert_allowed(inc(&rl, &k, 10.0, 2).await); // exactly 10
        let (decision, at) = inc_at(&rl, &k, 10.0, 1).await;
        rejected_1s(decision, first, at, 0);
        // A zero count always fits, even in a full window.
        assert_allowed(inc(&rl, &k, 10.0, 0).await);

        // A fresh key: n = C is allowed, n = C + 1 is rejected.
        let exact = key("countexact");
        let (decision, first) = inc_at(&rl, &exact, 10.0, 10).await;
        assert_allowed(decision);
        let (decision, at) = inc_at(&rl, &exact, 10.0, 1).await;
        rejected_1s(decision, first, at, 0);

        // n > C is told to wait a whole window, with or without state, and creates none.
        let over = key("countover");
        assert_eq!(inc(&rl, &over, 10.0, 11).await, rejected_for_good(1, 0));
        assert!(!env.exists(&env.entity(&over, "a")).await);
        assert_allowed(inc(&rl, &over, 10.0, 10).await);
        assert_eq!(inc(&rl, &over, 10.0, 11).await, rejected_for_good(1, 0));

        // With two buckets [3, 4], n > C still waits a whole window; what is left after the
        // oldest bucket is 4.
        let rl50 = env.limiter(1, 50).await;
        let two = key("countover2");
        assert_allowed(inc(&rl50, &two, 10.0, 3).await);
        rt::sleep(Duration::from_millis(100)).await;
        assert_allowed(inc(&rl50, &two, 10.0, 4).await);
        assert_eq!(inc(&rl50, &two, 10.0, 11).await, rejected_for_good(1, 4));

        // A zero count on a fresh key is allowed and creates no state.
        let zero = key("countzero");
        assert_allowed(inc(&rl, &zero, 10.0, 0).await);
        assert!(!env.exists(&env.entity(&zero, "a")).await);
    })
}

#[test]
fn a_rejected_inc_records_nothing() {
    rt::run(async {
        let env = Env::new().await;
        let rl = env.limiter(1, 1000).await;
        let k = key("norecord");
        // C = 10, one bucket (G = 1 s).
        let (decision, first) = inc_at(&rl, &k, 10.0, 6).await;
        assert_allowed(decision);
        for _ in 0..20 {
            let (decision, at) = inc_at(&rl, &k, 10.0, 5).await;
            rejected_1s(decision, first, at, 0);
        }
        // Had any rejected call been counted, these 4 would not fit.
        assert_allowed(inc(&rl, &k, 10.0, 4).await);
        let (decision, at) = inc_at(&rl, &k, 10.0, 1).await;
        rejected_1s(decision, first, at, 0);
    })
}

// ---------------------------------------------------------------------------------------------
// Rejection hints and buckets
// ---------------------------------------------------------------------------------------------

#[test]
fn rejection_hints_with_two_buckets() {
    rt::run(async {
        let env = Env::new().await;
        let rl = env.limiter(1, 50).await;
        let k = key("hints");
        // C = 10: bucket one holds 3, bucket two (opened > G later) holds 7.
        let (decision, one) = inc_at(&rl, &k, 10.0, 3).await;
        assert_allowed(decision);
        rt::sleep(Duration::from_millis(150)).await;
        let (decision, two) = inc_at(&rl, &k, 10.0, 7).await;
        assert_allowed(decision);

        // in_window (10) minus the oldest bucket (3), which leaves 1001 ms after it opened.
        let (decision, at) = inc_at(&rl, &k, 10.0, 1).await;
        let retry = rejected_1s(decision, one, at, 7);
        // is_allowed gives the same hints.
        let (decision, checked) = timed(is_allowed(&rl, &k)).await;
        rejected_1s(decision, one, checked, 7);

        // Once retry_after_ms has passed, the oldest bucket is gone: exactly its 3 fit again.
        sleep_past(retry, at).await;
        assert_allowed(inc(&rl, &k, 10.0, 3).await);
        // Buckets [7, 3]: in_window 10 minus the oldest (7).
        let (decision, at) = inc_at(&rl, &k, 10.0, 1).await;
        rejected_1s(decision, two, at, 3);
    })
}

#[test]
fn buckets_leave_the_window_one_at_a_time() {
    rt::run(async {
        let env = Env::new().await;
        let rl = env.limiter(1, 50).await;
        let k = key("slide");
        // C = 10 in four buckets ~150 ms apart: [1, 2, 3, 4].
        let mut opened = Vec::new();
        for count in 1..=4 {
            if count > 1 {
                rt::sleep(Duration::from_millis(150)).await;
            }
            let (decision, span) = inc_at(&rl, &k, 10.0, count).await;
            assert_allowed(decision);
            opened.push(span);
        }
        let (decision, at) = inc_at(&rl, &k, 10.0, 1).await;
        let retry = rejected_1s(decision, opened[0], at, 9);
        // Each wait frees exactly the oldest bucket's count; new incs open buckets at the end.
        sleep_past(retry, at).await;
        // [2, 3, 4]: 9 + 2 > 10; the oldest is now the bucket of 2.
        let (decision, at) = inc_at(&rl, &k, 10.0, 2).await;
        rejected_1s(decision, opened[1], at, 7);
        assert_allowed(inc(&rl, &k, 10.0, 1).await); // buckets [2, 3, 4, 1]
        let (decision, at) = inc_at(&rl, &k, 10.0, 1).await;
        let retry = rejected_1s(decision, opened[1], at, 8);
        sleep_past(retry, at).await;
        // [3, 4, 1]: 8 + 3 > 10.
        let (decision, at) = inc_at(&rl, &k, 10.0, 3).await;
        rejected_1s(decision, opened[2], at, 5);
        assert_allowed(inc(&rl, &k, 10.0, 2).await); // buckets [3, 4, 1, 2]
        let (decision, at) = timed(is_allowed(&rl, &k)).await;
        rejected_1s(decision, opened[2], at, 7);
    })
}

#[test]
fn increments_less_than_g_apart_share_a_bucket() {
    rt::run(async {
        let env = Env::new().await;
        const G: Duration = Duration::from_millis(400);
        let rl = env.limiter(1, G.as_millis() as u64).await;

        // Two incs 50 ms apart join one bucket: waiting frees everything.
        let k = key("coalesce");
        let (decision, first) = inc_at(&rl, &k, 5.0, 2).await;
        assert_allowed(decision);
        rt::sleep(Duration::from_millis(50)).await;
        let (decision, second) = inc_at(&rl, &k, 5.0, 3).await;
        assert_allowed(decision);
        assert!(
            second.answered - first.sent < G,
            "the machine is too slow for this test: the second inc came {:?} after the first \
             (G = {G:?})",
            second.answered - first.sent
        );
        let (decision, at) = inc_at(&rl, &k, 5.0, 1).await;
        rejected_1s(decision, first, at, 0);

        // A bucket is joined while it *started* less than G ago: incs at 0 and ~50 ms share
        // one; one at ~500 ms (more than G after the bucket's start) opens another.
        let k = key("coalesce2");
        let (decision, first) = inc_at(&rl, &k, 5.0, 1).await;
        assert_allowed(decision);
        rt::sleep(Duration::from_millis(50)).await;
        let (decision, second) = inc_at(&rl, &k, 5.0, 1).await;
        assert_allowed(decision);
        assert!(
            second.answered - first.sent < G,
            "the machine is too slow for this test: the second inc came {:?} after the first \
             (G = {G:?})",
            second.answered - first.sent
        );
        rt::sleep(Duration::from_millis(450)).await;
        assert_allowed(inc(&rl, &k, 5.0, 3).await);
        // Buckets [2, 3]: in_window 5 minus the oldest (2).
        let (decision, at) = inc_at(&rl, &k, 5.0, 1).await;
        rejected_1s(decision, first, at, 3);
    })
}

#[test]
fn state_expires_after_the_window() {
    rt::run(async {
        let mut env = Env::new().await;
        // One bucket (G = W): it opened during the first inc.
        let rl = env.limiter(1, 1000).await;
        let k = key("expiry");
        let (decision, newest) = inc_at(&rl, &k, 3.0, 1).await;
        assert_allowed(decision);
        for _ in 0..2 {
            assert_allowed(inc(&rl, &k, 3.0, 1).await);
        }
        let (decision, at) = inc_at(&rl, &k, 3.0, 1).await;
        rejected_1s(decision, newest, at, 0);
        let name = env.entity(&k, "a");
        let gone = wait_until_gone(&env.admin, &name).await;
        assert_expired_with_the_window(gone, newest);
        assert!(!env.exists(&name).await);
        assert_allowed(is_allowed(&rl, &k).await);
        let (decision, first) = inc_at(&rl, &k, 3.0, 1).await;
        assert_allowed(decision);
        for _ in 0..2 {
            assert_allowed(inc(&rl, &k, 3.0, 1).await);
        }
        let (decision, at) = inc_at(&rl, &k, 3.0, 1).await;
        rejected_1s(decision, first, at, 0);
    })
}

#[test]
fn rate_is_sticky_until_the_state_expires() {
    rt::run(async {
        let env = Env::new().await;
        let rl = env.limiter(1, 1000).await;
        let k = key("sticky");
        // The first inc fixes C = 3; a later, larger rate does not raise it...
        let (decision, first) = inc_at(&rl, &k, 3.0, 1).await;
        assert_allowed(decision);
        assert_allowed(inc(&rl, &k, 100.0, 2).await);
        let (decision, at) = inc_at(&rl, &k, 100.0, 1).await;
        rejected_1s(decision, first, at, 0);
        let (decision, at) = inc_at(&rl, &k, 1000.0, 1).await;
        rejected_1s(decision, first, at, 0);

        // ...until the state has expired; then the next first inc fixes a new one (C = 100).
        let name = env.entity(&k, "a");
        wait_until_gone(&env.admin, &name).await;
        let (decision, first) = inc_at(&rl, &k, 100.0, 50).await;
        assert_allowed(decision);
        assert_allowed(inc(&rl, &k, 1.0, 50).await);
        let (decision, at) = inc_at(&rl, &k, 1.0, 1).await;
        rejected_1s(decision, first, at, 0);
    })
}

#[test]
fn is_allowed_reports_without_recording() {
    rt::run(async {
        let mut env = Env::new().await;
        let rl = env.limiter(1, 1000).await;
        let k = key("check");
        // No state: Allowed, and still no state.
        for _ in 0..5 {
            assert_allowed(is_allowed(&rl, &k).await);
        }
        assert!(!env.exists(&env.entity(&k, "a")).await);

        // Below capacity: Allowed, and checking takes nothing.
        let (decision, first) = inc_at(&rl, &k, 4.0, 3).await;
        assert_allowed(decision);
        for _ in 0..10 {
            assert_allowed(is_allowed(&rl, &k).await);
        }
        assert_allowed(inc(&rl, &k, 4.0, 1).await);

        // At capacity: Rejected with the same hints as inc.
        let (decision, at) = timed(is_allowed(&rl, &k)).await;
        rejected_1s(decision, first, at, 0);
        let (decision, at) = inc_at(&rl, &k, 4.0, 1).await;
        rejected_1s(decision, first, at, 0);
    })
}

// ---------------------------------------------------------------------------------------------
// Isolation and layout
// ---------------------------------------------------------------------------------------------

#[test]
fn absolute_and_suppressed_state_do_not_collide() {
    rt::run(async {
        let mut env = Env::new().await;
        let rl = env.limiter(1, 1000).await;
        let k = key("shared");
        let r = rate(5.0);
        let (decision, first) = inc_at(&rl, &k, 5.0, 1).await;
        assert_allowed(decision);
        for _ in 0..4 {
            assert_allowed(inc(&rl, &k, 5.0, 1).await);
        }
        let (decision, at) = inc_at(&rl, &k, 5.0, 1).await;
        rejected_1s(decision, first, at, 0);
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
        let (decision, at) = inc_at(&rl, &k, 5.0, 1).await;
        rejected_1s(decision, first, at, 0);

        assert_eq!(
            env.entities().await,
            BTreeSet::from([env.entity(&k, "a"), env.entity(&k, "s")]),
            "separate state per strategy"
        );
    })
}

#[test]
fn different_prefixes_do_not_collide() {
    rt::run(async {
        let mut env = Env::new().await;
        let other_prefix = unique("tabsother");
        let rl = env.limiter(1, 1000).await;
        let other = build_limiter(&other_prefix, 1, 1000).await;
        let k = key("prefixed");
        let (decision, first) = inc_at(&rl, &k, 3.0, 3).await;
        assert_allowed(decision);
        let (decision, at) = inc_at(&rl, &k, 3.0, 1).await;
        rejected_1s(decision, first, at, 0);
        let (decision, first) = inc_at(&other, &k, 3.0, 3).await;
        assert_allowed(decision);
        let (decision, at) = inc_at(&other, &k, 3.0, 1).await;
        rejected_1s(decision, first, at, 0);
        assert_eq!(env.entities().await, BTreeSet::from([env.entity(&k, "a")]));
        let other_keys = scan(&mut env.admin, &format!("{{{other_prefix}:*")).await;
        assert_eq!(
            other_keys,
            BTreeSet::from([format!("{{{other_prefix}:{}}}:a", k.as_str())])
        );
    })
}

#[test]
fn one_string_key_per_entity_hash_tagged_by_prefix_and_key() {
    rt::run(async {
        let mut env = Env::new().await;
        let rl = env.limiter(1, 20).await;
        let k = key("layout");
        // Several buckets each: they all live in the entity's one key.
        for _ in 0..4 {
            assert_allowed(inc(&rl, &k, 5.0, 1).await);
            let decision = rl.redis().suppressed().inc(&k, &rate(5.0), 1).await;
            assert_allowed(decision.unwrap());
            rt::sleep(Duration::from_millis(40)).await;
        }
        let prefix = env.prefix.clone();
        let (absolute, suppressed) = (
            format!("{{{prefix}:{}}}:a", k.as_str()),
            format!("{{{prefix}:{}}}:s", k.as_str()),
        );
        // Exactly `{prefix:key}:a` and `{prefix:key}:s`, both strings: no per-bucket keys.
        assert_eq!(
            env.keys().await,
            BTreeSet::from([absolute.clone(), suppressed.clone()])
        );
        for name in [&absolute, &suppressed] {
            let kind: String = redis::cmd("TYPE")
                .arg(name)
                .query_async(&mut env.admin)
                .await
                .expect("TYPE");
            assert_eq!(kind, "string", "{name}");
        }

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
            keys,
            BTreeSet::from([format!("{{trypema:{}}}:a", k.as_str())])
        );
    })
}

/// Keys may contain `:`, `{` and `}` (so `req.ip` or `user:123` work as they are), and keys
/// that differ in any byte never share state.
#[test]
fn keys_with_colons_and_braces_are_distinct_entities() {
    rt::run(async {
        let mut env = Env::new().await;
        let rl = env.limiter(1, 1000).await;
        let base = unique("k");
        let names = [
            base.clone(),
            format!("{base}:1"),
            format!("{base}:1:"),
            format!("{base}}}:a"),
            format!("{{{base}"),
            format!("::1:{base}"),
        ];
        let keys: Vec<RedisKey> = names
            .iter()
            .map(|name| RedisKey::new(name.as_str()).expect("a valid key"))
            .collect();
        // C = 2 each: every key takes exactly 2, whatever the others did.
        for k in &keys {
            assert_allowed(inc(&rl, k, 2.0, 2).await);
        }
        for k in &keys {
            assert_eq!(
                inc(&rl, k, 2.0, 3).await,
                rejected_for_good(1, 0),
                "{k}: 3 > C"
            );
            assert!(matches!(
                inc(&rl, k, 2.0, 1).await,
                RateLimitDecision::Rejected { .. }
            ));
        }
        let expected: BTreeSet<String> = keys.iter().map(|k| env.entity(k, "a")).collect();
        assert_eq!(expected.len(), keys.len());
        assert_eq!(env.keys().await, expected);
    })
}

#[test]
fn invalid_redis_keys_are_rejected() {
    let long = "x".repeat(256);
    for bad in ["", long.as_str()] {
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
    assert_eq!(
        RedisKey::try_from("é".repeat(127)).unwrap().as_str().len(),
        254
    );
    for good in [
        "user_123",
        "a:b",
        ":",
        "{",
        "}",
        "{x}",
        "127.0.0.1",
        "::1",
        " ",
    ] {
        assert_eq!(RedisKey::try_from(good).unwrap().as_str(), good);
    }
}

#[test]
#[should_panic]
fn redis_key_new_or_panic_panics_on_an_invalid_key() {
    let _ = RedisKey::new_or_panic("");
}

#[test]
fn invalid_prefixes_fail_the_build() {
    rt::run(async {
        let _env = Env::new().await;
        let long = "p".repeat(256);
        // Prefixes follow the key rules and, unlike keys, may not contain ':' (so the layout
        // `{<prefix>:<key>}` tells every prefix and key apart).
        for bad in ["a:b", ":", "", long.as_str()] {
            let builder = RateLimiter::builder(connection().await).redis_prefix(bad);
            match builder.validate() {
                Err(error @ TrypemaError::InvalidRedisPrefix(_)) => {
                    assert_eq!(error.code(), "TRYPEMA_INVALID_REDIS_PREFIX")
                }
                other => panic!("prefix {bad:?}: validate() gave {other:?}"),
            }
            match builder.build() {
                Err(error @ TrypemaError::InvalidRedisPrefix(_)) => {
                    assert_eq!(error.code(), "TRYPEMA_INVALID_REDIS_PREFIX")
                }
                Err(other) => panic!("prefix {bad:?}: expected InvalidRedisPrefix, got {other:?}"),
                Ok(_) => panic!("prefix {bad:?} must be rejected"),
            }
        }
        for good in ["p".repeat(255), "{p}".into(), "p.q-r".into()] {
            assert!(RateLimiter::builder(connection().await)
                .redis_prefix(good)
                .build()
                .is_ok());
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Expiry: every key has a TTL, and idle state leaves Redis by itself
// ---------------------------------------------------------------------------------------------

#[test]
fn every_written_key_has_a_ttl() {
    rt::run(async {
        let mut env = Env::new().await;
        let rl = env.limiter(1, 50).await;
        let k = key("ttl");
        // C = 6.
        let (decision, newest) = inc_at(&rl, &k, 6.0, 1).await;
        assert_allowed(decision);
        env.assert_ttls("the first inc", Some(newest)).await;
        assert_allowed(inc(&rl, &k, 6.0, 1).await);
        env.assert_ttls("an inc joining the bucket", None).await;
        let mut newest = newest;
        for opened in 2..=4 {
            rt::sleep(Duration::from_millis(80)).await;
            let (decision, span) = inc_at(&rl, &k, 6.0, 1).await;
            assert_allowed(decision);
            newest = span;
            env.assert_ttls(&format!("an inc opening bucket {opened}"), Some(newest))
                .await;
        }
        assert_allowed(inc(&rl, &k, 6.0, 1).await);
        assert!(matches!(
            inc(&rl, &k, 6.0, 1).await,
            RateLimitDecision::Rejected { .. }
        ));
        env.assert_ttls("a rejected inc", None).await;
        assert!(matches!(
            is_allowed(&rl, &k).await,
            RateLimitDecision::Rejected { .. }
        ));
        env.assert_ttls("is_allowed", None).await;
        // The TTL still ends one window after the newest bucket opened (the one of bucket
        // 4, or of the inc after it if that came more than G later).
        let since_last = Span {
            sent: newest.sent,
            answered: Instant::now(),
        };
        env.assert_ttls("everything", Some(since_last)).await;
    })
}

#[test]
fn idle_state_leaves_redis_without_a_sweeper() {
    rt::run(async {
        let mut env = Env::new().await;
        let rl = env.limiter(1, 20).await;
        let keys: Vec<RedisKey> = (0..20).map(|i| key(&format!("idle{i}x"))).collect();
        let mut last_write = Span::now();
        for round in 0..4 {
            for k in &keys {
                let sent = Instant::now();
                let _ = inc(&rl, k, 4.0, 1).await;
                let _ = rl.redis().suppressed().inc(k, &rate(2.0), 1).await.unwrap();
                last_write = Span {
                    sent,
                    answered: Instant::now(),
                };
            }
            if round < 3 {
                rt::sleep(Duration::from_millis(30)).await;
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
        env.assert_ttls("the writes", None).await;
        drop(rl);

        // Idle: nothing is left under this test's prefix once the newest bucket of the last
        // key written has left the window (1001 ms), within 100 ms of polling and scheduling.
        let deadline = last_write.answered + Duration::from_millis(1001 + 100);
        let admin = env.admin.clone();
        let prefix = env.prefix.clone();
        let took = wait_for(Duration::from_secs(3), || {
            let (mut admin, prefix) = (admin.clone(), prefix.clone());
            async move { scan(&mut admin, &format!("{{{prefix}:*")).await.is_empty() }
        })
        .await;
        let left = env.keys().await;
        assert!(
            took.is_some() && left.is_empty(),
            "keys left after expiry: {left:?}"
        );
        assert!(
            Instant::now() <= deadline + Duration::from_millis(50),
            "the keys left {:?} after the last write, more than a window",
            Instant::now() - last_write.answered
        );
    })
}

// ---------------------------------------------------------------------------------------------
// Round trips: one EVALSHA per call; EVAL once after SCRIPT FLUSH
// ---------------------------------------------------------------------------------------------

#[test]
fn each_call_is_one_evalsha() {
    rt::run(async {
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
    })
}

/// After `SCRIPT FLUSH` the first call's `EVALSHA` gets NOSCRIPT and that call is sent once
/// more as `EVAL` with the script's source (which caches it again); every later call is one
/// `EVALSHA`. No `SCRIPT LOAD`, and no call runs twice.
#[test]
fn eval_once_after_script_flush() {
    rt::run(async {
        let _exclusive = exclusive().await;
        let prefix = unique("tabsflush");
        let rl = build_limiter(&prefix, 1, 1000).await;
        let mut admin = connection().await;
        let admin_addr = client_addr(&mut admin).await;
        let k = key("flush");
        assert_allowed(inc(&rl, &k, 3.0, 1).await);

        let monitor = Monitor::start();
        let _: () = command(&mut admin, "SCRIPT", "FLUSH").await;
        reset_stats(&mut admin).await;
        assert_allowed(inc(&rl, &k, 3.0, 1).await);
        assert_allowed(inc(&rl, &k, 3.0, 1).await);
        assert!(matches!(
            inc(&rl, &k, 3.0, 1).await,
            RateLimitDecision::Rejected { .. }
        ));
        assert!(matches!(
            is_allowed(&rl, &k).await,
            RateLimitDecision::Rejected { .. }
        ));
        let seen = monitor.stop(&mut admin).await;
        let sent = client_commands(&seen, &admin_addr);
        assert_eq!(
            sent,
            ["evalsha", "eval", "evalsha", "evalsha", "evalsha"],
            "NOSCRIPT, then EVAL for that call only, then EVALSHA"
        );
        // Four scripts ran (the NOSCRIPT reply ran none): had the first call run twice, the
        // window would not have been full after the second.
        let scripts_ran = seen
            .iter()
            .filter(|seen| seen.source == "lua" && seen.command == "time")
            .count();
        assert_eq!(scripts_ran, 4, "{sent:?}");
        assert_eq!(
            support::command_calls(&mut admin, "script|load").await,
            None
        );
    })
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

#[test]
fn unreachable_redis_is_a_connection_error() {
    rt::run(async {
        // Connecting eagerly fails; a lazily connecting manager builds, but every call fails
        // with RedisConnection within the command timeout.
        let rl = unreachable_limiter().await;
        let k = key("unreachable");
        let (result, span) = timed(rl.redis().absolute().inc(&k, &rate(5.0), 1)).await;
        assert_within_command_timeout(span.took(), "inc on a closed port");
        connection_error_message(result);
        assert!(rl.is_redis_degraded(), "the circuit breaker opened");
        // The breaker is open: the next calls fail at once, as outages.
        let (result, span) = timed(rl.redis().absolute().is_allowed(&k)).await;
        assert_within_command_timeout(span.took(), "is_allowed on a closed port");
        connection_error_message(result);
        let (result, span) = timed(rl.redis().absolute().inc(&k, &rate(5.0), 1)).await;
        assert_within_command_timeout(span.took(), "a second inc on a closed port");
        connection_error_message(result);
    })
}

/// A server that takes the connection but never answers: the call fails with RedisTimeout
/// (naming the configured timeout) within the command timeout, not the connection manager's
/// own (longer) timeouts.
#[test]
fn a_silent_redis_times_out_within_the_command_timeout() {
    rt::run(async {
        let server = SilentServer::start();
        let client = redis::Client::open(server.url()).unwrap();
        let patient = redis::aio::ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_connection_timeout(Some(Duration::from_secs(30)))
            .set_response_timeout(Some(Duration::from_secs(30)));
        let lazy = client.get_connection_manager_lazy(patient).unwrap();
        let rl = RateLimiter::builder(lazy)
            .window_size_seconds(1)
            .command_timeout_ms(COMMAND_TIMEOUT_MS)
            .build()
            .unwrap();
        let k = key("silent");
        let (result, span) = timed(rl.redis().absolute().inc(&k, &rate(5.0), 1)).await;
        assert_within_command_timeout(span.took(), "inc on a silent server");
        assert!(
            span.took() >= Duration::from_millis(COMMAND_TIMEOUT_MS),
            "gave up after {:?}, before the command timeout",
            span.took()
        );
        match result {
            Err(error @ TrypemaError::RedisTimeout(ms)) => {
                assert_eq!(ms, COMMAND_TIMEOUT_MS);
                assert_eq!(error.code(), "TRYPEMA_REDIS_TIMEOUT");
                assert!(error.is_outage());
            }
            other => panic!("expected RedisTimeout({COMMAND_TIMEOUT_MS}), got {other:?}"),
        }
        assert!(rl.is_redis_degraded());
        // Open breaker: the next call fails at once.
        let (result, span) = timed(rl.redis().absolute().inc(&k, &rate(5.0), 1)).await;
        assert!(
            span.took() < Duration::from_millis(COMMAND_TIMEOUT_MS),
            "took {:?} with the circuit open",
            span.took()
        );
        connection_error_message(result);
    })
}

// ---------------------------------------------------------------------------------------------
// Exactness under concurrency
// ---------------------------------------------------------------------------------------------

#[test]
fn concurrent_instances_admit_exactly_capacity() {
    rt::run(async {
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
                tasks.push(rt::spawn(async move {
                    while attempts.fetch_add(1, Ordering::Relaxed) < ATTEMPTS {
                        // W = 10 s, rate 50: C = 500.
                        match rl.redis().absolute().inc(&k, &rate(50.0), 1).await.unwrap() {
                            RateLimitDecision::Allowed => {
                                allowed.fetch_add(1, Ordering::Relaxed);
                            }
                            // The run takes well under a window: the oldest bucket leaves
                            // between 1 ms and 10 001 ms from now.
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
            task.await;
        }
        assert_eq!(allowed.load(Ordering::Relaxed), 500, "exactly C admitted");
        assert_eq!(rejections.load(Ordering::Relaxed), ATTEMPTS - 500);
    })
}

/// The suites run on the runtime of the enabled feature, and redis-rs (compiled with both
/// runtimes here, since the tests' own connections ask for tokio) follows it: with
/// `redis-smol` no tokio runtime is ever current, so its connections run on smol.
#[test]
fn the_suites_run_on_the_features_runtime() {
    rt::run(async {
        let on_tokio = tokio::runtime::Handle::try_current().is_ok();
        assert_eq!(on_tokio, cfg!(feature = "redis-tokio"));
        let rl = build_limiter(&unique("tabsrt"), 1, 1000).await;
        let k = key("rt");
        assert_allowed(inc(&rl, &k, 1.0, 1).await);
        // From a task the runtime runs, too.
        let on_tokio_in_task = rt::spawn(async move {
            let on_tokio = tokio::runtime::Handle::try_current().is_ok();
            assert!(matches!(
                rl.redis().absolute().inc(&k, &rate(1.0), 1).await.unwrap(),
                RateLimitDecision::Rejected { .. }
            ));
            on_tokio
        })
        .await;
        assert_eq!(on_tokio_in_task, cfg!(feature = "redis-tokio"));
    })
}

/// `build_verified()` checks the connection, the credentials and the permission to run every
/// command the scripts use: a user who may not run scripts gets `RedisAuth`, so does a wrong
/// password, and a user with the permissions gets a working limiter.
#[test]
fn build_verified_reports_missing_permissions_as_redis_auth() {
    rt::run(async {
        let mut env = Env::new().await;
        let user = unique("trypema-test-user-");
        let password = unique("pw");
        let acl = |rules: &[&str]| {
            let mut command = redis::cmd("ACL");
            command.arg("SETUSER").arg(&user).arg("reset").arg("on");
            command.arg(format!(">{password}"));
            for rule in rules {
                command.arg(*rule);
            }
            command
        };
        let url = |password: &str| {
            let base = support::redis_url();
            let rest = base
                .strip_prefix("redis://")
                .expect("a redis:// TRYPEMA_TEST_REDIS_URL");
            format!("redis://{user}:{password}@{rest}")
        };
        let build = |url: String, prefix: String| async move {
            let client = redis::Client::open(url).unwrap();
            let lazy = client
                .get_connection_manager_lazy(support::fail_fast_config())
                .unwrap();
            RateLimiter::builder(lazy)
                .window_size_seconds(1)
                .redis_prefix(prefix)
                .command_timeout_ms(COMMAND_TIMEOUT_MS)
                .build_verified()
                .await
        };
        // May connect and PING, but not run scripts.
        let _: () = acl(&["~*", "+ping", "+hello", "+client"])
            .query_async(&mut env.admin)
            .await
            .expect("ACL SETUSER");
        match build(url(&password), env.prefix.clone()).await {
            Err(error @ TrypemaError::RedisAuth(_)) => {
                assert_eq!(error.code(), "TRYPEMA_REDIS_AUTH");
                assert!(
                    !error.to_string().contains(&password),
                    "the message shows the password: {error}"
                );
            }
            Err(other) => panic!("expected RedisAuth, got {other:?}"),
            Ok(_) => panic!("a user who may not run scripts was verified"),
        }
        // A wrong password.
        match build(url("not-the-password"), env.prefix.clone()).await {
            Err(error @ TrypemaError::RedisAuth(_)) => {
                assert_eq!(error.code(), "TRYPEMA_REDIS_AUTH")
            }
            Err(other) => panic!("expected RedisAuth for a wrong password, got {other:?}"),
            Ok(_) => panic!("a wrong password was verified"),
        }
        // Every permission the scripts and the limiter need.
        let _: () = acl(&["~*", "+@all"])
            .query_async(&mut env.admin)
            .await
            .expect("ACL SETUSER");
        let rl = build(url(&password), env.prefix.clone())
            .await
            .expect("a user with every permission is verified");
        let k = key("verified");
        assert_allowed(inc(&rl, &k, 1.0, 1).await);
        let _: i64 = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(&user)
            .query_async(&mut env.admin)
            .await
            .expect("ACL DELUSER");
        // The probe left nothing behind.
        assert_eq!(env.keys().await, BTreeSet::from([env.entity(&k, "a")]));
    })
}
