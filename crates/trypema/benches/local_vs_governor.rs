//! `cargo bench -p trypema --bench local_vs_governor`: ns per call of the local provider against
//! governor's keyed limiter, 1000 keys, one thread, in the same run.

use std::{hint::black_box, num::NonZeroU32, time::Instant};

use governor::{Quota, RateLimiter as Governor};
use trypema::{RateLimit, RateLimiter};

const KEYS: usize = 1000;
const CALLS: usize = 20_000_000;
const ROUNDS: usize = 5;

fn ns_per_call(mut call: impl FnMut(&str)) -> f64 {
    let keys: Vec<String> = (0..KEYS).map(|i| format!("user_{i}")).collect();
    // Warm up: every key gets its state before timing starts.
    for key in &keys {
        call(key);
    }
    let mut best = f64::MAX;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for i in 0..CALLS {
            call(&keys[i % KEYS]);
        }
        best = best.min(started.elapsed().as_nanos() as f64 / CALLS as f64);
    }
    best
}

fn main() {
    // High enough that nothing is ever refused: both sides do their full admission work.
    let rate = RateLimit::try_from(1e9).unwrap();
    let limiter = RateLimiter::local_builder().build().unwrap();
    let governor = Governor::keyed(Quota::per_second(NonZeroU32::new(1_000_000_000).unwrap()));

    let governor_ns = ns_per_call(|key| {
        black_box(governor.check_key(&key.to_string()).is_ok());
    });
    let governor_borrowed: Governor<&'static str, _, _, _> =
        Governor::keyed(Quota::per_second(NonZeroU32::new(1_000_000_000).unwrap()));
    let static_keys: Vec<&'static str> = (0..KEYS)
        .map(|i| &*Box::leak(format!("user_{i}").into_boxed_str()))
        .collect();
    let mut next = 0usize;
    let governor_static_ns = ns_per_call(|_| {
        next = (next + 1) % KEYS;
        black_box(governor_borrowed.check_key(&static_keys[next]).is_ok());
    });
    let absolute_ns = ns_per_call(|key| {
        black_box(limiter.local().absolute().inc(key, &rate, 1));
    });
    let suppressed_ns = ns_per_call(|key| {
        black_box(limiter.local().suppressed().inc(key, &rate, 1));
    });

    println!("local provider vs governor, {KEYS} keys, 1 thread, best of {ROUNDS} x {CALLS} calls");
    println!("{:<44} {:>8}", "", "ns/call");
    println!(
        "{:<44} {:>8.1}",
        "governor check_key (String keys)", governor_ns
    );
    println!(
        "{:<44} {:>8.1}",
        "governor check_key (&'static str keys)", governor_static_ns
    );
    println!(
        "{:<44} {:>8.1}",
        "trypema local absolute inc (&str keys)", absolute_ns
    );
    println!(
        "{:<44} {:>8.1}",
        "trypema local suppressed inc (&str keys)", suppressed_ns
    );
    println!(
        "ratio absolute/governor: {:.2}x (String keys), {:.2}x (&'static str keys)",
        absolute_ns / governor_ns,
        absolute_ns / governor_static_ns
    );
}
