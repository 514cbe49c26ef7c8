//! Helpers shared by the integration tests that need Redis (`redis_*`, `hybrid_*`) or run an
//! example binary. Each test binary compiles its own copy of this module, so the locks below
//! are per binary, as they were when every file had its own.
//!
//! Runtime-agnostic: everything async here runs on the runtime of the enabled feature
//! (`redis-tokio` or `redis-smol`) through [`rt`], so the same suites check both.
#![allow(dead_code)]

pub mod rt;

use std::{
    collections::BTreeSet,
    fmt::Debug,
    future::Future,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    ops::{RangeInclusive, Sub},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use trypema::{
    redis::RedisKey, RateLimit, RateLimitDecision, RateLimiter, RateLimiterBuilder, TrypemaError,
};

// ---------------------------------------------------------------------------------------------
// Locks
// ---------------------------------------------------------------------------------------------

/// Held shared by ordinary tests, exclusively by those that read server-wide statistics.
static SERVER: RwLock<()> = RwLock::const_new(());

/// The exclusive hold on [`SERVER`], for tests that read server-wide statistics.
pub async fn exclusive() -> RwLockWriteGuard<'static, ()> {
    SERVER.write().await
}

/// The shared hold on [`SERVER`], for tests that use the shared server without an [`Env`].
pub async fn shared() -> RwLockReadGuard<'static, ()> {
    SERVER.read().await
}

/// Held shared by ordinary tests, exclusively by the load tests.
static CPU: RwLock<()> = RwLock::const_new(());

pub async fn light() -> RwLockReadGuard<'static, ()> {
    CPU.read().await
}

pub async fn heavy() -> RwLockWriteGuard<'static, ()> {
    CPU.write().await
}

// ---------------------------------------------------------------------------------------------
// The shared Redis and connections
// ---------------------------------------------------------------------------------------------

/// `TRYPEMA_TEST_REDIS_URL`; if it is not set, panics with a hint naming the `provider` whose
/// tests need it and an example `port`.
fn test_redis_url(provider: &str, port: u16) -> String {
    std::env::var("TRYPEMA_TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "TRYPEMA_TEST_REDIS_URL is not set: the {provider} provider tests need a disposable \
             Redis (e.g. `redis-server --port {port} --save ''` and \
             TRYPEMA_TEST_REDIS_URL=redis://127.0.0.1:{port}/); `npm test` sets it"
        )
    })
}

/// `TRYPEMA_TEST_REDIS_URL`, for the Redis provider tests.
pub fn redis_url() -> String {
    test_redis_url("Redis", 6401)
}

/// `TRYPEMA_TEST_REDIS_URL`, for the hybrid provider tests.
pub fn hybrid_redis_url() -> String {
    test_redis_url("hybrid", 6403)
}

/// A fresh connection manager to `TRYPEMA_TEST_REDIS_URL`.
pub async fn connection() -> ConnectionManager {
    let url = redis_url();
    redis::Client::open(url.as_str())
        .unwrap_or_else(|error| panic!("invalid TRYPEMA_TEST_REDIS_URL {url:?}: {error}"))
        .get_connection_manager()
        .await
        .unwrap_or_else(|error| panic!("cannot connect to TRYPEMA_TEST_REDIS_URL {url:?}: {error}"))
}

/// A fresh connection manager to `url`.
pub async fn connect(url: &str) -> ConnectionManager {
    redis::Client::open(url)
        .unwrap_or_else(|error| panic!("invalid Redis URL {url:?}: {error}"))
        .get_connection_manager()
        .await
        .unwrap_or_else(|error| panic!("cannot connect to {url:?}: {error}"))
}

/// Connection settings that give up quickly: one retry, 500 ms timeouts.
pub fn fail_fast_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(10))
        .set_max_delay(Duration::from_millis(50))
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(Some(Duration::from_millis(500)))
}

/// The command timeout the tests configure where they assert how long a failing call takes
/// (the default is 2000 ms).
pub const COMMAND_TIMEOUT_MS: u64 = 300;

/// What a failing call may take beyond [`COMMAND_TIMEOUT_MS`]: scheduling on a loaded 2-core
/// machine, not part of the documented bound.
pub const TIMEOUT_SLACK_MS: u64 = 200;

/// A limiter (W = 1 s, command timeout [`COMMAND_TIMEOUT_MS`]) over a lazily connecting
/// manager for a closed port, once connecting there eagerly has been seen to fail.
pub async fn unreachable_limiter() -> RateLimiter {
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", free_port())).unwrap();
    let connected = rt::timeout(
        Duration::from_secs(10),
        client.get_connection_manager_with_config(fail_fast_config()),
    )
    .await
    .expect("connecting to a closed port must fail, not hang");
    assert!(connected.is_err(), "connected to a closed port?");

    let lazy = client
        .get_connection_manager_lazy(fail_fast_config())
        .unwrap();
    RateLimiter::builder(lazy)
        .window_size_seconds(1)
        .command_timeout_ms(COMMAND_TIMEOUT_MS)
        .build()
        .unwrap()
}

/// A TCP server that accepts connections and never answers (nor closes them), for as long as
/// it lives: every Redis command sent to it goes unanswered.
pub struct SilentServer {
    port: u16,
    _acceptor: std::thread::JoinHandle<()>,
}

impl SilentServer {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a silent server");
        let port = listener.local_addr().expect("local address").port();
        let acceptor = std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming() {
                match stream {
                    // Read nothing, answer nothing, keep the connection open.
                    Ok(stream) => held.push(stream),
                    Err(_) => return,
                }
            }
        });
        Self {
            port,
            _acceptor: acceptor,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

/// A TCP proxy in front of the Redis at `TRYPEMA_TEST_REDIS_URL` that delivers every chunk,
/// in each direction, `delay` after it arrived: a Redis that is `2 × delay` of round trip away.
pub struct DelayProxy {
    port: u16,
    _acceptor: std::thread::JoinHandle<()>,
}

impl DelayProxy {
    pub fn start(delay: Duration) -> Self {
        let client = redis::Client::open(redis_url()).expect("valid redis URL");
        let redis::ConnectionAddr::Tcp(host, port) = client.get_connection_info().addr().clone()
        else {
            panic!("the delay proxy only speaks plain TCP; use a redis:// URL");
        };
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the delay proxy");
        let proxy_port = listener.local_addr().expect("local address").port();
        let acceptor = std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect((host.as_str(), port)) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                for (from, to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ] {
                    if let (Ok(from), Ok(to)) = (from, to) {
                        Self::pump(from, to, delay);
                    }
                }
            }
        });
        Self {
            port: proxy_port,
            _acceptor: acceptor,
        }
    }

    /// Copies `from` to `to`, each chunk `delay` after it was read.
    fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
        let (sender, receiver) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 65536];
            loop {
                match from.read(&mut buffer) {
                    Ok(0) | Err(_) => return,
                    Ok(read) => {
                        if sender
                            .send((Instant::now(), buffer[..read].to_vec()))
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
        std::thread::spawn(move || {
            for (at, chunk) in receiver {
                std::thread::sleep((at + delay).saturating_duration_since(Instant::now()));
                if to.write_all(&chunk).is_err() {
                    return;
                }
            }
            let _ = to.shutdown(std::net::Shutdown::Write);
        });
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

/// Asserts that `took` is within the documented bound of a failing Redis call: the command
/// timeout ([`COMMAND_TIMEOUT_MS`]) plus [`TIMEOUT_SLACK_MS`] of scheduling.
#[track_caller]
pub fn assert_within_command_timeout(took: Duration, what: &str) {
    assert!(
        took <= Duration::from_millis(COMMAND_TIMEOUT_MS + TIMEOUT_SLACK_MS),
        "{what} took {took:?}: more than the command timeout ({COMMAND_TIMEOUT_MS} ms) + \
         {TIMEOUT_SLACK_MS} ms"
    );
}

/// A port nobody listens on (at the moment of asking).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

// ---------------------------------------------------------------------------------------------
// Names, rates, limiters and decisions
// ---------------------------------------------------------------------------------------------

/// `name` plus a random suffix, so parallel tests (and reruns) never share state.
pub fn unique(name: &str) -> String {
    format!("{name}{:016x}", rand::random::<u64>())
}

pub fn key(name: &str) -> RedisKey {
    RedisKey::try_from(unique(name)).expect("valid key")
}

pub fn rate(value: f64) -> RateLimit {
    RateLimit::try_from(value).expect("valid rate")
}

/// A builder over a fresh connection to `TRYPEMA_TEST_REDIS_URL`, with `prefix`, a window of
/// `window_s` and buckets of `group_ms`.
pub async fn redis_builder(prefix: &str, window_s: u64, group_ms: u64) -> RateLimiterBuilder {
    RateLimiter::builder(connection().await)
        .window_size_seconds(window_s)
        .rate_group_size_ms(group_ms)
        .redis_prefix(prefix)
}

/// A builder over a fresh connection to `url` (each limiter its own connection manager, as
/// if it were another process), with `prefix` and a window of `window_s`.
pub async fn builder_at(url: &str, prefix: &str, window_s: u64) -> RateLimiterBuilder {
    RateLimiter::builder(connect(url).await)
        .window_size_seconds(window_s)
        .redis_prefix(prefix)
}

#[track_caller]
pub fn assert_allowed(decision: RateLimitDecision) {
    assert_eq!(decision, RateLimitDecision::Allowed);
}

/// When a call ran, by this process's clock: sent at `sent`, answered at `answered`. A script
/// reads the server's clock somewhere in between.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub sent: Instant,
    pub answered: Instant,
}

impl Span {
    /// A span that is the single instant now.
    pub fn now() -> Self {
        let now = Instant::now();
        Self {
            sent: now,
            answered: now,
        }
    }

    pub fn took(&self) -> Duration {
        self.answered - self.sent
    }
}

/// Runs `call` and returns its output with the [`Span`] it ran in.
pub async fn timed<T>(call: impl Future<Output = T>) -> (T, Span) {
    let sent = Instant::now();
    let output = call.await;
    (
        output,
        Span {
            sent,
            answered: Instant::now(),
        },
    )
}

/// The `retry_after_ms` a rejection made during `rejected` must carry when the oldest bucket
/// in the window starts `offset_ms` after the server time of a call made during `opened`:
/// `start + window_ms + 1 - now`, in the server's whole milliseconds.
///
/// Exact up to what this process cannot see: when inside each span the server read its clock
/// (the width of the range is the two calls' durations) and the server truncating its times to
/// whole milliseconds (1 ms on each side). The server's clock and this process's run at the
/// same rate over a few seconds (drift is parts per million), so no more slack is needed.
pub fn expected_retry(
    window_ms: u64,
    offset_ms: u64,
    opened: Span,
    rejected: Span,
) -> RangeInclusive<u64> {
    let least = rejected.sent.saturating_duration_since(opened.answered);
    let most = rejected.answered.saturating_duration_since(opened.sent);
    let end = window_ms + offset_ms + 1;
    let most_ms = most.as_micros().div_ceil(1000) as u64;
    let least_ms = least.as_millis() as u64;
    end.saturating_sub(most_ms + 1).max(1)..=(end + 1).saturating_sub(least_ms).min(end)
}

/// Asserts that `decision` is `Rejected` for a window of `window_s` with `retry_after_ms` in
/// `retry` and exactly `remaining_after_waiting`; returns `retry_after_ms`.
#[track_caller]
pub fn assert_rejected(
    decision: RateLimitDecision,
    window_s: u64,
    retry: RangeInclusive<u64>,
    remaining_after_waiting: u64,
) -> u64 {
    match decision {
        RateLimitDecision::Rejected {
            window_size_seconds,
            retry_after_ms,
            remaining_after_waiting: remaining,
        } => {
            assert_eq!(window_size_seconds, window_s, "{decision:?}");
            assert!(
                retry.contains(&retry_after_ms),
                "retry_after_ms {retry_after_ms} outside the expected {retry:?}: {decision:?}"
            );
            assert_eq!(
                remaining, remaining_after_waiting,
                "remaining_after_waiting: {decision:?}"
            );
            retry_after_ms
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
}

/// The refusal of a count larger than the capacity: wait a whole window (`W·1000` exactly),
/// `remaining` left after the oldest bucket.
pub fn rejected_for_good(window_s: u64, remaining: u64) -> RateLimitDecision {
    RateLimitDecision::Rejected {
        window_size_seconds: window_s,
        retry_after_ms: window_s * 1000,
        remaining_after_waiting: remaining,
    }
}

/// The message of the outage error in `result`: `TrypemaError::RedisConnection` (refused,
/// dropped, circuit open), whose code must be `TRYPEMA_REDIS`.
#[track_caller]
pub fn connection_error_message<T: Debug>(result: Result<T, TrypemaError>) -> String {
    match result {
        Err(error @ TrypemaError::RedisConnection(_)) => {
            assert_eq!(error.code(), "TRYPEMA_REDIS");
            assert!(error.is_outage());
            error.to_string()
        }
        other => panic!("expected TrypemaError::RedisConnection, got {other:?}"),
    }
}

/// The message of the outage error in `result`: `RedisConnection` or `RedisTimeout` (a
/// server that is going away may do either), with their codes.
#[track_caller]
pub fn outage_error_message<T: Debug>(result: Result<T, TrypemaError>) -> String {
    match result {
        Err(error @ TrypemaError::RedisConnection(_)) => {
            assert_eq!(error.code(), "TRYPEMA_REDIS");
            error.to_string()
        }
        Err(error @ TrypemaError::RedisTimeout(_)) => {
            assert_eq!(error.code(), "TRYPEMA_REDIS_TIMEOUT");
            error.to_string()
        }
        other => {
            panic!("expected an outage error (RedisConnection or RedisTimeout), got {other:?}")
        }
    }
}

/// Polls `done` every 10 ms until it holds or `limit` has passed; returns how long it took,
/// or `None` if it never held.
pub async fn wait_for<F, Fut>(limit: Duration, mut done: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let begin = Instant::now();
    loop {
        if done().await {
            return Some(begin.elapsed());
        }
        if begin.elapsed() >= limit {
            return None;
        }
        rt::sleep(Duration::from_millis(10)).await;
    }
}

/// The most values (sorted) inside any half-open interval of length `window`, and where that
/// interval starts (`T::default()` when there are none).
pub fn busiest_window<T>(sorted: &[T], window: T) -> (usize, T)
where
    T: Copy + Default + PartialOrd + Sub<Output = T>,
{
    let mut best = (0, T::default());
    let mut first = 0;
    for (last, &at) in sorted.iter().enumerate() {
        while at - sorted[first] >= window {
            first += 1;
        }
        if last + 1 - first > best.0 {
            best = (last + 1 - first, sorted[first]);
        }
    }
    best
}

/// Sleeps until `retry_after_ms` (as told at the end of `at`) has passed by the server's
/// clock: the hint counts from when the server decided, which is before `at` ended; 2 ms more
/// cover the server's whole-millisecond times.
pub async fn sleep_past(retry_after_ms: u64, at: Span) {
    let until = at.answered + Duration::from_millis(retry_after_ms + 2);
    rt::sleep(until.saturating_duration_since(Instant::now())).await;
}

/// The most admissions that certainly fell within one span of `span_us` µs of the server's
/// clock, given when (µs, by this process's clock) each call was sent and answered: a set
/// counts only if every one of its calls was sent and answered within the span, so reply
/// jitter can only make this smaller than the truth, never larger.
pub fn busiest_certain_window(calls: &[(u64, u64)], span_us: u64) -> usize {
    let mut by_sent = calls.to_vec();
    by_sent.sort_unstable();
    (0..by_sent.len())
        .map(|first| {
            let from = by_sent[first].0;
            by_sent[first..]
                .iter()
                .take_while(|(sent, _)| *sent <= from + span_us)
                .filter(|(_, answered)| *answered <= from + span_us)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// Waits (at most 3 s) until the key `name` no longer exists; returns when that was first
/// seen.
pub async fn wait_until_gone(admin: &ConnectionManager, name: &str) -> Instant {
    wait_for(Duration::from_secs(3), || {
        let mut admin = admin.clone();
        let name = name.to_string();
        async move {
            redis::cmd("EXISTS")
                .arg(&name)
                .query_async::<i64>(&mut admin)
                .await
                .expect("EXISTS")
                == 0
        }
    })
    .await
    .unwrap_or_else(|| panic!("{name} still exists 3 s later"));
    Instant::now()
}

/// Asserts that a key whose newest bucket opened during `newest` left Redis when that bucket
/// left a 1 s window (its TTL): not before 1000 ms after `newest.sent`, and at most one poll
/// (10 ms) plus 100 ms of scheduling slack after 1001 ms from `newest.answered`.
#[track_caller]
pub fn assert_expired_with_the_window(gone: Instant, newest: Span) {
    assert!(
        gone >= newest.sent + Duration::from_millis(1000),
        "the key left {:?} after its newest bucket opened: before its window ended",
        gone - newest.sent
    );
    assert!(
        gone <= newest.answered + Duration::from_millis(1001 + 10 + 100),
        "the key left {:?} after its newest bucket opened: its TTL ends with the window",
        gone - newest.answered
    );
}

// ---------------------------------------------------------------------------------------------
// One test's view of Redis
// ---------------------------------------------------------------------------------------------

/// One test's view of Redis: its own prefix and an admin connection separate from the
/// limiter's, plus the shared hold on [`SERVER`]. Each test binary adds its own `new` (which
/// names the prefix) and `limiter`.
pub struct Env {
    pub prefix: String,
    pub admin: ConnectionManager,
    _shared: RwLockReadGuard<'static, ()>,
}

impl Env {
    /// Takes the shared hold on [`SERVER`], then opens the admin connection under a prefix
    /// made [`unique`] from `prefix`.
    pub async fn with_prefix(prefix: &str) -> Self {
        let shared = SERVER.read().await;
        Self {
            prefix: unique(prefix),
            admin: connection().await,
            _shared: shared,
        }
    }

    /// The Redis key holding `key`'s state for `tag` (`a` or `s`).
    pub fn entity(&self, key: &RedisKey, tag: &str) -> String {
        format!("{{{}:{}}}:{tag}", self.prefix, key.as_str())
    }

    pub async fn exists(&mut self, name: &str) -> bool {
        redis::cmd("EXISTS")
            .arg(name)
            .query_async::<i64>(&mut self.admin)
            .await
            .expect("EXISTS")
            == 1
    }

    pub async fn pttl(&mut self, name: &str) -> i64 {
        redis::cmd("PTTL")
            .arg(name)
            .query_async(&mut self.admin)
            .await
            .expect("PTTL")
    }

    /// Every key under this test's prefix expires when its newest bucket leaves a 1 s window:
    /// PTTL in `(0, 1001]`, and at least `1001 - (ms since the newest bucket opened)` when
    /// `newest` is the span of the call that opened it.
    pub async fn assert_ttls(&mut self, after: &str, newest: Option<Span>) {
        let names = self.keys().await;
        assert!(!names.is_empty(), "after {after}: no keys at all");
        for name in &names {
            let ttl = self.pttl(name).await;
            let read = Instant::now();
            assert!(
                ttl > 0 && ttl <= 1001,
                "after {after}: PTTL of {name} is {ttl}"
            );
            if let Some(newest) = newest {
                // The server's start is within `newest`, truncated to a whole ms (1 ms), and
                // the TTL is read at or before `read`.
                let since = read.duration_since(newest.sent).as_micros().div_ceil(1000) as i64;
                assert!(
                    ttl >= 1001 - since - 1,
                    "after {after}: PTTL of {name} is {ttl}, but its newest bucket opened at \
                     most {since} ms ago"
                );
            }
        }
    }

    /// The entities (`{prefix:key}:a` or `:s`) under this test's prefix; panics on any key
    /// outside that layout.
    pub async fn entities(&mut self) -> BTreeSet<String> {
        self.keys()
            .await
            .iter()
            .map(|name| entity_of(name))
            .collect()
    }

    /// Every key under this test's prefix, by SCAN.
    pub async fn keys(&mut self) -> BTreeSet<String> {
        scan(&mut self.admin, &format!("{{{}:*", self.prefix)).await
    }
}

/// The entity a Redis key holds: the key itself, which must follow the layout
/// `{<prefix>:<key>}:a` (absolute) or `{<prefix>:<key>}:s` (suppressed) — one string key per
/// entity and strategy, no per-bucket keys. Panics on a key outside that layout.
#[track_caller]
pub fn entity_of(name: &str) -> String {
    assert!(name.starts_with('{'), "{name}: no hash tag");
    assert!(
        name.ends_with("}:a") || name.ends_with("}:s"),
        "{name}: not `{{prefix:key}}:a` or `{{prefix:key}}:s`"
    );
    assert!(name.contains(':'), "{name}: no `prefix:` part");
    name.to_string()
}

pub async fn scan(admin: &mut ConnectionManager, pattern: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(admin)
            .await
            .expect("SCAN");
        found.extend(batch);
        if next == 0 {
            return found;
        }
        cursor = next;
    }
}

// ---------------------------------------------------------------------------------------------
// What the server saw
// ---------------------------------------------------------------------------------------------

/// The reply to `<name> <arg>` (such as `SCRIPT FLUSH` or `INFO commandstats`) on
/// `connection`.
pub async fn command<T: redis::FromRedisValue>(
    connection: &mut ConnectionManager,
    name: &str,
    arg: &str,
) -> T {
    redis::cmd(name)
        .arg(arg)
        .query_async(connection)
        .await
        .unwrap_or_else(|error| panic!("{name} {arg}: {error:?}"))
}

/// `CONFIG RESETSTAT`: zeroes the server's command statistics.
pub async fn reset_stats(admin: &mut ConnectionManager) {
    command::<()>(admin, "CONFIG", "RESETSTAT").await;
}

/// `calls` of every command in `INFO commandstats` since the last `CONFIG RESETSTAT`.
pub async fn all_command_calls(admin: &mut ConnectionManager) -> Vec<(String, u64)> {
    let info: String = command(admin, "INFO", "commandstats").await;
    info.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("cmdstat_")?;
            let (name, stats) = rest.split_once(':')?;
            let calls = stats
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

/// `calls` of `cmdstat_<command>` in `INFO commandstats` (subcommands as `script|load`), if
/// Redis ran it since the last `CONFIG RESETSTAT`.
pub async fn command_calls(admin: &mut ConnectionManager, command: &str) -> Option<u64> {
    all_command_calls(admin)
        .await
        .into_iter()
        .find_map(|(name, calls)| (name == command).then_some(calls))
}

/// What a limiter's client sent, seen through `MONITOR` on a raw connection of its own.
pub struct Monitor {
    reader: std::thread::JoinHandle<Vec<String>>,
    marker: String,
}

/// One `MONITOR` line: the client address (`lua` for commands a script ran) and the command.
pub struct Seen {
    pub source: String,
    pub command: String,
}

impl Monitor {
    pub fn start() -> Self {
        let client = redis::Client::open(redis_url()).expect("valid redis URL");
        let redis::ConnectionAddr::Tcp(host, port) = client.get_connection_info().addr().clone()
        else {
            panic!("the MONITOR helper only speaks plain TCP; use a redis:// URL");
        };
        let mut stream = TcpStream::connect((host.as_str(), port)).expect("connect for MONITOR");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
        stream.write_all(b"MONITOR\r\n").expect("send MONITOR");
        let mut reader = BufReader::new(stream);
        let mut ok = String::new();
        reader.read_line(&mut ok).expect("MONITOR reply");
        assert_eq!(ok.trim_end(), "+OK", "MONITOR failed");
        let marker = unique("trypema-monitor-end-");
        let end = marker.clone();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            loop {
                let mut line = String::new();
                let read = reader.read_line(&mut line).expect("read MONITOR line");
                assert!(read > 0, "MONITOR connection closed");
                if line.contains(&end) {
                    return lines;
                }
                lines.push(line.trim_end().to_string());
            }
        });
        Self { reader, marker }
    }

    /// Ends the capture (by sending a marker through `admin`) and returns what was seen.
    pub async fn stop(self, admin: &mut ConnectionManager) -> Vec<Seen> {
        let _: String = redis::cmd("ECHO")
            .arg(&self.marker)
            .query_async(admin)
            .await
            .expect("ECHO");
        let reader = self.reader;
        let lines = rt::blocking(move || reader.join())
            .await
            .expect("MONITOR reader panicked");
        lines
            .iter()
            .map(|line| {
                // `+1700000000.123456 [0 127.0.0.1:5000] "evalsha" "..."` or `[0 lua]`.
                let open = line
                    .find('[')
                    .unwrap_or_else(|| panic!("odd MONITOR line {line}"));
                let close = open + line[open..].find(']').expect("]");
                let source = line[open + 1..close]
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_string();
                let command = line[close + 1..]
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .trim_matches('"')
                    .to_ascii_lowercase();
                Seen { source, command }
            })
            .collect()
    }
}

/// The `addr=` of `connection` as Redis sees it.
pub async fn client_addr(connection: &mut ConnectionManager) -> String {
    let info: String = command(connection, "CLIENT", "INFO").await;
    info.split_whitespace()
        .find_map(|field| field.strip_prefix("addr="))
        .expect("addr= in CLIENT INFO")
        .to_string()
}

/// What the limiter's own connection sent: everything except scripts' inner commands and the
/// test's admin connection.
pub fn client_commands(seen: &[Seen], admin_addr: &str) -> Vec<String> {
    seen.iter()
        .filter(|seen| seen.source != "lua" && seen.source != admin_addr)
        .map(|seen| seen.command.clone())
        .collect()
}

/// Since the last `CONFIG RESETSTAT` the server ran `calls` scripts, each by one `EVALSHA`
/// (no `EVAL`, no `SCRIPT LOAD`), each script read the server's clock once (`TIME` is run by
/// the scripts, so it shows in `INFO commandstats` but not among what the client sent), and
/// the limiter's own connection sent exactly the `EVALSHA`s, as `monitor` saw; `admin_addr` is
/// the [`client_addr`] of `admin`.
pub async fn assert_each_call_is_one_evalsha(
    admin: &mut ConnectionManager,
    monitor: Monitor,
    admin_addr: &str,
    calls: u64,
) {
    assert_eq!(command_calls(admin, "evalsha").await, Some(calls));
    assert_eq!(command_calls(admin, "eval").await, None);
    assert_eq!(command_calls(admin, "script|load").await, None);
    assert_eq!(
        command_calls(admin, "time").await,
        Some(calls),
        "each script reads the server's clock once"
    );
    let seen = monitor.stop(admin).await;
    let sent = client_commands(&seen, admin_addr);
    assert_eq!(sent.len() as u64, calls, "limiter sent {sent:?}");
    assert!(
        sent.iter().all(|command| command == "evalsha"),
        "limiter sent {sent:?}"
    );
    let by_scripts = seen
        .iter()
        .filter(|seen| seen.source == "lua" && seen.command == "time")
        .count() as u64;
    assert_eq!(by_scripts, calls, "MONITOR shows each script's own TIME");
}

// ---------------------------------------------------------------------------------------------
// Processes: a private redis-server, example binaries
// ---------------------------------------------------------------------------------------------

/// A `redis-server` of this test's own, on a free port, killed when dropped.
pub struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start() -> Self {
        let mut server = Self {
            port: free_port(),
            child: None,
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Starts the server (again) on the same port and waits until it answers `PING`.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| {
                panic!("cannot start `redis-server` (this test runs a private one): {error}")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server on port {} did not answer PING",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut reply).is_ok()
            && &reply == b"+PONG\r\n"
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Restarts `server`, then tries `call` every 100 ms until it succeeds, which it must within
/// 10 s (no attempt may take longer than the command timeout plus slack: the limiter under
/// test must be built with [`COMMAND_TIMEOUT_MS`]); `check` examines that first success.
/// Returns how long after the restart it came.
pub async fn restart_and_recover<F, Fut>(
    server: &mut PrivateRedis,
    mut call: F,
    check: impl FnOnce(RateLimitDecision),
) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<RateLimitDecision, TrypemaError>>,
{
    server.restart();
    let restarted = Instant::now();
    loop {
        let (attempt, span) = timed(call()).await;
        assert_within_command_timeout(span.took(), "an attempt after the restart");
        match attempt {
            Ok(decision) => {
                check(decision);
                return restarted.elapsed();
            }
            Err(error) => assert!(
                restarted.elapsed() < Duration::from_secs(10),
                "still failing {:?} after the restart: {error}",
                restarted.elapsed()
            ),
        }
        rt::sleep(Duration::from_millis(100)).await;
    }
}

/// `target/<profile>/examples/<name>`, found from this test's own executable
/// (`target/<profile>/deps/<test>-<hash>`); it may not exist.
pub fn example_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    exe.parent()
        .and_then(Path::parent)
        .map(|profile| {
            profile
                .join("examples")
                .join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
        })
        .expect("the test executable lives in target/<profile>/deps")
}
