//! Helpers shared by the integration tests that need Redis (`redis_*`, `hybrid_*`) or run an
//! example binary. Each test binary compiles its own copy of this module, so the locks below
//! are per binary, as they were when every file had its own.
#![allow(dead_code)]

use std::{
    collections::BTreeSet,
    fmt::Debug,
    future::Future,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    ops::Sub,
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

/// A limiter (W = 1 s) over a lazily connecting manager for a closed port, once connecting
/// there eagerly has been seen to fail promptly.
pub async fn unreachable_limiter() -> RateLimiter {
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", free_port())).unwrap();
    let connected = tokio::time::timeout(
        Duration::from_secs(10),
        client.get_connection_manager_with_config(fail_fast_config()),
    )
    .await
    .expect("connecting to a closed port must fail promptly");
    assert!(connected.is_err(), "connected to a closed port?");

    let lazy = client
        .get_connection_manager_lazy(fail_fast_config())
        .unwrap();
    RateLimiter::builder(lazy)
        .window_size_seconds(1)
        .build()
        .unwrap()
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

/// `(retry_after_ms, remaining_after_waiting)` of a `Rejected` decision for a 1 s window,
/// whose `retry_after_ms` must be in `(0, max_retry_ms]`.
#[track_caller]
pub fn rejected_within(decision: RateLimitDecision, max_retry_ms: u64) -> (u64, u64) {
    match decision {
        RateLimitDecision::Rejected {
            window_size_seconds,
            retry_after_ms,
            remaining_after_waiting,
        } => {
            assert_eq!(window_size_seconds, 1, "{decision:?}");
            assert!(
                retry_after_ms > 0 && retry_after_ms <= max_retry_ms,
                "retry_after_ms must be in (0, {max_retry_ms}] for a 1 s window: {decision:?}"
            );
            (retry_after_ms, remaining_after_waiting)
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
}

/// The message of the `TrypemaError::Redis` in `result`, whose code must be `TRYPEMA_REDIS`.
#[track_caller]
pub fn redis_error_message<T: Debug>(result: Result<T, TrypemaError>) -> String {
    match result {
        Err(error @ TrypemaError::Redis(_)) => {
            assert_eq!(error.code(), "TRYPEMA_REDIS");
            error.to_string()
        }
        other => panic!("expected TrypemaError::Redis, got {other:?}"),
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

    /// Every key under this test's prefix expires within one 1 s window (PTTL in (0, 1001]).
    pub async fn assert_ttls(&mut self, after: &str) {
        let names = self.keys().await;
        assert!(!names.is_empty(), "after {after}: no keys at all");
        for name in &names {
            let ttl = self.pttl(name).await;
            assert!(
                ttl > 0 && ttl <= 1001,
                "after {after}: PTTL of {name} is {ttl}"
            );
        }
    }

    /// The entities (`{prefix:key}:a` or `:s`) the keys under this test's prefix belong to.
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

/// The entity a key belongs to: `{prefix:key}:a` itself, or `{prefix:key}:a:<anything>` (and
/// the same for `s`). Panics on a key outside that layout.
#[track_caller]
pub fn entity_of(name: &str) -> String {
    let close = name
        .find("}:")
        .unwrap_or_else(|| panic!("{name}: not `{{prefix:key}}:<strategy>...`"));
    assert!(name.starts_with('{'), "{name}: no hash tag");
    let strategy = name[close + 2..].split(':').next().unwrap_or_default();
    assert!(
        strategy == "a" || strategy == "s",
        "{name}: strategy part must be `a` or `s`"
    );
    name[..close + 3].to_string()
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
        let lines = tokio::task::spawn_blocking(move || self.reader.join())
            .await
            .expect("join")
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
/// (no `EVAL`, no `SCRIPT LOAD`), and the limiter's own connection sent exactly those, as
/// `monitor` saw; `admin_addr` is the [`client_addr`] of `admin`.
pub async fn assert_each_call_is_one_evalsha(
    admin: &mut ConnectionManager,
    monitor: Monitor,
    admin_addr: &str,
    calls: u64,
) {
    assert_eq!(command_calls(admin, "evalsha").await, Some(calls));
    assert_eq!(command_calls(admin, "eval").await, None);
    assert_eq!(command_calls(admin, "script|load").await, None);
    let seen = monitor.stop(admin).await;
    let sent = client_commands(&seen, admin_addr);
    assert_eq!(sent.len() as u64, calls, "limiter sent {sent:?}");
    assert!(
        sent.iter().all(|command| command == "evalsha"),
        "limiter sent {sent:?}"
    );
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
/// 10 s (and no attempt may hang for 15 s); `check` examines that first success. Returns how
/// long after the restart it came.
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
        let attempt = tokio::time::timeout(Duration::from_secs(15), call())
            .await
            .expect("inc must not hang after Redis is back");
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
        tokio::time::sleep(Duration::from_millis(100)).await;
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
