//! `cargo bench -p trypema --features redis-tokio --bench redis_throughput` (or `redis-smol`):
//! calls per second of the `redis` and `hybrid` providers' `inc` (absolute, then suppressed)
//! from 256 tasks sharing one `RateLimiter` over 1000 keys, on the runtime the feature selects,
//! with a rate so high that every call is allowed, plus the `EVALSHA`s per call and the Redis
//! server's own time per `EVALSHA` from `INFO commandstats`.
//!
//! Redis: `TRYPEMA_BENCH_REDIS_URL`, else `TRYPEMA_TEST_REDIS_URL`. The server's command
//! statistics count every client, so run it against a Redis nothing else is using.

/// The runtime the feature selects (tokio, or smol's global executor): the test suites' own.
#[cfg(trypema_redis)]
#[path = "../tests/support/rt.rs"]
#[allow(dead_code)]
mod rt;

#[cfg(trypema_redis)]
mod bench {
    use std::{
        sync::{
            atomic::{AtomicU64, Ordering},
            Arc,
        },
        time::{Duration, Instant},
    };

    use redis::aio::ConnectionManager;
    use trypema::{redis::RedisKey, RateLimit, RateLimitDecision, RateLimiter};

    use super::rt;

    const TASKS: usize = 256;
    const KEYS: usize = 1000;
    const RUN_FOR: Duration = Duration::from_secs(3);
    /// High enough that neither strategy ever rejects or suppresses.
    const RATE: f64 = 1.0e9;

    #[derive(Clone, Copy, PartialEq)]
    enum Provider {
        Redis,
        Hybrid,
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Strategy {
        Absolute,
        Suppressed,
    }

    impl Strategy {
        fn name(self) -> &'static str {
            match self {
                Self::Absolute => "absolute inc",
                Self::Suppressed => "suppressed inc",
            }
        }
    }

    /// `(calls, usec)` of `cmdstat_evalsha`, or zeros if Redis has not run it yet.
    async fn evalsha_stats(admin: &mut ConnectionManager) -> (u64, u64) {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(admin)
            .await
            .expect("INFO commandstats");
        let Some(line) = info
            .lines()
            .find_map(|line| line.strip_prefix("cmdstat_evalsha:"))
        else {
            return (0, 0);
        };
        let field = |name: &str| {
            line.trim()
                .split(',')
                .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
                .and_then(|value| value.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
        };
        (field("calls"), field("usec"))
    }

    async fn one_call(
        rl: &RateLimiter,
        provider: Provider,
        strategy: Strategy,
        key: &RedisKey,
        rate: &RateLimit,
    ) -> bool {
        let decision = match (provider, strategy) {
            (Provider::Redis, Strategy::Absolute) => rl.redis().absolute().inc(key, rate, 1).await,
            (Provider::Redis, Strategy::Suppressed) => {
                rl.redis().suppressed().inc(key, rate, 1).await
            }
            (Provider::Hybrid, Strategy::Absolute) => {
                rl.hybrid().absolute().inc(key, rate, 1).await
            }
            (Provider::Hybrid, Strategy::Suppressed) => {
                rl.hybrid().suppressed().inc(key, rate, 1).await
            }
        };
        matches!(
            decision.expect("redis call failed"),
            RateLimitDecision::Allowed
        )
    }

    struct Row {
        provider: Provider,
        strategy: Strategy,
        calls: u64,
        ops_per_sec: f64,
        evalsha_calls: u64,
        usec_per_call: f64,
    }

    async fn measure(
        rl: &Arc<RateLimiter>,
        keys: &Arc<Vec<RedisKey>>,
        admin: &mut ConnectionManager,
        provider: Provider,
        strategy: Strategy,
    ) -> Row {
        let rate = RateLimit::try_from(RATE).expect("valid rate");
        // Warm up: every key has its state and the script is loaded before timing starts.
        for key in keys.iter() {
            assert!(one_call(rl, provider, strategy, key, &rate).await);
        }
        if provider == Provider::Hybrid {
            // A second of traffic sizes every key's lease to its demand.
            run_calls(rl, keys, provider, strategy, &rate, Duration::from_secs(1)).await;
        }
        let (calls_before, usec_before) = evalsha_stats(admin).await;
        let started = Instant::now();
        let (calls, not_allowed) = run_calls(rl, keys, provider, strategy, &rate, RUN_FOR).await;
        let elapsed = started.elapsed().as_secs_f64();
        let (calls_after, usec_after) = evalsha_stats(admin).await;
        assert_eq!(not_allowed, 0, "every call should be allowed at this rate");
        let evalsha_calls = calls_after.saturating_sub(calls_before);
        Row {
            provider,
            strategy,
            calls,
            ops_per_sec: calls as f64 / elapsed,
            evalsha_calls,
            usec_per_call: usec_after.saturating_sub(usec_before) as f64
                / evalsha_calls.max(1) as f64,
        }
    }

    /// `TASKS` tasks calling for `run_for`; returns (calls, calls not allowed).
    async fn run_calls(
        rl: &Arc<RateLimiter>,
        keys: &Arc<Vec<RedisKey>>,
        provider: Provider,
        strategy: Strategy,
        rate: &RateLimit,
        run_for: Duration,
    ) -> (u64, u64) {
        let calls = Arc::new(AtomicU64::new(0));
        let not_allowed = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + run_for;
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let (rl, keys, calls, not_allowed) =
                    (rl.clone(), keys.clone(), calls.clone(), not_allowed.clone());
                let rate = *rate;
                rt::spawn(async move {
                    let mut i = task * 7919;
                    let mut done = 0u64;
                    while Instant::now() < deadline {
                        if !one_call(&rl, provider, strategy, &keys[i % KEYS], &rate).await {
                            not_allowed.fetch_add(1, Ordering::Relaxed);
                        }
                        i += 1;
                        done += 1;
                        // Hybrid calls complete without awaiting I/O, so let the other tasks (and
                        // the sync task) run now and then, as any request handler would.
                        if done.is_multiple_of(64) {
                            rt::yield_now().await;
                        }
                    }
                    calls.fetch_add(done, Ordering::Relaxed);
                })
            })
            .collect();
        for task in tasks {
            task.await;
        }
        (
            calls.load(Ordering::Relaxed),
            not_allowed.load(Ordering::Relaxed),
        )
    }

    pub fn main() {
        // `cargo bench` passes `--bench`; anything else (e.g. `cargo test --benches`) only checks
        // that the benchmark builds.
        if !std::env::args().any(|arg| arg == "--bench") {
            println!("redis_throughput: run with `cargo bench -p trypema --features redis-tokio --bench redis_throughput`");
            return;
        }
        let url = std::env::var("TRYPEMA_BENCH_REDIS_URL")
            .or_else(|_| std::env::var("TRYPEMA_TEST_REDIS_URL"))
            .expect("set TRYPEMA_BENCH_REDIS_URL (or TRYPEMA_TEST_REDIS_URL) to a redis:// URL");
        let rows = rt::run(async {
            let client = redis::Client::open(url.as_str()).expect("valid redis URL");
            let connection = client
                .get_connection_manager()
                .await
                .expect("connect to redis");
            let mut admin = redis::Client::open(url.as_str())
                .expect("valid redis URL")
                .get_connection_manager()
                .await
                .expect("connect to redis");
            let prefix = format!("bench{:016x}", rand::random::<u64>());
            let rl = Arc::new(
                RateLimiter::builder(connection)
                    .window_size_seconds(10)
                    .rate_group_size_ms(100)
                    .redis_prefix(prefix)
                    .build()
                    .expect("valid settings"),
            );
            let keys: Arc<Vec<RedisKey>> = Arc::new(
                (0..KEYS)
                    .map(|i| RedisKey::try_from(format!("user_{i}")).expect("valid key"))
                    .collect(),
            );
            let mut rows = Vec::new();
            for provider in [Provider::Redis, Provider::Hybrid] {
                for strategy in [Strategy::Absolute, Strategy::Suppressed] {
                    rows.push(measure(&rl, &keys, &mut admin, provider, strategy).await);
                }
            }
            rows
        });

        println!(
            "redis and hybrid providers on {}: {TASKS} tasks sharing one RateLimiter, {KEYS} keys, {} s per row, all allowed",
            if cfg!(feature = "redis-smol") { "smol" } else { "tokio" },
            RUN_FOR.as_secs()
        );
        println!(
            "{:<26} {:>10} {:>12} {:>14} {:>16} {:>16}",
            "call", "calls", "ops/s", "evalsha calls", "evalsha per call", "redis µs/evalsha"
        );
        for row in &rows {
            let provider = match row.provider {
                Provider::Redis => "redis",
                Provider::Hybrid => "hybrid",
            };
            println!(
                "{:<26} {:>10} {:>12.0} {:>14} {:>16.5} {:>16.2}",
                format!("{provider} {}", row.strategy.name()),
                row.calls,
                row.ops_per_sec,
                row.evalsha_calls,
                row.evalsha_calls as f64 / row.calls.max(1) as f64,
                row.usec_per_call
            );
        }
    }
}

fn main() {
    #[cfg(trypema_redis)]
    bench::main();
    #[cfg(not(trypema_redis))]
    println!("redis_throughput needs `--features redis-tokio` or `--features redis-smol`");
}
