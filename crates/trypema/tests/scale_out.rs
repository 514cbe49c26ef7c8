//! The Rust side of issue 12 on a real Redis Cluster (3 masters, 3 replicas) started for this
//! test binary by the Node tooling (`scripts/redis-topologies.mjs`, through `node`): four
//! limiters, each with its own `ClusterConnection` (as four processes would have), admit
//! exactly the capacity; the hybrid provider works on the cluster; and a key used from Rust and
//! from Node (the addon, `index.js`) shares one limit.
//!
//! Needs `node`, `redis-server` and `redis-cli`; the Rust-and-Node test also needs the addon
//! built (`npm run build`). Without them the tests fail saying what is missing.
//! TRYPEMA_TEST_REDIS_URL is not used.
#![cfg(trypema_redis)]

mod support;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Mutex, OnceLock},
    time::Duration,
};

use futures_util::future::join_all;
use support::rt;
use trypema::{redis::RedisKey, RateLimit, RateLimitDecision, RateLimiter};

// ---------------------------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------------------------

/// The repository root (where `index.js` and `scripts/` are).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A cluster run by a `node` process. The process stops the cluster when its stdin closes,
/// which happens when this test binary exits, however it exits: nothing is left running.
struct Cluster {
    urls: Vec<String>,
    _node: Child,
    _stdin: Mutex<ChildStdin>,
}

/// The cluster shared by the tests of this binary, started on first use.
fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(start_cluster)
}

fn start_cluster() -> Cluster {
    let topologies = root().join("scripts/redis-topologies.mjs");
    assert!(topologies.is_file(), "{} is missing", topologies.display());
    let script = format!(
        "const m = await import({path:?});
         const cluster = await m.startCluster({{ masters: 3, replicas: 1 }});
         process.stdin.on('end', async () => {{ await cluster.stop(); process.exit(0) }});
         process.stdin.resume();
         console.log(JSON.stringify(cluster.urls));",
        path = topologies.to_string_lossy()
    );
    let mut node = Command::new("node")
        .args(["--input-type=module", "-e", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|error| {
            panic!("cannot run `node` to start the Redis Cluster ({error}): install Node.js 20+")
        });
    let stdin = node.stdin.take().expect("stdin");
    let mut line = String::new();
    BufReader::new(node.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the cluster's URLs");
    let urls: Vec<String> = parse_string_array(&line).unwrap_or_else(|| {
        let status = node.wait().ok();
        panic!(
            "starting the Redis Cluster failed (node exited {status:?}; is redis-server/redis-cli \
             installed?); it printed {line:?}"
        )
    });
    assert_eq!(urls.len(), 3, "three seed URLs: {urls:?}");
    Cluster {
        urls,
        _node: node,
        _stdin: Mutex::new(stdin),
    }
}

/// `["a","b"]` (JSON strings without escapes) as a vector.
fn parse_string_array(line: &str) -> Option<Vec<String>> {
    let inner = line.trim().strip_prefix('[')?.strip_suffix(']')?;
    inner
        .split(',')
        .map(|item| {
            Some(
                item.trim()
                    .strip_prefix('"')?
                    .strip_suffix('"')?
                    .to_string(),
            )
        })
        .collect()
}

/// A new cluster connection of its own (as another process would have).
async fn cluster_connection() -> redis::cluster_async::ClusterConnection {
    let client = redis::cluster::ClusterClient::builder(cluster().urls.clone())
        .connection_timeout(Duration::from_secs(10))
        .response_timeout(Duration::from_secs(5))
        .build()
        .expect("cluster client");
    client
        .get_async_connection()
        .await
        .expect("connect to the cluster")
}

async fn limiter(prefix: &str, window_s: u64) -> RateLimiter {
    RateLimiter::cluster_builder(cluster_connection().await)
        .redis_prefix(prefix)
        .window_size_seconds(window_s)
        .command_timeout_ms(5000)
        .build_verified()
        .await
        .expect("a limiter on the cluster")
}

fn unique(name: &str) -> String {
    format!("{name}{:012x}", rand::random::<u64>() >> 16)
}

fn key(name: &str) -> RedisKey {
    RedisKey::try_from(name.to_string()).expect("valid key")
}

fn rate(value: f64) -> RateLimit {
    RateLimit::try_from(value).expect("valid rate")
}

/// Which provider `calls` goes through.
#[derive(Clone, Copy)]
enum Provider {
    Redis,
    Hybrid,
}

/// `calls` calls of `key` at `rate` on `limiter`, `concurrency` at a time; returns how many
/// were admitted. Any error fails the test.
async fn admitted(
    limiter: &RateLimiter,
    provider: Provider,
    key: &RedisKey,
    rate: &RateLimit,
    calls: usize,
    concurrency: usize,
) -> usize {
    let per_worker = calls / concurrency;
    let workers = (0..concurrency).map(|_| async move {
        let mut allowed = 0;
        for _ in 0..per_worker {
            let decision = match provider {
                Provider::Redis => limiter.redis().absolute().inc(key, rate, 1).await,
                Provider::Hybrid => limiter.hybrid().absolute().inc(key, rate, 1).await,
            }
            .expect("no errors on a healthy cluster");
            match decision {
                RateLimitDecision::Allowed => allowed += 1,
                RateLimitDecision::Rejected { .. } => {}
                other => panic!("unexpected decision {other:?}"),
            }
        }
        allowed
    });
    join_all(workers).await.into_iter().sum()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn four_limiters_with_their_own_cluster_connections_admit_exactly_the_capacity() {
    cluster();
    rt::run(async {
        // W = 10 s, rate 50: capacity 500; 4 x 250 calls.
        let prefix = unique("rsx");
        let limiters = join_all((0..4).map(|_| limiter(&prefix, 10))).await;
        let user = key("user_123");
        let limit = rate(50.0);
        let counts = join_all(
            limiters
                .iter()
                .map(|limiter| admitted(limiter, Provider::Redis, &user, &limit, 250, 16)),
        )
        .await;
        assert_eq!(
            counts.iter().sum::<usize>(),
            500,
            "exactly the capacity across 4 limiters: {counts:?}"
        );
        let quota = limiters[0]
            .redis()
            .absolute()
            .get(&user, &limit)
            .await
            .unwrap();
        assert_eq!(quota.remaining, 0);
        for limiter in &limiters {
            limiter.close().await.unwrap();
        }
    });
}

#[test]
fn hybrid_on_the_cluster_never_exceeds_the_capacity_and_returns_leases() {
    cluster();
    rt::run(async {
        let prefix = unique("rsh");
        let user = key("user_123");
        let limit = rate(50.0);
        // Two limiters, 400 calls each, on capacity 500 within one window.
        let limiters = join_all((0..2).map(|_| limiter(&prefix, 10))).await;
        let counts = join_all(
            limiters
                .iter()
                .map(|limiter| admitted(limiter, Provider::Hybrid, &user, &limit, 400, 8)),
        )
        .await;
        let total: usize = counts.iter().sum();
        assert!(total <= 500, "never more than the capacity: {counts:?}");
        assert!(
            total >= 450,
            "at least 90% of the capacity is used: {counts:?}"
        );
        for limiter in &limiters {
            limiter.close().await.unwrap();
        }
        // After close, leases are returned: Redis holds exactly what was admitted.
        let check = limiter(&prefix, 10).await;
        let quota = check.redis().absolute().get(&user, &limit).await.unwrap();
        assert_eq!(
            500 - quota.remaining as usize,
            total,
            "Redis holds what was admitted"
        );

        // Keys on every master in one sync round: each first call admitted, one unit each
        // left in Redis after close.
        let hybrid = limiter(&prefix, 10).await;
        let keys: Vec<RedisKey> = (0..300).map(|i| key(&format!("spread{i}"))).collect();
        let limit = rate(5.0);
        let decisions = join_all(
            keys.iter()
                .map(|key| hybrid.hybrid().absolute().inc(key, &limit, 1)),
        )
        .await;
        for decision in decisions {
            assert_eq!(decision.unwrap(), RateLimitDecision::Allowed);
        }
        hybrid.close().await.unwrap();
        for key in &keys {
            let quota = check.redis().absolute().get(key, &limit).await.unwrap();
            assert_eq!(quota.remaining, 49, "{key:?}: exactly one unit recorded");
        }
        check.close().await.unwrap();
    });
}

#[test]
fn rust_and_node_share_one_limit_on_the_cluster() {
    let index = root().join("index.js");
    assert!(
        root().join("trypema.linux-x64-gnu.node").is_file() || cfg!(not(target_os = "linux")),
        "the Node addon is not built (run `npm run build` at {})",
        root().display()
    );
    let prefix = unique("rsn");
    let urls = &cluster().urls;
    // Node: 300 calls of `shared` at rate 50 (W = 10 s: capacity 500), 20 at a time, through
    // the redis provider on the cluster; prints how many were admitted.
    let script = format!(
        "const {{ RateLimiter }} = require({index:?});
         (async () => {{
           const rl = await RateLimiter.builder({{ cluster: {urls:?}, connectTimeoutMs: 10000 }})
             .redisPrefix({prefix:?}).windowSizeSeconds(10).build();
           process.stdout.write('ready\\n');
           await new Promise((resolve) => process.stdin.once('data', resolve));
           let allowed = 0;
           for (let round = 0; round < 300; round += 20) {{
             const decisions = await Promise.all(Array.from({{ length: 20 }}, () => rl.redis.absolute.inc('shared', 50)));
             allowed += decisions.filter((d) => d.kind === 'allowed').length;
           }}
           await rl.close();
           process.stdout.write(JSON.stringify({{ allowed }}) + '\\n');
           process.stdin.destroy();
         }})().catch((error) => {{ console.error(error); process.exit(1) }});",
        index = index.to_string_lossy(),
    );
    let mut node = Command::new("node")
        .args(["-e", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run node");
    let mut stdout = BufReader::new(node.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(
        line.trim(),
        "ready",
        "the Node limiter connected to the cluster"
    );
    let mut stdin = node.stdin.take().unwrap();

    let checker_prefix = prefix.clone();
    let rust_allowed = rt::run(async move {
        let limiter = limiter(&prefix, 10).await;
        let shared = key("shared");
        let limit = rate(50.0);
        // Release Node, then call from Rust at the same time.
        std::io::Write::write_all(&mut stdin, b"go\n").unwrap();
        let allowed = admitted(&limiter, Provider::Redis, &shared, &limit, 300, 20).await;
        limiter.close().await.unwrap();
        allowed
    });
    line.clear();
    stdout.read_line(&mut line).unwrap();
    let status = node.wait().unwrap();
    assert!(status.success(), "node exited with {status}");
    // Read once both sides are done (Node may still be calling when Rust finishes).
    let remaining = rt::run(async move {
        let limiter = limiter(&checker_prefix, 10).await;
        let quota = limiter
            .redis()
            .absolute()
            .get(&key("shared"), &rate(50.0))
            .await
            .unwrap();
        limiter.close().await.unwrap();
        quota.remaining
    });
    let node_allowed: usize = line
        .trim()
        .strip_prefix("{\"allowed\":")
        .and_then(|rest| rest.strip_suffix('}'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("node printed {line:?}"));
    assert_eq!(
        rust_allowed + node_allowed,
        500,
        "Rust admitted {rust_allowed} and Node {node_allowed}: one shared capacity of 500"
    );
    assert_eq!(remaining, 0);
    assert!(rust_allowed > 0 && node_allowed > 0, "both sides took part");
}

/// The README's Rust snippets for Cluster and Sentinel, as written there (the Sentinel one
/// builds without connecting: the master is looked up on first use).
#[test]
fn readme_snippets_build() {
    cluster();
    let urls = cluster().urls.clone();
    rt::run(async move {
        async fn readme(urls: Vec<String>) -> Result<(), Box<dyn std::error::Error>> {
            use redis::sentinel::{SentinelClient, SentinelServerType};
            use trypema::RateLimiter;

            let client = redis::cluster::ClusterClient::new(urls)?;
            let rl = RateLimiter::cluster_builder(client.get_async_connection().await?)
                .window_size_seconds(60)
                .build()?;
            let key = RedisKey::try_from("user_123".to_string())?;
            let rate = RateLimit::try_from(5.0)?;
            assert_eq!(
                rl.redis().absolute().inc(&key, &rate, 1).await?,
                RateLimitDecision::Allowed
            );
            rl.close().await?;

            let sentinel = SentinelClient::build(
                vec!["redis://127.0.0.1:26379/"],
                "mymaster",
                None,
                SentinelServerType::Master,
            )?;
            let rl = RateLimiter::sentinel_builder(sentinel, redis::AsyncConnectionConfig::new())
                .build()?;
            drop(rl);
            Ok(())
        }
        readme(urls).await.expect("the README snippets work");
    });
}
