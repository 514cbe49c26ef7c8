//! Randomised comparison of the local provider with a small reference model, plus the
//! lifecycle tests (cleanup of idle keys, the cleanup thread ending with the limiter).
//!
//! Every test here takes `common::serial()`: the thread-counting test must not see the
//! cleanup threads of limiters built by the others.

mod common;

use std::{
    collections::HashMap,
    fmt::Write as _,
    thread,
    time::{Duration, Instant},
};

use common::{rate, serial, Mocked};
use rand::{rngs::SmallRng, Rng, SeedableRng};
use trypema::{RateLimitDecision, RateLimiter};

// ---------------------------------------------------------------------------------------------
// Reference model
// ---------------------------------------------------------------------------------------------

/// One bucket: when it started and what it holds. Sums are always recomputed by filtering.
#[derive(Debug, Clone, Copy)]
struct ModelBucket {
    start_ms: u64,
    observed: u64,
    declined: u64,
}

#[derive(Debug, Clone, Copy)]
struct Config {
    window_s: u64,
    group_ms: u64,
    hard_limit_factor: f64,
    cache_ms: u64,
}

impl Config {
    fn window_ms(&self) -> u64 {
        self.window_s * 1000
    }

    /// Counted while `now - start <= window_ms`.
    fn live<'a>(&self, buckets: &'a [ModelBucket], now: u64) -> Vec<&'a ModelBucket> {
        buckets
            .iter()
            .filter(|b| now - b.start_ms <= self.window_ms())
            .collect()
    }

    /// Adds `count` to the newest live bucket if it started less than `group_ms` ago, else
    /// opens a new bucket. Returns the index of the bucket that got the count.
    fn record(&self, buckets: &mut Vec<ModelBucket>, now: u64, count: u64) -> usize {
        let joins = match buckets.last() {
            Some(newest) => {
                now - newest.start_ms <= self.window_ms() && now - newest.start_ms < self.group_ms
            }
            None => false,
        };
        if !joins {
            buckets.push(ModelBucket {
                start_ms: now,
                observed: 0,
                declined: 0,
            });
        }
        let index = buckets.len() - 1;
        buckets[index].observed += count;
        index
    }
}

#[derive(Debug)]
struct AbsoluteKey {
    capacity: u64,
    buckets: Vec<ModelBucket>,
}

#[derive(Debug)]
struct SuppressedKey {
    rate: f64,
    soft: f64,
    hard: f64,
    buckets: Vec<ModelBucket>,
    cached: f64,
    cached_until: u64,
}

#[derive(Debug)]
struct Model {
    config: Config,
    absolute: HashMap<String, AbsoluteKey>,
    suppressed: HashMap<String, SuppressedKey>,
}

impl Model {
    fn new(config: Config) -> Self {
        Self {
            config,
            absolute: HashMap::new(),
            suppressed: HashMap::new(),
        }
    }

    fn capacity(&self, rate: f64) -> u64 {
        (self.config.window_s as f64 * rate).floor() as u64
    }

    fn rejection(&self, live: &[&ModelBucket], now: u64) -> RateLimitDecision {
        let window_ms = self.config.window_ms();
        let in_window: u64 = live.iter().map(|b| b.observed).sum();
        let (retry_after_ms, remaining_after_waiting) = match live.first() {
            Some(oldest) => (
                oldest.start_ms + window_ms + 1 - now,
                in_window - oldest.observed,
            ),
            // The spec leaves this open (only a count above the capacity is refused with an
            // empty window); the crate answers "a whole window, nothing left".
            None => (window_ms, 0),
        };
        RateLimitDecision::Rejected {
            window_size_seconds: self.config.window_s,
            retry_after_ms,
            remaining_after_waiting,
        }
    }

    fn absolute_inc(&mut self, key: &str, rate: f64, count: u64, now: u64) -> RateLimitDecision {
        let capacity_for_rate = self.capacity(rate);
        let config = self.config;
        let mut state = self.absolute.remove(key).unwrap_or(AbsoluteKey {
            capacity: capacity_for_rate,
            buckets: Vec::new(),
        });
        let live = config.live(&state.buckets, now);
        if live.is_empty() {
            state.capacity = capacity_for_rate;
        }
        let in_window: u64 = live.iter().map(|b| b.observed).sum();
        let decision = if in_window + count > state.capacity {
            self.rejection(&live, now)
        } else {
            config.record(&mut state.buckets, now, count);
            RateLimitDecision::Allowed
        };
        self.absolute.insert(key.to_string(), state);
        decision
    }

    fn absolute_is_allowed(&self, key: &str, now: u64) -> RateLimitDecision {
        let Some(state) = self.absolute.get(key) else {
            return RateLimitDecision::Allowed;
        };
        let live = self.config.live(&state.buckets, now);
        let in_window: u64 = live.iter().map(|b| b.observed).sum();
        if live.is_empty() || in_window < state.capacity {
            RateLimitDecision::Allowed
        } else {
            self.rejection(&live, now)
        }
    }

    fn limits(&self, rate: f64) -> (f64, f64) {
        let soft = self.config.window_s as f64 * rate;
        (soft, soft * self.config.hard_limit_factor)
    }

    /// `f`, given what is accepted, reusing a value computed less than `cache_ms` ago.
    fn factor(config: &Config, state: &mut SuppressedKey, accepted: u64, now: u64) -> f64 {
        let accepted = accepted as f64;
        if accepted < state.soft {
            return 0.0;
        }
        if accepted >= state.hard {
            return 1.0;
        }
        if now >= state.cached_until {
            let live = config.live(&state.buckets, now);
            let observed: u64 = live.iter().map(|b| b.observed).sum();
            let last_second: u64 = live
                .iter()
                .filter(|b| now - b.start_ms < 1000)
                .map(|b| b.observed)
                .sum();
            let average = observed as f64 / config.window_s as f64;
            let perceived = average.max(last_second as f64);
            state.cached = if perceived <= 0.0 {
                0.0
            } else {
                (1.0 - state.rate / perceived).clamp(0.0, 1.0)
            };
            state.cached_until = now + config.cache_ms;
        }
        state.cached
    }

    /// The suppressed decision the model expects; `coin` is what the crate's random draw said
    /// for this call (the only thing the model cannot know), used only where the draw matters.
    fn suppressed_inc(
        &mut self,
        key: &str,
        rate: f64,
        count: u64,
        now: u64,
        coin: Option<bool>,
    ) -> RateLimitDecision {
        let (soft, hard) = self.limits(rate);
        let config = self.config;
        let mut state = self.suppressed.remove(key).unwrap_or(SuppressedKey {
            rate,
            soft,
            hard,
            buckets: Vec::new(),
            cached: 0.0,
            cached_until: 0,
        });
        let live = config.live(&state.buckets, now);
        if live.is_empty() {
            (state.rate, state.soft, state.hard) = (rate, soft, hard);
            state.cached_until = 0;
        }
        let accepted: u64 = live.iter().map(|b| b.observed - b.declined).sum();
        let index = config.record(&mut state.buckets, now, count);
        let admitted_if_allowed = (accepted + count) as f64;
        let decision = if admitted_if_allowed <= state.soft {
            RateLimitDecision::Allowed
        } else if admitted_if_allowed > state.hard {
            RateLimitDecision::Suppressed {
                suppression_factor: 1.0,
                is_allowed: false,
            }
        } else {
            let suppression_factor = Self::factor(&config, &mut state, accepted, now);
            // A factor of 0 admits and a factor of 1 declines whatever the coin says.
            let is_allowed = if suppression_factor == 0.0 {
                true
            } else if suppression_factor == 1.0 {
                false
            } else {
                coin.unwrap_or(true)
            };
            RateLimitDecision::Suppressed {
                suppression_factor,
                is_allowed,
            }
        };
        if !decision.is_allowed() {
            state.buckets[index].declined += count;
        }
        self.suppressed.insert(key.to_string(), state);
        decision
    }

    fn suppression_factor(&mut self, key: &str, now: u64) -> f64 {
        let config = self.config;
        let Some(state) = self.suppressed.get_mut(key) else {
            return 0.0;
        };
        let accepted: u64 = config
            .live(&state.buckets, now)
            .iter()
            .map(|b| b.observed - b.declined)
            .sum();
        Self::factor(&config, state, accepted, now)
    }
}

// ---------------------------------------------------------------------------------------------
// Randomised comparison
// ---------------------------------------------------------------------------------------------

const KEYS: [&str; 3] = ["alpha", "beta", "gamma"];
/// Capacities with a 1 s window: 1, 2, 3, 4, 8, 12; with 2 s: 2, 5, 6, 9, 16, 25.
const RATES: [f64; 6] = [1.0, 2.5, 3.0, 4.7, 8.0, 12.5];
const SEQUENCES: u64 = 300;
const STEPS: usize = 200;
const DEFAULT_SEED: u64 = 0x7472_7970_656d_6101;

/// `TRYPEMA_MODEL_SEED=<n>` replays the sequence with that seed first.
fn base_seed() -> u64 {
    std::env::var("TRYPEMA_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED)
}

#[derive(Debug)]
enum Op {
    AbsoluteInc {
        key: &'static str,
        rate: f64,
        count: u64,
    },
    IsAllowed {
        key: &'static str,
    },
    SuppressedInc {
        key: &'static str,
        rate: f64,
        count: u64,
    },
    SuppressionFactor {
        key: &'static str,
    },
}

fn random_config(rng: &mut SmallRng) -> Config {
    Config {
        window_s: rng.random_range(1..=2),
        group_ms: [1, 10, 50, 300][rng.random_range(0..4)],
        hard_limit_factor: [1.0, 1.5, 3.0][rng.random_range(0..3)],
        cache_ms: [1, 100][rng.random_range(0..2)],
    }
}

fn random_advance(rng: &mut SmallRng, config: &Config) -> u64 {
    match rng.random_range(0..100) {
        0..=54 => 0,
        55..=89 => rng.random_range(0..400),
        // Sometimes more than a whole window, sometimes right around its edge.
        90..=94 => rng.random_range(config.window_ms()..3 * config.window_ms()),
        _ => rng.random_range(config.window_ms() - 3..=config.window_ms() + 1),
    }
}

fn random_op(rng: &mut SmallRng) -> Op {
    let key = KEYS[rng.random_range(0..KEYS.len())];
    let rate = RATES[rng.random_range(0..RATES.len())];
    let count = rng.random_range(0..5);
    match rng.random_range(0..100) {
        0..=44 => Op::AbsoluteInc { key, rate, count },
        45..=59 => Op::IsAllowed { key },
        60..=89 => Op::SuppressedInc { key, rate, count },
        _ => Op::SuppressionFactor { key },
    }
}

/// How often each interesting kind of decision came up, so the test can show that the random
/// sequences reach the cases that matter.
#[derive(Debug, Default)]
struct Coverage {
    allowed: usize,
    rejected_with_buckets: usize,
    rejected_at_the_edge: usize,
    shedding: usize,
    hard_refusals: usize,
    nonzero_factor_reads: usize,
}

impl Coverage {
    fn note(&mut self, decision: &RateLimitDecision) {
        match *decision {
            RateLimitDecision::Allowed => self.allowed += 1,
            RateLimitDecision::Rejected {
                retry_after_ms,
                remaining_after_waiting,
                ..
            } => {
                self.rejected_with_buckets += usize::from(remaining_after_waiting > 0);
                self.rejected_at_the_edge += usize::from(retry_after_ms <= 2);
            }
            RateLimitDecision::Suppressed {
                suppression_factor, ..
            } => {
                if suppression_factor > 0.0 && suppression_factor < 1.0 {
                    self.shedding += 1;
                } else if suppression_factor == 1.0 {
                    self.hard_refusals += 1;
                }
            }
        }
    }
}

/// Runs one sequence; on a mismatch returns a description that names the seed.
fn run_sequence(seed: u64, coverage: &mut Coverage) -> Result<(), String> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let config = random_config(&mut rng);
    let mut t = Mocked::build(
        RateLimiter::local_builder()
            .window_size_seconds(config.window_s)
            .rate_group_size_ms(config.group_ms)
            .hard_limit_factor(config.hard_limit_factor)
            .suppression_factor_cache_ms(config.cache_ms),
    );
    let mut model = Model::new(config);
    let mut history = String::new();
    for step in 0..STEPS {
        let advance = random_advance(&mut rng, &config);
        t.advance(advance);
        let now = t.now();
        let op = random_op(&mut rng);
        let _ = writeln!(history, "  step {step:3} at {now:6} ms: {op:?}");
        let local = t.rl.local();
        let (actual, expected) = match op {
            Op::AbsoluteInc {
                key,
                rate: r,
                count,
            } => {
                let actual = local.absolute().inc(key, &rate(r), count);
                coverage.note(&actual);
                (
                    format!("{actual:?}"),
                    format!("{:?}", model.absolute_inc(key, r, count, now)),
                )
            }
            Op::IsAllowed { key } => {
                let actual = local.absolute().is_allowed(key);
                coverage.note(&actual);
                (
                    format!("{actual:?}"),
                    format!("{:?}", model.absolute_is_allowed(key, now)),
                )
            }
            Op::SuppressedInc {
                key,
                rate: r,
                count,
            } => {
                let actual = local.suppressed().inc(key, &rate(r), count);
                coverage.note(&actual);
                let expected = model.suppressed_inc(key, r, count, now, Some(actual.is_allowed()));
                (format!("{actual:?}"), format!("{expected:?}"))
            }
            Op::SuppressionFactor { key } => {
                let actual = local.suppressed().get_suppression_factor(key);
                coverage.nonzero_factor_reads += usize::from(actual > 0.0);
                (
                    format!("{actual:?}"),
                    format!("{:?}", model.suppression_factor(key, now)),
                )
            }
        };
        // Debug formatting of f64 round-trips exactly, so equal strings mean equal values.
        if actual != expected {
            return Err(format!(
                "seed {seed} (rerun with TRYPEMA_MODEL_SEED={seed}), {config:?}\n\
                 step {step} at {now} ms, {op:?}:\n  crate: {actual}\n  model: {expected}\n\
                 history:\n{history}model state: {model:#?}"
            ));
        }
    }
    // The model and the crate agree on which keys have state.
    let local = t.rl.local();
    if local.absolute().key_count() != model.absolute.len()
        || local.suppressed().key_count() != model.suppressed.len()
    {
        return Err(format!("seed {seed}: key counts differ"));
    }
    Ok(())
}

#[test]
fn local_provider_matches_the_reference_model() {
    let _serial = serial();
    let base = base_seed();
    let mut coverage = Coverage::default();
    for i in 0..SEQUENCES {
        let seed = base.wrapping_add(i);
        if let Err(report) = run_sequence(seed, &mut coverage) {
            panic!("the local provider disagrees with the model\n{report}");
        }
    }
    // The sequences reached every case worth comparing.
    let c = &coverage;
    for (what, seen) in [
        ("allowed", c.allowed),
        (
            "rejections with a bucket left after waiting",
            c.rejected_with_buckets,
        ),
        (
            "rejections 1 or 2 ms before the oldest bucket leaves",
            c.rejected_at_the_edge,
        ),
        ("suppressed calls with 0 < f < 1", c.shedding),
        ("suppressed calls at the hard ceiling", c.hard_refusals),
        (
            "non-zero get_suppression_factor reads",
            c.nonzero_factor_reads,
        ),
    ] {
        assert!(seen >= 20, "only {seen} {what}: {coverage:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Cleanup
// ---------------------------------------------------------------------------------------------

/// Keys idle longer than `stale_after_ms` are dropped by the background task; active keys
/// keep their state. Real clock.
#[test]
fn cleanup_drops_idle_keys_and_keeps_active_ones() {
    let _serial = serial();
    const STALE_AFTER_MS: u64 = 50;
    let rl = RateLimiter::local_builder()
        .window_size_seconds(10)
        .cleanup_interval_ms(20)
        .stale_after_ms(STALE_AFTER_MS)
        .build()
        .unwrap();
    let local = rl.local();
    // Capacity floor(10 × 0.1) = 1 (absolute) and S = H = 1 (suppressed): one call fills a key,
    // so a key whose state survives refuses the next call even at a much higher rate.
    let small = rate(0.1);
    let big = rate(1000.0);
    let hard_refusal = RateLimitDecision::Suppressed {
        suppression_factor: 1.0,
        is_allowed: false,
    };
    for key in ["active", "idle-0", "idle-1", "idle-2", "idle-3", "idle-4"] {
        assert_eq!(
            local.absolute().inc(key, &small, 1),
            RateLimitDecision::Allowed
        );
        assert_eq!(
            local.suppressed().inc(key, &small, 1),
            RateLimitDecision::Allowed
        );
    }
    assert_eq!(local.absolute().key_count(), 6);
    assert_eq!(local.suppressed().key_count(), 6);

    let begin = Instant::now();
    let mut last_touch = Instant::now();
    let mut longest_gap = Duration::ZERO;
    let mut lost_active_state = 0;
    let mut touch = |local: &trypema::local::LocalProvider| {
        longest_gap = longest_gap.max(last_touch.elapsed());
        last_touch = Instant::now();
        if !matches!(
            local.absolute().inc("active", &big, 1),
            RateLimitDecision::Rejected { .. }
        ) {
            lost_active_state += 1;
        }
        if local.suppressed().inc("active", &big, 1) != hard_refusal {
            lost_active_state += 1;
        }
    };
    // Keep "active" busy for ~300 ms, then until the idle keys are gone (bounded).
    while begin.elapsed() < Duration::from_millis(300)
        || (local.absolute().key_count() > 1 || local.suppressed().key_count() > 1)
            && begin.elapsed() < Duration::from_secs(5)
    {
        touch(local);
        thread::sleep(Duration::from_millis(5));
    }
    touch(local);

    assert_eq!(
        local.absolute().key_count(),
        1,
        "only the active key is left (absolute)"
    );
    assert_eq!(
        local.suppressed().key_count(),
        1,
        "only the active key is left (suppressed)"
    );
    // The idle keys' state is really gone: a new call starts afresh at the new rate.
    assert_eq!(
        local.absolute().inc("idle-0", &big, 1),
        RateLimitDecision::Allowed
    );
    assert_eq!(
        local.suppressed().inc("idle-0", &big, 1),
        RateLimitDecision::Allowed
    );
    // The active key kept its state throughout, unless this thread was descheduled for
    // longer than the staleness limit (then the sweep was right to drop it).
    if longest_gap < Duration::from_millis(STALE_AFTER_MS * 4 / 5) {
        assert_eq!(
            lost_active_state, 0,
            "the active key was dropped (longest gap {longest_gap:?})"
        );
    } else {
        eprintln!("note: this thread stalled for {longest_gap:?}; not judging the active key");
    }
}

/// What `/proc/self/status` says about this process's threads (Linux only).
fn thread_count() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

/// Threads of this process named like the cleanup thread.
fn cleanup_thread_count() -> Option<usize> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    Some(
        tasks
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim() == "trypema-cleanup")
            .count(),
    )
}

/// Polls until `done` or the deadline; returns whether `done` happened.
fn settles(deadline: Duration, mut done: impl FnMut() -> bool) -> bool {
    let begin = Instant::now();
    while begin.elapsed() < deadline {
        if done() {
            return true;
        }
        thread::sleep(Duration::from_millis(10));
    }
    done()
}

#[test]
fn dropping_the_limiter_stops_its_cleanup_thread() {
    let _serial = serial();
    let Some(baseline) = thread_count() else {
        eprintln!("no /proc/self/status: skipping");
        return;
    };
    // No other limiter of this binary is alive while we hold the lock.
    assert!(settles(Duration::from_secs(5), || cleanup_thread_count() == Some(0)));

    // 200 limiters alive at once: 200 more threads, whatever their cleanup interval.
    let limiters: Vec<RateLimiter> = (0..200)
        .map(|i| {
            RateLimiter::local_builder()
                .cleanup_interval_ms(if i % 2 == 0 { 10_000 } else { 1 })
                .stale_after_ms(50)
                .build()
                .unwrap()
        })
        .collect();
    // Each limiter owns exactly one cleanup thread (named once it has started).
    assert!(
        settles(Duration::from_secs(5), || cleanup_thread_count()
            == Some(200)),
        "expected 200 cleanup threads, found {:?}",
        cleanup_thread_count()
    );
    let alive = thread_count().unwrap();
    assert!(
        alive >= 200,
        "baseline {baseline}, with 200 limiters {alive}"
    );
    for rl in &limiters {
        assert_eq!(
            rl.local().absolute().inc("k", &rate(1.0), 1),
            RateLimitDecision::Allowed
        );
    }
    drop(limiters);
    assert!(
        settles(Duration::from_secs(5), || thread_count().unwrap()
            <= baseline + 2
            && cleanup_thread_count() == Some(0)),
        "threads did not end: baseline {baseline}, now {:?} ({:?} cleanup threads)",
        thread_count(),
        cleanup_thread_count()
    );

    // Built and dropped in quick succession, without ever being used.
    for i in 0..200 {
        let rl = RateLimiter::local_builder()
            .cleanup_interval_ms(1 + i % 20)
            .build()
            .unwrap();
        drop(rl);
    }
    assert!(
        settles(Duration::from_secs(5), || thread_count().unwrap()
            <= baseline + 2
            && cleanup_thread_count() == Some(0)),
        "threads did not end: baseline {baseline}, now {:?}",
        thread_count()
    );
}
