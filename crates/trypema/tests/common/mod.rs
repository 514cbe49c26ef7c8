//! Helpers shared by the local-provider integration tests.
#![allow(dead_code)]

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use quanta::Mock;
use trypema::{RateLimit, RateLimitDecision, RateLimiter, RateLimiterBuilder};

/// A limiter whose time only moves when the test says so.
pub struct Mocked {
    pub rl: RateLimiter,
    mock: Arc<Mock>,
    now_ms: u64,
}

impl Mocked {
    /// Builds `builder` with a mock clock that starts at 0 ms.
    pub fn build(builder: RateLimiterBuilder) -> Self {
        let (clock, mock) = quanta::Clock::mock();
        let rl = builder.clock(clock).build().expect("valid settings");
        Self {
            rl,
            mock,
            now_ms: 0,
        }
    }

    /// Window `window_s` seconds, coalescing `group_ms`, everything else default.
    pub fn new(window_s: u64, group_ms: u64) -> Self {
        Self::build(
            RateLimiter::local_builder()
                .window_size_seconds(window_s)
                .rate_group_size_ms(group_ms),
        )
    }

    /// Moves the clock forward by `ms`.
    pub fn advance(&mut self, ms: u64) {
        self.mock.increment(Duration::from_millis(ms));
        self.now_ms += ms;
    }

    /// Moves the clock forward to `ms` since build (never backwards).
    pub fn at(&mut self, ms: u64) {
        assert!(
            ms >= self.now_ms,
            "time only moves forward ({} -> {ms})",
            self.now_ms
        );
        let delta = ms - self.now_ms;
        self.advance(delta);
    }

    /// Milliseconds since build, as the limiter sees them.
    pub fn now(&self) -> u64 {
        self.now_ms
    }
}

pub fn rate(value: f64) -> RateLimit {
    RateLimit::try_from(value).expect("valid rate")
}

pub fn rejected(
    window_s: u64,
    retry_after_ms: u64,
    remaining_after_waiting: u64,
) -> RateLimitDecision {
    RateLimitDecision::Rejected {
        window_size_seconds: window_s,
        retry_after_ms,
        remaining_after_waiting,
    }
}

/// Serialises the tests of one binary that must not overlap (thread counting, timing).
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
