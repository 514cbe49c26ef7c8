//! Redis calls from JavaScript, settled in batches.
//!
//! A fresh promise per call, each resolved by its own cross-thread wake-up, costs more than the
//! Redis round trip. Instead, `index.js` owns the promises: calls are validated synchronously and
//! queued here (`redis_enqueue`), sent to the Tokio runtime once per microtask tick
//! (`redis_flush`), and their results are collected into one buffer. Only the first result
//! after a drain wakes JavaScript, which then takes every result at once (`redis_drain`).

use std::{
    cell::RefCell,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::{stream::FuturesUnordered, StreamExt};
use napi::{
    bindgen_prelude::{Float64Array, Unknown},
    threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode},
    Status,
};
use napi_derive::napi;
use trypema::{
    hybrid::HybridProvider, redis::RedisKey, redis::RedisProvider, RateLimit, RateLimitDecision,
    TrypemaError,
};

use crate::{
    convert::{self, KeyArg},
    limiter::with_limiter,
};

/// Called (with no arguments) when results are waiting. Weak: it never keeps Node alive by
/// itself; `index.js` holds a timer reference while calls are in flight.
pub type DrainCallback = ThreadsafeFunction<(), Unknown<'static>, (), Status, false, true>;

const OP_ABSOLUTE_INC: u32 = 0;
const OP_ABSOLUTE_IS_ALLOWED: u32 = 1;
const OP_SUPPRESSED_INC: u32 = 2;
const OP_SUPPRESSED_FACTOR: u32 = 3;
const OP_HYBRID_ABSOLUTE_INC: u32 = 4;
const OP_HYBRID_ABSOLUTE_IS_ALLOWED: u32 = 5;
const OP_HYBRID_SUPPRESSED_INC: u32 = 6;
const OP_HYBRID_SUPPRESSED_FACTOR: u32 = 7;

/// Result kinds in the drained buffer, four numbers per result: `id, kind, a, b`.
const DONE_ALLOWED: f64 = 0.0;
const DONE_REJECTED: f64 = 1.0; // a = retry_after_ms, b = remaining_after_waiting
const DONE_SUPPRESSED: f64 = 2.0; // a = factor, b = 1 if admitted
const DONE_FACTOR: f64 = 3.0; // a = factor
const DONE_ERROR: f64 = 4.0; // a = index into the drained errors

struct Job {
    id: f64,
    op: u32,
    key: RedisKey,
    rate: Option<RateLimit>,
    count: u64,
}

#[derive(Default)]
struct Results {
    numbers: Vec<f64>,
    errors: Vec<RedisCallError>,
}

/// What the Tokio side shares with the JavaScript thread.
struct Outbox {
    results: Mutex<Results>,
    wake: DrainCallback,
}

impl Outbox {
    fn push(&self, id: f64, outcome: Result<[f64; 3], TrypemaError>) {
        let was_empty = {
            let mut results = self
                .results
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            let was_empty = results.numbers.is_empty();
            match outcome {
                Ok([kind, a, b]) => results.numbers.extend([id, kind, a, b]),
                Err(error) => {
                    let index = results.errors.len() as f64;
                    results.errors.push(RedisCallError {
                        code: error.code().to_string(),
                        message: error.to_string(),
                    });
                    results.numbers.extend([id, DONE_ERROR, index, 0.0]);
                }
            }
            was_empty
        };
        // Results pushed after a drain always find the buffer empty, so no wake-up is lost.
        if was_empty {
            self.wake.call((), ThreadsafeFunctionCallMode::NonBlocking);
        }
    }
}

/// Per-limiter Redis state kept on the JavaScript thread.
pub(crate) struct RedisBridge {
    queued: RefCell<Vec<Job>>,
    outbox: Arc<Outbox>,
}

impl RedisBridge {
    pub(crate) fn new(wake: DrainCallback) -> Self {
        Self {
            queued: RefCell::new(Vec::new()),
            outbox: Arc::new(Outbox {
                results: Mutex::new(Results::default()),
                wake,
            }),
        }
    }
}

#[napi(object)]
pub struct RedisCallError {
    pub code: String,
    pub message: String,
}

#[napi(object)]
pub struct DrainedResults {
    /// `id, kind, a, b` per settled call.
    pub numbers: Float64Array,
    pub errors: Vec<RedisCallError>,
}

/// Validates a call and queues it; throws for invalid arguments, so nothing bad is queued.
#[napi(
    ts_args_type = "handle: number, op: number, id: number, key: string, rate: number, count: number"
)]
pub fn redis_enqueue(
    handle: u32,
    op: u32,
    id: f64,
    key: KeyArg,
    rate: f64,
    count: f64,
) -> napi::Result<(), &'static str> {
    with_limiter(handle, |limiter| {
        let bridge = limiter.redis_bridge()?;
        let key = key.redis()?;
        let (rate, count) = match op {
            OP_ABSOLUTE_INC
            | OP_SUPPRESSED_INC
            | OP_HYBRID_ABSOLUTE_INC
            | OP_HYBRID_SUPPRESSED_INC => (Some(convert::rate(rate)?), convert::count(count)?),
            OP_ABSOLUTE_IS_ALLOWED
            | OP_SUPPRESSED_FACTOR
            | OP_HYBRID_ABSOLUTE_IS_ALLOWED
            | OP_HYBRID_SUPPRESSED_FACTOR => (None, 0),
            _ => {
                return Err(napi::Error::new(
                    "TRYPEMA_INVALID_OPERATION",
                    format!("unknown operation {op}"),
                ))
            }
        };
        bridge.queued.borrow_mut().push(Job {
            id,
            op,
            key,
            rate,
            count,
        });
        Ok(())
    })
}

/// `hybrid*Try` result when the call needs Redis: it is then queued like a `redis` call.
pub(crate) const NEEDS_REDIS: f64 = -2.0;

/// Sends every queued call to the runtime in one hand-off.
#[napi]
pub fn redis_flush(handle: u32) -> napi::Result<(), &'static str> {
    with_limiter(handle, |limiter| {
        let bridge = limiter.redis_bridge()?;
        let jobs = std::mem::take(&mut *bridge.queued.borrow_mut());
        if jobs.is_empty() {
            return Ok(());
        }
        let providers = (limiter.core.redis().clone(), limiter.core.hybrid().clone());
        let outbox = bridge.outbox.clone();
        napi::bindgen_prelude::spawn(async move {
            // One task drives the whole batch; its calls are first polled, and so written to
            // the connection, in the order JavaScript made them.
            let mut running: FuturesUnordered<_> = jobs
                .iter()
                .map(|job| async {
                    let outcome = run(&providers.0, &providers.1, job).await;
                    outbox.push(job.id, outcome);
                })
                .collect();
            while running.next().await.is_some() {}
        });
        Ok(())
    })
}

async fn run(
    redis: &RedisProvider,
    hybrid: &HybridProvider,
    job: &Job,
) -> Result<[f64; 3], TrypemaError> {
    // Never panic here: a panic would end the batch's task and strand its Promises.
    let missing_rate =
        || TrypemaError::UnexpectedScriptResult("an inc was queued without a rate".into());
    let rate = || job.rate.as_ref().ok_or_else(missing_rate);
    let (key, count) = (&job.key, job.count);
    let decision = match job.op {
        OP_ABSOLUTE_INC => redis.absolute().inc(key, rate()?, count).await?,
        OP_ABSOLUTE_IS_ALLOWED => redis.absolute().is_allowed(key).await?,
        OP_SUPPRESSED_INC => redis.suppressed().inc(key, rate()?, count).await?,
        OP_HYBRID_ABSOLUTE_INC => hybrid.absolute().inc(key, rate()?, count).await?,
        OP_HYBRID_ABSOLUTE_IS_ALLOWED => hybrid.absolute().is_allowed(key).await?,
        OP_HYBRID_SUPPRESSED_INC => hybrid.suppressed().inc(key, rate()?, count).await?,
        OP_SUPPRESSED_FACTOR => {
            let factor = redis.suppressed().get_suppression_factor(key).await?;
            return Ok([DONE_FACTOR, factor, 0.0]);
        }
        OP_HYBRID_SUPPRESSED_FACTOR => {
            let factor = hybrid.suppressed().get_suppression_factor(key).await?;
            return Ok([DONE_FACTOR, factor, 0.0]);
        }
        other => {
            return Err(TrypemaError::UnexpectedScriptResult(format!(
                "unknown operation {other}"
            )))
        }
    };
    Ok(match decision {
        RateLimitDecision::Allowed => [DONE_ALLOWED, 0.0, 0.0],
        RateLimitDecision::Rejected {
            retry_after_ms,
            remaining_after_waiting,
            ..
        } => [
            DONE_REJECTED,
            retry_after_ms as f64,
            remaining_after_waiting as f64,
        ],
        RateLimitDecision::Suppressed {
            suppression_factor,
            is_allowed,
        } => [
            DONE_SUPPRESSED,
            suppression_factor,
            f64::from(u8::from(is_allowed)),
        ],
    })
}

/// Takes every result that has arrived since the last drain.
#[napi]
pub fn redis_drain(handle: u32) -> napi::Result<DrainedResults, &'static str> {
    with_limiter(handle, |limiter| {
        let bridge = limiter.redis_bridge()?;
        let taken = std::mem::take(
            &mut *bridge
                .outbox
                .results
                .lock()
                .unwrap_or_else(|poison| poison.into_inner()),
        );
        Ok(DrainedResults {
            numbers: Float64Array::new(taken.numbers),
            errors: taken.errors,
        })
    })
}

/// How long connecting may take before `build()` rejects, and how long a call may wait for
/// Redis before it fails: bounded, so that no Promise hangs when Redis misbehaves.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
pub(crate) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The outcome of connecting: a connection waiting to be handed to a limiter, or why there is
/// none. (Async napi functions can only reject with napi's own status codes, so the failure is
/// returned and `index.js` raises it as a `TRYPEMA_REDIS` error.)
#[napi]
pub struct RedisConnection {
    pub(crate) manager: Option<redis::aio::ConnectionManager>,
    failure: Option<String>,
}

#[napi]
impl RedisConnection {
    /// Why connecting failed, or `null`.
    #[napi(getter)]
    pub fn failure(&self) -> Option<String> {
        self.failure.clone()
    }
}

/// Connects to `url` within a bounded time.
#[napi]
pub async fn connect_redis(url: String) -> RedisConnection {
    match connect(url).await {
        Ok(manager) => RedisConnection {
            manager: Some(manager),
            failure: None,
        },
        Err(failure) => RedisConnection {
            manager: None,
            failure: Some(failure),
        },
    }
}

async fn connect(url: String) -> Result<redis::aio::ConnectionManager, String> {
    let describe = |error: redis::RedisError| TrypemaError::Redis(error).to_string();
    let client = redis::Client::open(url).map_err(describe)?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_millis(500));
    tokio::time::timeout(
        CONNECT_TIMEOUT * 2,
        client.get_connection_manager_with_config(config),
    )
    .await
    .map_err(|_| {
        format!(
            "redis error: could not connect within {:?}",
            CONNECT_TIMEOUT * 2
        )
    })?
    .map_err(describe)
}
