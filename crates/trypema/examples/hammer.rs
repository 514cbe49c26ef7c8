//! Load generator for the cross-process tests: one process, `concurrency` tasks, each calling
//! the absolute strategy's `inc(key, rate, 1)` in a loop for `duration_ms`. Runs on the
//! runtime of the crate's Redis feature: tokio with `redis-tokio`, smol with `redis-smol`.
//!
//! ```text
//! hammer <redis_url> <provider: redis|hybrid> <prefix> <key> <rate> <window_seconds> <duration_ms> <concurrency>
//! ```
//!
//! Once connected it prints `ready` on stderr and waits for a line on stdin (so that several
//! processes can be released at the same moment); if stdin is closed or empty it starts at
//! once. At the end it prints one JSON line on stdout:
//! `{"allowed": N, "rejected": M, "errors": E, "allowed_at_ms": [...]}`, the timestamps being
//! the wall-clock time (ms since the Unix epoch, with µs decimals) at which each `Allowed`
//! came back.
//!
//! `cargo run -p trypema --features redis-tokio --example hammer -- redis://127.0.0.1:6379/ hybrid demo k 300 1 3000 64 < /dev/null`
//! (or `--features redis-smol`).

#[cfg(not(trypema_redis))]
fn main() -> std::process::ExitCode {
    eprintln!("hammer: build it with `--features redis-tokio` or `--features redis-smol`");
    std::process::ExitCode::from(2)
}

#[cfg(trypema_redis)]
fn main() -> std::process::ExitCode {
    hammer::main()
}

/// The little the hammer needs from an async runtime.
#[cfg(feature = "redis-tokio")]
mod rt {
    use std::future::Future;

    pub fn block_on<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
            .block_on(future)
    }

    pub fn spawn<T: Send + 'static>(
        task: impl Future<Output = T> + Send + 'static,
    ) -> impl Future<Output = T> {
        let handle = tokio::spawn(task);
        async move { handle.await.expect("hammer task panicked") }
    }

    pub async fn yield_now() {
        tokio::task::yield_now().await
    }

    pub async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
        tokio::task::spawn_blocking(work)
            .await
            .expect("blocking work panicked")
    }
}

#[cfg(feature = "redis-smol")]
mod rt {
    use std::future::Future;

    pub fn block_on<F: Future>(future: F) -> F::Output {
        smol::block_on(future)
    }

    pub fn spawn<T: Send + 'static>(
        task: impl Future<Output = T> + Send + 'static,
    ) -> impl Future<Output = T> {
        smol::spawn(task)
    }

    pub async fn yield_now() {
        smol::future::yield_now().await
    }

    pub async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
        smol::unblock(work).await
    }
}

#[cfg(trypema_redis)]
mod hammer {
    use std::{
        fmt::Write as _,
        io::BufRead,
        process::ExitCode,
        sync::Arc,
        time::{Duration, Instant, SystemTime, UNIX_EPOCH},
    };

    use trypema::{redis::RedisKey, RateLimit, RateLimitDecision, RateLimiter};

    use super::rt;

    const USAGE: &str = "usage: hammer <redis_url> <provider: redis|hybrid> <prefix> <key> <rate> \
                     <window_seconds> <duration_ms> <concurrency>";

    #[derive(Clone, Copy)]
    enum Provider {
        Redis,
        Hybrid,
    }

    struct Args {
        url: String,
        provider: Provider,
        prefix: String,
        key: RedisKey,
        rate: RateLimit,
        window_seconds: u64,
        duration: Duration,
        concurrency: usize,
    }

    fn parse_args() -> Result<Args, String> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let [url, provider, prefix, key, rate, window, duration, concurrency] = args.as_slice()
        else {
            return Err(format!("expected 8 arguments, got {}", args.len()));
        };
        let provider = match provider.as_str() {
            "redis" => Provider::Redis,
            "hybrid" => Provider::Hybrid,
            other => return Err(format!("unknown provider {other:?}: use redis or hybrid")),
        };
        let number = |name: &str, text: &str| -> Result<u64, String> {
            text.parse()
                .map_err(|error| format!("invalid {name} {text:?}: {error}"))
        };
        let rate: f64 = rate
            .parse()
            .map_err(|error| format!("invalid rate {rate:?}: {error}"))?;
        let concurrency = number("concurrency", concurrency)? as usize;
        if concurrency == 0 {
            return Err("concurrency must be at least 1".into());
        }
        Ok(Args {
            url: url.clone(),
            provider,
            prefix: prefix.clone(),
            key: RedisKey::new(key.as_str()).map_err(|error| error.to_string())?,
            rate: RateLimit::new(rate).map_err(|error| error.to_string())?,
            window_seconds: number("window_seconds", window)?,
            duration: Duration::from_millis(number("duration_ms", duration)?),
            concurrency,
        })
    }

    /// Wall-clock time in ms since the Unix epoch, shared by every process on the machine.
    fn epoch_ms() -> f64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs_f64()
            * 1000.0
    }

    #[derive(Default)]
    struct Tally {
        allowed_at_ms: Vec<f64>,
        rejected: u64,
        errors: u64,
    }

    async fn hammer(
        rl: Arc<RateLimiter>,
        provider: Provider,
        key: Arc<RedisKey>,
        rate: RateLimit,
        deadline: Instant,
    ) -> Tally {
        let mut tally = Tally::default();
        while Instant::now() < deadline {
            let decision = match provider {
                Provider::Redis => rl.redis().absolute().inc(&key, &rate, 1).await,
                Provider::Hybrid => rl.hybrid().absolute().inc(&key, &rate, 1).await,
            };
            match decision {
                Ok(RateLimitDecision::Allowed) => tally.allowed_at_ms.push(epoch_ms()),
                Ok(_) => tally.rejected += 1,
                Err(error) => {
                    if tally.errors == 0 {
                        eprintln!("hammer: {error} ({})", error.code());
                    }
                    tally.errors += 1;
                }
            }
            rt::yield_now().await;
        }
        tally
    }

    pub fn main() -> ExitCode {
        rt::block_on(run())
    }

    async fn run() -> ExitCode {
        let args = match parse_args() {
            Ok(args) => args,
            Err(message) => {
                eprintln!("hammer: {message}\n{USAGE}");
                return ExitCode::from(2);
            }
        };
        let connection = match redis::Client::open(args.url.as_str()) {
            Ok(client) => client.get_connection_manager().await,
            Err(error) => Err(error),
        };
        let connection = match connection {
            Ok(connection) => connection,
            Err(error) => {
                eprintln!("hammer: cannot connect to {}: {error}", args.url);
                return ExitCode::from(1);
            }
        };
        let rl = match RateLimiter::builder(connection)
            .redis_prefix(args.prefix.as_str())
            .window_size_seconds(args.window_seconds)
            .build()
        {
            Ok(rl) => Arc::new(rl),
            Err(error) => {
                eprintln!("hammer: {error}");
                return ExitCode::from(2);
            }
        };

        eprintln!("ready");
        // Any line (or end of input) releases the run.
        rt::blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
        })
        .await;

        let deadline = Instant::now() + args.duration;
        let key = Arc::new(args.key);
        let tasks: Vec<_> = (0..args.concurrency)
            .map(|_| {
                rt::spawn(hammer(
                    rl.clone(),
                    args.provider,
                    key.clone(),
                    args.rate,
                    deadline,
                ))
            })
            .collect();
        let mut total = Tally::default();
        for task in tasks {
            let tally = task.await;
            total.allowed_at_ms.extend(tally.allowed_at_ms);
            total.rejected += tally.rejected;
            total.errors += tally.errors;
        }
        total.allowed_at_ms.sort_by(f64::total_cmp);

        let mut line = format!(
            "{{\"allowed\": {}, \"rejected\": {}, \"errors\": {}, \"allowed_at_ms\": [",
            total.allowed_at_ms.len(),
            total.rejected,
            total.errors
        );
        for (index, at) in total.allowed_at_ms.iter().enumerate() {
            if index > 0 {
                line.push(',');
            }
            let _ = write!(line, "{at:.3}");
        }
        line.push_str("]}");
        println!("{line}");
        ExitCode::SUCCESS
    }
}
