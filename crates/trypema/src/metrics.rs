//! Counters of what a limiter decided and how its Redis round trips went: cheap relaxed atomics
//! on the call paths, read as a [`MetricsSnapshot`] or as Prometheus text.

use std::{
    fmt::Write,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use crate::RateLimitDecision;

/// Where a decision was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Local,
    Redis,
    Hybrid,
}

/// Which strategy made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Absolute,
    Suppressed,
}

const PROVIDERS: [(Provider, &str); 3] = [
    (Provider::Local, "local"),
    (Provider::Redis, "redis"),
    (Provider::Hybrid, "hybrid"),
];
const STRATEGIES: [(Strategy, &str); 2] = [
    (Strategy::Absolute, "absolute"),
    (Strategy::Suppressed, "suppressed"),
];

/// Latency buckets: upper bounds of 2^i microseconds, i = 0 .. 24 (about 16.8 s), then +Inf.
const LATENCY_BUCKETS: usize = 26;

#[derive(Default)]
struct DecisionCounters {
    allowed: AtomicU64,
    rejected: AtomicU64,
    suppressed_admitted: AtomicU64,
    suppressed_declined: AtomicU64,
    errors: AtomicU64,
    degraded: AtomicU64,
}

/// Live counters, shared by a limiter's providers.
#[derive(Default)]
pub(crate) struct Metrics {
    decisions: [[DecisionCounters; 2]; 3],
    round_trips: AtomicU64,
    round_trip_failures: AtomicU64,
    latency: [AtomicU64; LATENCY_BUCKETS],
    latency_sum_us: AtomicU64,
    breaker_opened: AtomicU64,
    leases_taken: AtomicU64,
    leases_returned: AtomicU64,
}

fn index(provider: Provider, strategy: Strategy) -> (usize, usize) {
    let p = match provider {
        Provider::Local => 0,
        Provider::Redis => 1,
        Provider::Hybrid => 2,
    };
    let s = match strategy {
        Strategy::Absolute => 0,
        Strategy::Suppressed => 1,
    };
    (p, s)
}

impl Metrics {
    #[inline]
    fn counters(&self, provider: Provider, strategy: Strategy) -> &DecisionCounters {
        let (p, s) = index(provider, strategy);
        &self.decisions[p][s]
    }

    #[inline]
    pub(crate) fn decision(
        &self,
        provider: Provider,
        strategy: Strategy,
        decision: &RateLimitDecision,
        degraded: bool,
    ) {
        let counters = self.counters(provider, strategy);
        let counter = match decision {
            RateLimitDecision::Allowed => &counters.allowed,
            RateLimitDecision::Rejected { .. } => &counters.rejected,
            RateLimitDecision::Suppressed {
                is_allowed: true, ..
            } => &counters.suppressed_admitted,
            RateLimitDecision::Suppressed {
                is_allowed: false, ..
            } => &counters.suppressed_declined,
        };
        counter.fetch_add(1, Relaxed);
        if degraded {
            counters.degraded.fetch_add(1, Relaxed);
        }
    }

    #[cfg_attr(not(trypema_redis), allow(dead_code))]
    pub(crate) fn error(&self, provider: Provider, strategy: Strategy) {
        self.counters(provider, strategy)
            .errors
            .fetch_add(1, Relaxed);
    }

    #[cfg_attr(not(trypema_redis), allow(dead_code))]
    pub(crate) fn round_trip(&self, took: Duration, ok: bool) {
        self.round_trips.fetch_add(1, Relaxed);
        if !ok {
            self.round_trip_failures.fetch_add(1, Relaxed);
        }
        let micros = took.as_micros().min(u64::MAX as u128) as u64;
        let bucket =
            (64 - micros.saturating_sub(1).leading_zeros() as usize).min(LATENCY_BUCKETS - 1);
        self.latency[bucket].fetch_add(1, Relaxed);
        self.latency_sum_us.fetch_add(micros, Relaxed);
    }

    #[cfg_attr(not(trypema_redis), allow(dead_code))]
    pub(crate) fn breaker_opened(&self) {
        self.breaker_opened.fetch_add(1, Relaxed);
    }

    #[cfg_attr(not(trypema_redis), allow(dead_code))]
    pub(crate) fn leases(&self, taken: u64, returned: u64) {
        if taken > 0 {
            self.leases_taken.fetch_add(taken, Relaxed);
        }
        if returned > 0 {
            self.leases_returned.fetch_add(returned, Relaxed);
        }
    }

    pub(crate) fn snapshot(&self) -> MetricsSnapshot {
        let mut decisions = Vec::new();
        for (provider, provider_name) in PROVIDERS {
            for (strategy, strategy_name) in STRATEGIES {
                let c = self.counters(provider, strategy);
                decisions.push(DecisionMetrics {
                    provider: provider_name,
                    strategy: strategy_name,
                    allowed: c.allowed.load(Relaxed),
                    rejected: c.rejected.load(Relaxed),
                    suppressed_admitted: c.suppressed_admitted.load(Relaxed),
                    suppressed_declined: c.suppressed_declined.load(Relaxed),
                    errors: c.errors.load(Relaxed),
                    degraded: c.degraded.load(Relaxed),
                });
            }
        }
        let latency: Vec<u64> = self.latency.iter().map(|b| b.load(Relaxed)).collect();
        MetricsSnapshot {
            decisions,
            redis_round_trips: self.round_trips.load(Relaxed),
            redis_failures: self.round_trip_failures.load(Relaxed),
            redis_latency_p50_ms: percentile(&latency, 0.50),
            redis_latency_p99_ms: percentile(&latency, 0.99),
            redis_latency_sum_ms: self.latency_sum_us.load(Relaxed) as f64 / 1000.0,
            redis_latency_buckets: latency,
            breaker_opened: self.breaker_opened.load(Relaxed),
            hybrid_leased_units: self.leases_taken.load(Relaxed),
            hybrid_returned_units: self.leases_returned.load(Relaxed),
        }
    }
}

/// Upper bound (ms) of the latency bucket holding the `q` quantile.
fn percentile(buckets: &[u64], q: f64) -> f64 {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, count) in buckets.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return bucket_upper_ms(i);
        }
    }
    bucket_upper_ms(buckets.len() - 1)
}

fn bucket_upper_ms(i: usize) -> f64 {
    if i == LATENCY_BUCKETS - 1 {
        f64::INFINITY
    } else {
        (1u64 << i) as f64 / 1000.0
    }
}

/// Counters of one provider and strategy.
#[derive(Debug, Clone, PartialEq)]
pub struct DecisionMetrics {
    pub provider: &'static str,
    pub strategy: &'static str,
    pub allowed: u64,
    pub rejected: u64,
    pub suppressed_admitted: u64,
    pub suppressed_declined: u64,
    /// Calls that failed (Redis unavailable under the `Reject` policy, invalid input is not counted).
    pub errors: u64,
    /// Decisions made by the outage policy while Redis was unreachable.
    pub degraded: u64,
}

/// A point-in-time copy of a limiter's counters.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSnapshot {
    pub decisions: Vec<DecisionMetrics>,
    pub redis_round_trips: u64,
    pub redis_failures: u64,
    /// Approximate (upper bound of a power-of-two bucket).
    pub redis_latency_p50_ms: f64,
    pub redis_latency_p99_ms: f64,
    pub redis_latency_sum_ms: f64,
    /// Round trips per latency bucket; bucket `i` holds those up to 2^i µs, the last the rest.
    pub redis_latency_buckets: Vec<u64>,
    /// How often the circuit breaker opened.
    pub breaker_opened: u64,
    /// Units the hybrid provider reserved from Redis as leases, and gave back unused.
    pub hybrid_leased_units: u64,
    pub hybrid_returned_units: u64,
}

impl MetricsSnapshot {
    /// The counters in the Prometheus text exposition format (version 0.0.4).
    pub fn prometheus_text(&self) -> String {
        let mut out = String::new();
        type Family = (&'static str, &'static str, fn(&DecisionMetrics) -> u64);
        let families: [Family; 6] = [
            ("trypema_allowed_total", "Calls allowed.", |d| d.allowed),
            (
                "trypema_rejected_total",
                "Calls rejected (absolute).",
                |d| d.rejected,
            ),
            (
                "trypema_suppressed_admitted_total",
                "Calls over the soft limit that were admitted (suppressed).",
                |d| d.suppressed_admitted,
            ),
            (
                "trypema_suppressed_declined_total",
                "Calls shed (suppressed).",
                |d| d.suppressed_declined,
            ),
            (
                "trypema_errors_total",
                "Calls that failed because Redis was unavailable.",
                |d| d.errors,
            ),
            (
                "trypema_degraded_total",
                "Decisions made by the outage policy.",
                |d| d.degraded,
            ),
        ];
        for (name, help, value) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for d in &self.decisions {
                let _ = writeln!(
                    out,
                    "{name}{{provider=\"{}\",strategy=\"{}\"}} {}",
                    d.provider,
                    d.strategy,
                    value(d)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP trypema_redis_round_trip_seconds Redis round trips.\n# TYPE trypema_redis_round_trip_seconds histogram"
        );
        let mut cumulative = 0;
        for (i, count) in self.redis_latency_buckets.iter().enumerate() {
            cumulative += count;
            let le = if i == self.redis_latency_buckets.len() - 1 {
                "+Inf".to_string()
            } else {
                format!("{}", (1u64 << i) as f64 / 1e6)
            };
            let _ = writeln!(
                out,
                "trypema_redis_round_trip_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let _ = writeln!(
            out,
            "trypema_redis_round_trip_seconds_sum {}\ntrypema_redis_round_trip_seconds_count {}",
            self.redis_latency_sum_ms / 1000.0,
            self.redis_round_trips
        );
        let scalars = [
            (
                "trypema_redis_failures_total",
                "Redis round trips that failed.",
                self.redis_failures,
            ),
            (
                "trypema_breaker_opened_total",
                "Times the circuit breaker opened.",
                self.breaker_opened,
            ),
            (
                "trypema_hybrid_leased_units_total",
                "Units reserved from Redis as hybrid leases.",
                self.hybrid_leased_units,
            ),
            (
                "trypema_hybrid_returned_units_total",
                "Leased units given back unused.",
                self.hybrid_returned_units,
            ),
        ];
        for (name, help, value) in scalars {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_and_percentiles() {
        let metrics = Metrics::default();
        for _ in 0..98 {
            metrics.round_trip(Duration::from_micros(300), true);
        }
        metrics.round_trip(Duration::from_millis(40), false);
        metrics.round_trip(Duration::from_millis(40), false);
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.redis_round_trips, 100);
        assert_eq!(snapshot.redis_failures, 2);
        assert_eq!(snapshot.redis_latency_p50_ms, 0.512);
        assert_eq!(snapshot.redis_latency_p99_ms, 65.536);
        let text = snapshot.prometheus_text();
        assert!(text.contains("trypema_redis_round_trip_seconds_count 100"));
        assert!(text.contains("trypema_redis_round_trip_seconds_bucket{le=\"+Inf\"} 100"));
    }

    #[test]
    fn decisions_are_counted_per_provider_and_strategy() {
        let metrics = Metrics::default();
        metrics.decision(
            Provider::Hybrid,
            Strategy::Suppressed,
            &RateLimitDecision::Suppressed {
                suppression_factor: 0.5,
                is_allowed: false,
            },
            true,
        );
        metrics.decision(
            Provider::Local,
            Strategy::Absolute,
            &RateLimitDecision::Allowed,
            false,
        );
        let snapshot = metrics.snapshot();
        let hybrid = snapshot
            .decisions
            .iter()
            .find(|d| d.provider == "hybrid" && d.strategy == "suppressed")
            .unwrap();
        assert_eq!((hybrid.suppressed_declined, hybrid.degraded), (1, 1));
        assert!(snapshot
            .prometheus_text()
            .contains("trypema_allowed_total{provider=\"local\",strategy=\"absolute\"} 1"));
    }
}
