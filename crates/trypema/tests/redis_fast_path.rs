//! The Lua scripts answer the common calls (an increment that joins the newest bucket with
//! nothing to evict) from the entity's header alone, and every call with the window code. The
//! two must agree exactly. This runs random calls of every mode through the real script and
//! through the same script with its fast path removed, on two keys that see the same server
//! time, and compares every reply, the stored bytes and the expiry.
#![cfg(trypema_redis)]

mod support;

use rand::{rngs::SmallRng, Rng, SeedableRng};
use redis::{aio::ConnectionManager, Value};
use support::{connection, rt, unique};

const WINDOW: &str = include_str!("../src/redis/window.lua");
const ABSOLUTE: &str = include_str!("../src/redis/absolute.lua");
const SUPPRESSED: &str = include_str!("../src/redis/suppressed.lua");

/// The line that opens each strategy's fast path, and the one that starts the window code.
const FAST_PATH: &str = "if (mode == INC or mode == INC_QUOTA) and count > 0 then\n";
const WINDOW_CODE: &str = "local Window = window_library()\n";

/// The script as shipped, counting the calls the fast path did not answer in `slow_calls`, and
/// the script without a fast path.
fn variants(strategy: &str, slow_calls: &str) -> (String, String) {
    assert_eq!(strategy.matches(FAST_PATH).count(), 1);
    assert_eq!(strategy.matches(WINDOW_CODE).count(), 1);
    let counted = strategy.replace(
        WINDOW_CODE,
        &format!("redis.call('INCR', '{slow_calls}')\n{WINDOW_CODE}"),
    );
    let slow = strategy.replace(FAST_PATH, "if false then\n");
    (format!("{WINDOW}{counted}"), format!("{WINDOW}{slow}"))
}

fn pack(values: &[f64]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect()
}

async fn server_ms(redis: &mut ConnectionManager) -> f64 {
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(redis).await.unwrap();
    (seconds * 1000 + micros / 1000) as f64
}

/// Runs `script` on `key` at virtual server time `now` (`None`: the real one), and reads back
/// the stored bytes and expiry, all in one transaction: the script sets an expiry by virtual
/// time that real time would reach, maybe between two steps or between the two keys' calls, so
/// the key is made persistent in the same transaction, before Redis can expire it.
async fn step(
    redis: &mut ConnectionManager,
    script: &str,
    key: &str,
    now: Option<f64>,
    args: &[f64],
) -> (Value, Option<Vec<u8>>, i64) {
    let mut pipe = redis::pipe();
    pipe.atomic();
    if let Some(now) = now {
        pipe.cmd("SETRANGE")
            .arg(key)
            .arg(8)
            .arg(now.to_le_bytes().as_slice())
            .ignore();
    }
    pipe.cmd("EVAL").arg(script).arg(1).arg(key).arg(pack(args));
    pipe.get(key).pttl(key).cmd("PERSIST").arg(key).ignore();
    pipe.query_async(redis)
        .await
        .unwrap_or_else(|error| panic!("script on {key} with {args:?}: {error:?}"))
}

/// The doubles of a packed reply (lease replies name the lease's start and the epoch).
fn doubles(reply: &Value) -> Vec<f64> {
    match reply {
        Value::BulkString(bytes) => bytes
            .chunks_exact(8)
            .map(|chunk| f64::from_le_bytes(chunk.try_into().unwrap()))
            .collect(),
        _ => Vec::new(),
    }
}

/// One entity's settings and what a random call of each mode looks like.
struct Case {
    window_ms: f64,
    group_ms: f64,
    param: f64,
    suppressed: bool,
    hard_limit_factor: f64,
    cache_ms: f64,
}

impl Case {
    fn random(rng: &mut SmallRng, suppressed: bool) -> Self {
        let window_ms = rng.random_range(2..=6) as f64 * 1000.0;
        Self {
            window_ms,
            group_ms: [1.0, 10.0, 50.0, 300.0][rng.random_range(0..4)],
            // Capacities from 1 to 100 (a suppressed rate of `param` per second over the window).
            param: if suppressed {
                rng.random_range(1..=100) as f64 / (window_ms / 1000.0)
            } else {
                rng.random_range(1..=100) as f64
            },
            suppressed,
            hard_limit_factor: [1.0, 1.25, 2.0][rng.random_range(0..3)],
            cache_ms: [0.0, 50.0, 500.0][rng.random_range(0..3)],
        }
    }

    fn capacity(&self) -> f64 {
        if self.suppressed {
            self.param * self.window_ms / 1000.0
        } else {
            self.param
        }
    }

    /// Mostly increments (the fast path's calls), and every other mode.
    fn call(&self, rng: &mut SmallRng, last_lease: Option<(f64, f64, f64)>) -> Vec<f64> {
        let capacity = self.capacity();
        let mode = match rng.random_range(0..20) {
            0..=9 => 1.0,
            10..=12 => 6.0,
            13 => 2.0,
            14 => 4.0,
            15 | 16 => 5.0,
            _ => 3.0,
        };
        let count = match rng.random_range(0..10) {
            0 => 0.0,
            1 => (capacity + rng.random_range(1..5) as f64).floor(),
            _ => rng.random_range(1..=(capacity / 4.0).max(1.0) as u64) as f64,
        };
        let mut args = vec![mode, self.window_ms, self.group_ms, self.param, count, 7.0];
        if self.suppressed {
            args.extend([self.hard_limit_factor, rng.random::<f64>(), self.cache_ms]);
        }
        if mode == 3.0 {
            let need = rng.random_range(0..=(capacity / 4.0).max(1.0) as u64) as f64;
            args.extend([
                rng.random_range(0..500) as f64,
                need.min(1.0),
                need,
                need / 2.0,
            ]);
            if self.suppressed {
                let observed = rng.random_range(0..10) as f64;
                args.extend([observed, (observed / 3.0).floor()]);
            }
            let (start, epoch, granted) = last_lease.unwrap_or_default();
            let given_back = if granted > 0.0 {
                rng.random_range(0..=granted as u64)
            } else {
                0
            };
            args.extend([start, epoch, given_back as f64, 0.0, 0.0, 0.0]);
        }
        args
    }
}

async fn compare(strategy: &str, suppressed: bool, seed: u64) -> (u64, u64) {
    let mut redis = connection().await;
    let slow_calls = unique("fast-path-misses");
    let (fast, slow) = variants(strategy, &slow_calls);
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut calls = 0;
    for _ in 0..8 {
        let case = Case::random(&mut rng, suppressed);
        let tag = unique("fast-path");
        let (a, b) = (format!("{{{tag}}}:fast"), format!("{{{tag}}}:slow"));
        // Virtual server time, set as both entities' clocks before each call so that both
        // scripts run at the same `now` (a script takes the later of TIME and the clock, and
        // the virtual time runs ahead of the real one).
        let mut now = server_ms(&mut redis).await + 2000.0;
        let mut last_lease = None;
        for index in 0..400 {
            let args = case.call(&mut rng, last_lease);
            let exists: bool = redis::cmd("EXISTS")
                .arg(&a)
                .query_async(&mut redis)
                .await
                .unwrap();
            if !exists {
                // A new entity starts at the real server time: create it once and copy it.
                now = server_ms(&mut redis).await + 2000.0;
                step(&mut redis, &slow, &a, None, &args).await;
                let _: Value = redis::cmd("COPY")
                    .arg(&a)
                    .arg(&b)
                    .arg("REPLACE")
                    .query_async(&mut redis)
                    .await
                    .unwrap();
                continue;
            }
            now += match rng.random_range(0..10) {
                0..=4 => rng.random_range(0.0..case.group_ms),
                5..=7 => rng.random_range(0.0..case.window_ms / 4.0).floor(),
                8 => 0.0,
                _ => rng.random_range(0.0..case.window_ms * 1.5).floor(),
            }
            .floor();
            let (fast_reply, stored_a, ttl_a) = step(&mut redis, &fast, &a, Some(now), &args).await;
            let (slow_reply, stored_b, ttl_b) = step(&mut redis, &slow, &b, Some(now), &args).await;
            calls += 1;
            let context = || format!("seed {seed}, step {index}, args {args:?}");
            assert_eq!(fast_reply, slow_reply, "replies differ: {}", context());
            assert_eq!(stored_a, stored_b, "stored state differs: {}", context());
            assert!(
                (ttl_a - ttl_b).abs() <= 50,
                "expiry {ttl_a} vs {ttl_b}: {}",
                context()
            );
            if args[0] == 3.0 {
                let reply = doubles(&fast_reply);
                last_lease = Some((reply[1], reply[2], reply[0]));
            }
        }
        let _: Value = redis::cmd("DEL")
            .arg(&a)
            .arg(&b)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
    let missed: Option<u64> = redis::cmd("GET")
        .arg(&slow_calls)
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: Value = redis::cmd("DEL")
        .arg(&slow_calls)
        .query_async(&mut redis)
        .await
        .unwrap();
    (calls - missed.unwrap_or(0), calls)
}

/// The fast path must answer a good share of the calls, or the comparison proves little.
fn assert_exercised(strategy: &str, (answered, calls): (u64, u64)) {
    eprintln!("{strategy}: fast path answered {answered} of {calls} compared calls");
    assert!(
        answered * 5 >= calls,
        "{strategy}: only {answered} of {calls} on the fast path"
    );
}

#[test]
fn absolute_fast_path_answers_as_the_window_code_does() {
    rt::run(async {
        let _server = support::shared().await;
        let mut total = (0, 0);
        for seed in 1..=3 {
            let (answered, calls) = compare(ABSOLUTE, false, seed).await;
            total = (total.0 + answered, total.1 + calls);
        }
        assert_exercised("absolute", total);
    });
}

#[test]
fn suppressed_fast_path_answers_as_the_window_code_does() {
    rt::run(async {
        let _server = support::shared().await;
        let mut total = (0, 0);
        for seed in 1..=3 {
            let (answered, calls) = compare(SUPPRESSED, true, seed).await;
            total = (total.0 + answered, total.1 + calls);
        }
        assert_exercised("suppressed", total);
    });
}
