//! Randomised comparison of the local provider with a small reference model, plus the
//! lifecycle tests (cleanup of idle keys, the cleanup thread ending with the limiter).
//!
//! Every test here takes `common::serial()`: the thread-counting test must not see the
//! cleanup threads of limiters built by the others.

mod common;

use std::{
    collections::{HashMap, HashSet},
    fmt::Write as _,
    thread,
    time::{Duration, Instant},
};

use common::{rate, serial, Mocked};
use rand::{rngs::SmallRng, Rng, SeedableRng};
use trypema::{RateLimitDecision, RateLimiter, TrypemaError};

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

    /// The group in force: a window is never divided into more than 500 buckets.
    fn group_ms(&self) -> u64 {
        self.group_ms.max(self.window_ms().div_ceil(500))
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
                now - newest.start_ms <= self.window_ms() && now - newest.start_ms < self.group_ms()
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

    /// The refusal of `count` (`fits`: `count` is at most the capacity): the oldest bucket's
    /// departure and what is left then; a count that can never fit waits a whole window.
    fn rejection(&self, live: &[&ModelBucket], now: u64, fits: bool) -> RateLimitDecision {
        let window_ms = self.config.window_ms();
        let in_window: u64 = live.iter().map(|b| b.observed).sum();
        let (retry_after_ms, remaining_after_waiting) = match live.first() {
            Some(oldest) if fits => (
                oldest.start_ms + window_ms + 1 - now,
                in_window - oldest.observed,
            ),
            Some(oldest) => (window_ms, in_window - oldest.observed),
            // Only a count above the capacity is refused with an empty window.
            None => (window_ms, 0),
        };
        RateLimitDecision::Rejected {
            window_size_seconds: self.config.window_s,
            retry_after_ms,
            remaining_after_waiting,
        }
    }

    fn absolute_inc(&mut self, key: &str, rate: f64, count: u64, now: u64) -> RateLimitDecision {
        // A zero count always fits and changes nothing (it does not fix the key's rate).
        if count == 0 {
            return RateLimitDecision::Allowed;
        }
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
            self.rejection(&live, now, count <= state.capacity)
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
            self.rejection(&live, now, true)
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
        if count == 0 {
            // Records nothing and fixes no rate; decided on the key's live state, if any.
            let Some(state) = self.suppressed.get_mut(key) else {
                return RateLimitDecision::Allowed;
            };
            let accepted: u64 = config
                .live(&state.buckets, now)
                .iter()
                .map(|b| b.observed - b.declined)
                .sum();
            if config.live(&state.buckets, now).is_empty() || accepted as f64 <= state.soft {
                return RateLimitDecision::Allowed;
            }
            let suppression_factor = Self::factor(&config, state, accepted, now);
            let is_allowed = if suppression_factor == 0.0 {
                true
            } else if suppression_factor == 1.0 {
                false
            } else {
                coin.unwrap_or(true)
            };
            return RateLimitDecision::Suppressed {
                suppression_factor,
                is_allowed,
            };
        }
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
    rejected_for_a_whole_window: usize,
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
                window_size_seconds,
                retry_after_ms,
                remaining_after_waiting,
            } => {
                self.rejected_for_a_whole_window +=
                    usize::from(retry_after_ms == window_size_seconds * 1000);
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
    let (mut named_absolute, mut named_suppressed) = (HashSet::new(), HashSet::new());
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
                named_absolute.insert(key);
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
                named_suppressed.insert(key);
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
    // The crate keeps state for every key the model has state for (an inc with a count of at
    // least 1), and for no key that no inc named. Whether an inc with a count of 0 may leave an
    // empty entry is `local_absolute.rs`'s `a_zero_count_creates_no_state`.
    let local = t.rl.local();
    let (absolute, suppressed) = (local.absolute().key_count(), local.suppressed().key_count());
    if !(model.absolute.len()..=named_absolute.len()).contains(&absolute)
        || !(model.suppressed.len()..=named_suppressed.len()).contains(&suppressed)
    {
        return Err(format!(
            "seed {seed}: the crate has state for {absolute} absolute and {suppressed} \
             suppressed keys; the model for {} and {}, of {} and {} named",
            model.absolute.len(),
            model.suppressed.len(),
            named_absolute.len(),
            named_suppressed.len()
        ));
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
            "rejections of a count above the capacity (a whole window)",
            c.rejected_for_a_whole_window,
        ),
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

/// Settings are validated at build: among them, local state may not be dropped before its
/// window is over (`stale_after_ms` at least the window, which is the default).
#[test]
fn stale_after_shorter_than_the_window_is_rejected() {
    let _serial = serial();
    for (window_s, stale_after_ms) in [(10, 50), (10, 9_999), (1, 999)] {
        let builder = RateLimiter::local_builder()
            .window_size_seconds(window_s)
            .stale_after_ms(stale_after_ms);
        assert_eq!(
            builder.validate(),
            Err(TrypemaError::InvalidStaleAfter(stale_after_ms))
        );
        match builder.build() {
            Err(error) => {
                assert_eq!(error, TrypemaError::InvalidStaleAfter(stale_after_ms));
                assert_eq!(error.code(), "TRYPEMA_INVALID_STALE_AFTER");
            }
            Ok(_) => panic!("stale_after_ms {stale_after_ms} < window {window_s} s was accepted"),
        }
    }
    for (window_s, stale_after_ms) in [(10, 10_000), (1, 1000), (1, 60_000)] {
        RateLimiter::local_builder()
            .window_size_seconds(window_s)
            .stale_after_ms(stale_after_ms)
            .build()
            .unwrap_or_else(|error| panic!("{window_s} s, {stale_after_ms} ms: {error}"));
    }
}

/// Keys idle longer than `stale_after_ms` (by the limiter's clock, here a mock) are dropped by
/// the background cleanup; keys used since keep their state. The cleanup thread runs every
/// 20 ms of real time; the test waits for it.
#[test]
fn cleanup_drops_idle_keys_and_keeps_active_ones() {
    let _serial = serial();
    const STALE_AFTER_MS: u64 = 10_000; // = the window
    let mut t = Mocked::build(
        RateLimiter::local_builder()
            .window_size_seconds(10)
            .rate_group_size_ms(100)
            .cleanup_interval_ms(20)
            .stale_after_ms(STALE_AFTER_MS),
    );
    // Capacity floor(10 × 0.2) = 2 (absolute) and S = H = 2 (suppressed).
    let small = rate(0.2);
    let big = rate(1000.0);
    let hard_refusal = RateLimitDecision::Suppressed {
        suppression_factor: 1.0,
        is_allowed: false,
    };
    for key in ["active", "idle-0", "idle-1", "idle-2", "idle-3", "idle-4"] {
        assert_eq!(
            t.rl.local().absolute().inc(key, &small, 1),
            RateLimitDecision::Allowed
        );
        assert_eq!(
            t.rl.local().suppressed().inc(key, &small, 1),
            RateLimitDecision::Allowed
        );
    }
    let counts = |t: &Mocked| {
        (
            t.rl.local().absolute().key_count(),
            t.rl.local().suppressed().key_count(),
        )
    };
    assert_eq!(counts(&t), (6, 6));

    // Halfway through, "active" is used again (a second unit, in a bucket of its own).
    t.at(5000);
    assert_eq!(
        t.rl.local().absolute().inc("active", &small, 1),
        RateLimitDecision::Allowed
    );
    assert_eq!(
        t.rl.local().suppressed().inc("active", &small, 1),
        RateLimitDecision::Allowed
    );
    // Idle for exactly stale_after_ms: not yet stale. Ten sweeps' worth of real time pass
    // (a negative check can only wait; 200 ms is 10 cleanup intervals).
    t.at(STALE_AFTER_MS);
    thread::sleep(Duration::from_millis(200));
    assert_eq!(counts(&t), (6, 6), "keys idle for stale_after_ms are kept");

    // One millisecond more: the idle keys go at the next sweep.
    t.at(STALE_AFTER_MS + 1);
    assert!(
        settles(Duration::from_secs(5), || counts(&t) == (1, 1)),
        "the idle keys were not dropped within 5 s of real time: {:?}",
        counts(&t)
    );

    // The active key kept its state: the unit from 5000 ms is still in the window and the
    // rate it was created with still applies (capacity 2, not 10 000).
    assert_eq!(
        t.rl.local().absolute().inc("active", &big, 1),
        RateLimitDecision::Allowed
    );
    assert!(matches!(
        t.rl.local().absolute().inc("active", &big, 1),
        RateLimitDecision::Rejected { .. }
    ));
    assert_eq!(
        t.rl.local().suppressed().inc("active", &big, 1),
        RateLimitDecision::Allowed
    );
    assert_eq!(
        t.rl.local().suppressed().inc("active", &big, 1),
        hard_refusal
    );
    // The idle keys' state is gone: a new call starts afresh at the new rate.
    assert_eq!(
        t.rl.local().absolute().inc("idle-0", &big, 100),
        RateLimitDecision::Allowed
    );
    assert_eq!(
        t.rl.local().suppressed().inc("idle-0", &big, 100),
        RateLimitDecision::Allowed
    );
}

/// Threads of this process named `trypema-cleanup`, from `/proc/self/task` (Linux). Panics
/// where that cannot be read: the test that uses it must not pass without looking.
fn cleanup_thread_count() -> usize {
    let tasks = std::fs::read_dir("/proc/self/task").unwrap_or_else(|error| {
        panic!("cannot read /proc/self/task ({error}): this test counts threads through /proc")
    });
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim() == "trypema-cleanup")
        .count()
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

/// One cleanup thread serves every limiter of the process: 200 limiters add at most one
/// `trypema-cleanup` thread, and once the last of them is dropped the thread exits.
#[test]
fn limiters_share_one_cleanup_thread_that_ends_with_the_last() {
    let _serial = serial();
    // No other limiter of this binary is alive while we hold the lock.
    assert!(
        settles(Duration::from_secs(5), || trypema::scheduled_limiters()
            == 0
            && cleanup_thread_count() == 0),
        "a cleanup thread is left from before: {} limiters scheduled, {} threads",
        trypema::scheduled_limiters(),
        cleanup_thread_count()
    );

    // 200 limiters alive at once, whatever their cleanup interval: one thread.
    let limiters: Vec<RateLimiter> = (0..200)
        .map(|i| {
            RateLimiter::local_builder()
                .window_size_seconds(1)
                .cleanup_interval_ms(if i % 2 == 0 { 10_000 } else { 1 })
                .build()
                .unwrap()
        })
        .collect();
    assert_eq!(trypema::scheduled_limiters(), 200);
    // (A new thread names itself once it runs, so its name may take a moment to show.)
    assert!(
        settles(Duration::from_secs(5), || cleanup_thread_count() == 1),
        "expected one cleanup thread for 200 limiters, found {}",
        cleanup_thread_count()
    );
    for rl in &limiters {
        assert_eq!(
            rl.local().absolute().inc("k", &rate(1.0), 1),
            RateLimitDecision::Allowed
        );
    }
    // Sweeping every millisecond for half of them still takes one thread.
    thread::sleep(Duration::from_millis(50));
    assert_eq!(cleanup_thread_count(), 1);
    drop(limiters);
    assert_eq!(trypema::scheduled_limiters(), 0);
    assert!(
        settles(Duration::from_secs(5), || cleanup_thread_count() == 0),
        "the cleanup thread did not exit once every limiter was dropped ({} left)",
        cleanup_thread_count()
    );

    // Built and dropped in quick succession, without ever being used: the thread starts and
    // ends with them (a thread that is ending may still be listed for a moment while the next
    // one starts), and none is left at the end.
    for i in 0..200 {
        let rl = RateLimiter::local_builder()
            .cleanup_interval_ms(1 + i % 20)
            .build()
            .unwrap();
        assert_eq!(trypema::scheduled_limiters(), 1);
        drop(rl);
    }
    assert_eq!(trypema::scheduled_limiters(), 0);
    assert!(
        settles(Duration::from_secs(5), || cleanup_thread_count() == 0),
        "the cleanup thread did not exit ({} left)",
        cleanup_thread_count()
    );
}
