//! Prints the worst-case Redis time of one script call and the bytes a key takes, for
//! W = 3600 s and G = 1 ms (coarsened to 7.2 s, at most 500 buckets; the scripts cap a key at
//! 600), after a long pause: every bucket but the newest has left the window, and one call
//! evicts them all. Keys are written in the scripts' layout (waiting an hour to fill them is not
//! practical), then called through the limiter; times are the server's own (`INFO
//! commandstats`), bytes are `MEMORY USAGE`.
//!
//! `cargo run --release -p trypema --features redis-tokio --example worst_case -- redis://127.0.0.1:6379/`
//! (run it against a Redis nothing else uses: it resets the command statistics).

use std::time::Instant;

use redis::aio::ConnectionManager;
use trypema::{redis::RedisKey, RateLimit, RateLimiter};

const KEYS: usize = 50;

async fn server_ms(connection: &mut ConnectionManager) -> f64 {
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(connection).await.unwrap();
    seconds as f64 * 1000.0 + micros as f64 / 1000.0
}

/// An entity of `buckets` buckets (`fields` doubles each: start then counters of 1), all but
/// the newest older than the window.
fn crafted(now: f64, buckets: usize, fields: usize, extra: usize) -> Vec<u8> {
    let bucket = |age: f64| {
        let mut values = vec![now - age];
        values.extend(std::iter::repeat_n(
            if fields == 2 { 1.0 } else { 0.0 },
            fields - 1,
        ));
        if fields == 4 {
            values[1] = 1.0;
        }
        values
    };
    let ages: Vec<f64> = (0..buckets)
        .map(|i| {
            if i + 1 == buckets {
                1.0
            } else {
                3_700_000.0 - i as f64 * 100.0
            }
        })
        .collect();
    let counters = fields - 1;
    let mut header = vec![
        7340.0 + fields as f64,
        now,
        1.0,
        if fields == 2 { 1e9 } else { 1e6 },
        buckets as f64,
        0.0,
    ];
    let mut sums = vec![0.0; counters];
    sums[0] = buckets as f64;
    header.extend(sums);
    header.extend(bucket(ages[0]));
    header.extend(bucket(ages[buckets - 1]));
    header.extend(std::iter::repeat_n(0.0, extra));
    let mut bytes: Vec<u8> = header.iter().flat_map(|v| v.to_le_bytes()).collect();
    for &age in &ages[1..buckets - 1] {
        bytes.extend(bucket(age).iter().flat_map(|v| v.to_le_bytes()));
    }
    bytes
}

async fn evalsha_usec(admin: &mut ConnectionManager) -> (u64, u64) {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(admin)
        .await
        .unwrap();
    let line = info
        .lines()
        .find_map(|line| line.strip_prefix("cmdstat_evalsha:"))
        .unwrap_or("calls=0,usec=0");
    let field = |name: &str| -> u64 {
        line.split(',')
            .find_map(|f| f.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("calls="), field("usec="))
}

#[tokio::main]
async fn main() {
    let url = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("TRYPEMA_TEST_REDIS_URL").ok())
        .expect("usage: worst_case <redis_url>");
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut admin = client.get_connection_manager().await.unwrap();
    let prefix = format!("worst{:x}", rand::random::<u32>());
    let rl = RateLimiter::builder(client.get_connection_manager().await.unwrap())
        .window_size_seconds(3600)
        .rate_group_size_ms(1)
        .redis_prefix(prefix.as_str())
        .build()
        .unwrap();
    let rate = RateLimit::new(1.0).unwrap();
    println!("W = 3600 s, G = 1 ms (coarsened to 7200 ms), one call after a long pause:");
    for (strategy, tag, fields, extra) in
        [("absolute", 'a', 2usize, 0usize), ("suppressed", 's', 4, 2)]
    {
        for buckets in [500usize, 600] {
            let now = server_ms(&mut admin).await;
            let keys: Vec<String> = (0..KEYS).map(|i| format!("k{buckets}{i}")).collect();
            for key in &keys {
                let name = format!("{{{prefix}:{key}}}:{tag}");
                let _: () = redis::cmd("SET")
                    .arg(&name)
                    .arg(crafted(now, buckets, fields, extra))
                    .arg("PX")
                    .arg(3_700_000)
                    .query_async(&mut admin)
                    .await
                    .unwrap();
            }
            let full_name = format!("{{{prefix}:{}}}:{tag}", keys[0]);
            let bytes_full: u64 = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(&full_name)
                .query_async(&mut admin)
                .await
                .unwrap();
            let _: () = redis::cmd("CONFIG")
                .arg("RESETSTAT")
                .query_async(&mut admin)
                .await
                .unwrap();
            let started = Instant::now();
            for key in &keys {
                let key = RedisKey::new(key.as_str()).unwrap();
                if fields == 2 {
                    rl.redis().absolute().inc(&key, &rate, 1).await.unwrap();
                } else {
                    rl.redis().suppressed().inc(&key, &rate, 1).await.unwrap();
                }
            }
            let wall = started.elapsed();
            let (calls, usec) = evalsha_usec(&mut admin).await;
            let bytes_after: u64 = redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(&full_name)
                .query_async(&mut admin)
                .await
                .unwrap();
            println!(
                "  {strategy:10} {buckets} buckets: {:.3} ms of Redis time per evicting call ({calls} calls, {:.2} ms per round trip); {bytes_full} bytes per full key, {bytes_after} after the call",
                usec as f64 / calls.max(1) as f64 / 1000.0,
                wall.as_secs_f64() * 1000.0 / KEYS as f64,
            );
        }
    }
}
