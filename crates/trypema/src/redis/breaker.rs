//! The circuit breaker in front of Redis: after Redis fails to answer (refused, dropped, timed
//! out), calls fail at once instead of each waiting for its own timeout, and one background
//! probe at a time checks whether Redis answers again.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use super::connection::{bounded, Connection};
use crate::TrypemaError;

/// How often an open breaker lets a probe through.
const PROBE_EVERY: Duration = Duration::from_millis(100);

#[derive(Default, Clone)]
pub(crate) struct Breaker {
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    open: AtomicBool,
    /// Microseconds since `epoch` when the next probe may start.
    next_probe_us: AtomicU64,
    probing: AtomicBool,
    last_error: Mutex<String>,
    epoch: std::sync::OnceLock<Instant>,
}

impl State {
    fn now_us(&self) -> u64 {
        self.epoch.get_or_init(Instant::now).elapsed().as_micros() as u64
    }
}

impl Breaker {
    pub(crate) fn is_open(&self) -> bool {
        self.state.open.load(Ordering::Acquire)
    }

    /// `Err` while open (and starts a probe when one is due), `Ok` when calls may go to Redis.
    /// The probe is a PING, or on a cluster an `EXISTS probe_key` on the node of that key.
    pub(crate) fn check(
        &self,
        connection: &Connection,
        limit: Duration,
        probe_key: Option<&str>,
    ) -> Result<(), TrypemaError> {
        let state = &self.state;
        if !state.open.load(Ordering::Acquire) {
            return Ok(());
        }
        let now = state.now_us();
        if now >= state.next_probe_us.load(Ordering::Acquire)
            && !state.probing.swap(true, Ordering::AcqRel)
        {
            let probe_state = state.clone();
            let connection = connection.clone();
            let probe_key = probe_key.map(str::to_owned);
            let started = crate::runtime::spawn(async move {
                // Any reply (even a refusal of the probe itself) means Redis answers again.
                let answered = !matches!(
                    bounded(limit, connection.probe(probe_key.as_deref())).await,
                    Err(error) if error.is_outage()
                );
                if answered {
                    probe_state.open.store(false, Ordering::Release);
                }
                let next = probe_state.now_us() + PROBE_EVERY.as_micros() as u64;
                probe_state.next_probe_us.store(next, Ordering::Release);
                probe_state.probing.store(false, Ordering::Release);
            });
            if started.is_err() {
                state.probing.store(false, Ordering::Release);
            }
        }
        let last = state
            .last_error
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone();
        Err(TrypemaError::RedisConnection(format!(
            "circuit open after: {last}; probing every {} ms",
            PROBE_EVERY.as_millis()
        )))
    }

    /// Records an outage; returns whether this opened the breaker.
    pub(crate) fn trip(&self, error: &TrypemaError) -> bool {
        let state = &self.state;
        *state
            .last_error
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = error.to_string();
        state.next_probe_us.store(
            state.now_us() + PROBE_EVERY.as_micros() as u64,
            Ordering::Release,
        );
        !state.open.swap(true, Ordering::AcqRel)
    }

    /// A round trip succeeded: Redis answers.
    pub(crate) fn close(&self) {
        if self.state.open.load(Ordering::Relaxed) {
            self.state.open.store(false, Ordering::Release);
        }
    }
}
