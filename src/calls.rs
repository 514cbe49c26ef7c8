//! Asynchronous calls from JavaScript (Redis-backed decisions, building and closing limiters),
//! settled in batches.
//!
//! A fresh Promise per call, each resolved by its own cross-thread wake-up, costs more than the
//! Redis round trip. Instead, `index.js` owns the Promises: calls are validated synchronously and
//! queued here (`redisEnqueue`), handed to the runtime once per microtask tick (`redisFlush`),
//! and their results collected into one buffer per JavaScript thread. Only the first result
//! after a drain wakes JavaScript, which then takes every result at once (`redisDrain`).
//!
//! Nothing here refers to a JavaScript limiter object: a call holds the core limiter only while
//! it runs, so an unreachable limiter is freed by the garbage collector.

use std::{
    cell::RefCell,
    collections::HashMap,
    sync::{Arc, Mutex},
};

use futures_util::{stream::FuturesUnordered, StreamExt};
use napi::{
    bindgen_prelude::{Float64Array, Unknown},
    threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode},
    Env, Status,
};
use napi_derive::napi;
use trypema::{
    redis::RedisKey, Quota, QuotaDecision, RateLimit, RateLimitDecision, RateLimiter, TrypemaError,
};

use crate::{
    connect::{self, ConnectionOptions},
    convert::{self, configure, internal, js_error, KeyArg, LimiterOptions},
    limiter::{self, with_limiter},
    runtime,
};

/// Called (with no arguments) when results are waiting. Weak: it never keeps Node alive by
/// itself; `index.js` holds a timer reference while calls are in flight.
pub type DrainCallback = ThreadsafeFunction<(), Unknown<'static>, (), Status, false, true>;

/// Result kinds in the drained buffer; eight numbers per result:
/// `id, kind, a, b, limit, remaining, resetMs, flags`.
const DONE_ALLOWED: f64 = 0.0;
const DONE_REJECTED: f64 = 1.0; // a = retry_after_ms, b = remaining_after_waiting
const DONE_SUPPRESSED: f64 = 2.0; // a = factor, b = 1 if admitted
const DONE_NUMBER: f64 = 3.0; // a = the number (a factor, a refunded count)
const DONE_ERROR: f64 = 4.0; // a = index into the drained errors
const DONE_QUOTA: f64 = 5.0; // limit, remaining, resetMs
const DONE_VOID: f64 = 6.0;
/// `flags` bits.
const HAS_QUOTA: f64 = 1.0;
const DEGRADED: f64 = 2.0;

/// What a call asks for: `op = provider * 12 + strategy * 6 + action`, or [`OP_CLOSE`].
#[derive(Clone, Copy)]
enum Action {
    Inc,
    /// `is_allowed` (absolute) or `get_suppression_factor` (suppressed).
    Check,
    IncWithQuota,
    Get,
    Refund,
    Reset,
}

const OP_CLOSE: u32 = 100;

struct Job {
    id: f64,
    op: u32,
    key: Option<RedisKey>,
    rate: Option<RateLimit>,
    count: u64,
    core: Arc<RateLimiter>,
}

#[derive(Default)]
struct Results {
    numbers: Vec<f64>,
    errors: Vec<CallError>,
}

/// What the runtime shares with one JavaScript thread.
struct Outbox {
    results: Mutex<Results>,
    /// Limiters built by `redisBuild`, waiting for `NativeRateLimiter.adopt`.
    built: Mutex<HashMap<u64, RateLimiter>>,
    wake: DrainCallback,
}

impl Outbox {
    fn push(&self, id: f64, outcome: Result<[f64; 7], TrypemaError>) {
        let was_empty = {
            let mut results = self
                .results
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            let was_empty = results.numbers.is_empty();
            match outcome {
                Ok(numbers) => {
                    results.numbers.push(id);
                    results.numbers.extend(numbers);
                }
                Err(error) => {
                    let index = results.errors.len() as f64;
                    results.errors.push(CallError {
                        code: error.code().to_string(),
                        message: error.to_string(),
                    });
                    results
                        .numbers
                        .extend([id, DONE_ERROR, index, 0.0, 0.0, 0.0, 0.0, 0.0]);
                }
            }
            was_empty
        };
        // Results pushed after a drain always find the buffer empty, so no wake-up is lost.
        // A torn-down environment refuses the call, which is fine: nobody waits any more.
        if was_empty {
            self.wake.call((), ThreadsafeFunctionCallMode::NonBlocking);
        }
    }
}

/// The calling JavaScript thread's queue and outbox.
struct Thread {
    queued: Vec<Job>,
    outbox: Arc<Outbox>,
}

thread_local! {
    static THREAD: RefCell<Option<Thread>> = const { RefCell::new(None) };
}

fn with_thread<T>(
    work: impl FnOnce(&mut Thread) -> napi::Result<T, &'static str>,
) -> napi::Result<T, &'static str> {
    THREAD.with(|thread| match thread.borrow_mut().as_mut() {
        Some(thread) => work(thread),
        None => Err(internal(
            "trypema's binding was not initialised on this thread",
        )),
    })
}

/// Sets up this JavaScript thread: `drain` is called whenever results are waiting. When the
/// thread's environment is torn down (a worker terminated), its limiters are dropped, which
/// closes their connections even with calls in flight.
#[napi(catch_unwind, ts_args_type = "drain: () => void")]
pub fn init(env: Env, drain: DrainCallback) -> napi::Result<(), &'static str> {
    THREAD.with(|thread| {
        *thread.borrow_mut() = Some(Thread {
            queued: Vec::new(),
            outbox: Arc::new(Outbox {
                results: Mutex::new(Results::default()),
                built: Mutex::new(HashMap::new()),
                wake: drain,
            }),
        });
    });
    env.add_env_cleanup_hook((), |()| {
        // Runs from N-API's teardown: a panic must not cross into Node.
        let _ = std::panic::catch_unwind(|| {
            let _ = THREAD.try_with(|thread| thread.borrow_mut().take());
            limiter::release_all();
        });
    })
    .map_err(|error| internal(format!("could not register the cleanup hook: {error}")))?;
    Ok(())
}

#[napi(object)]
pub struct CallError {
    pub code: String,
    pub message: String,
}

#[napi(object)]
pub struct DrainedResults {
    /// Eight numbers per settled call: `id, kind, a, b, limit, remaining, resetMs, flags`.
    pub numbers: Float64Array,
    pub errors: Vec<CallError>,
}

fn decode(op: u32) -> Option<(bool, bool, Action)> {
    if op >= 24 {
        return None;
    }
    let action = match op % 6 {
        0 => Action::Inc,
        1 => Action::Check,
        2 => Action::IncWithQuota,
        3 => Action::Get,
        4 => Action::Refund,
        _ => Action::Reset,
    };
    Some((op >= 12, op % 12 >= 6, action))
}

/// Validates a call and queues it; throws for invalid arguments, so nothing bad is queued.
#[napi(
    catch_unwind,
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
    let Some((_, _, action)) = decode(op) else {
        return Err(napi::Error::new(
            "TRYPEMA_INVALID_OPERATION",
            format!("unknown operation {op}"),
        ));
    };
    let job = with_limiter(handle, |limiter| {
        limiter.require_redis()?;
        let key = key.redis()?;
        let (rate, count) = match action {
            Action::Inc | Action::IncWithQuota => {
                (Some(convert::rate(rate)?), convert::count(count)?)
            }
            Action::Get => (Some(convert::rate(rate)?), 0),
            Action::Refund => (None, convert::count(count)?),
            Action::Check | Action::Reset => (None, 0),
        };
        Ok(Job {
            id,
            op,
            key: Some(key),
            rate,
            count,
            core: limiter.core.clone(),
        })
    })?;
    with_thread(|thread| {
        thread.queued.push(job);
        Ok(())
    })
}

/// Queues giving back a limiter's hybrid leases and pushing its pending counts (`close()`).
#[napi(catch_unwind)]
pub fn close_enqueue(handle: u32, id: f64) -> napi::Result<(), &'static str> {
    let job = with_limiter(handle, |limiter| {
        Ok(Job {
            id,
            op: OP_CLOSE,
            key: None,
            rate: None,
            count: 0,
            core: limiter.core.clone(),
        })
    })?;
    with_thread(|thread| {
        thread.queued.push(job);
        Ok(())
    })
}

/// Sends every queued call to the runtime in one hand-off.
#[napi(catch_unwind)]
pub fn redis_flush() -> napi::Result<(), &'static str> {
    let (jobs, outbox) =
        with_thread(|thread| Ok((std::mem::take(&mut thread.queued), thread.outbox.clone())))?;
    if jobs.is_empty() {
        return Ok(());
    }
    let settle_all = {
        let outbox = outbox.clone();
        let ids: Vec<f64> = jobs.iter().map(|job| job.id).collect();
        move |error: napi::Error<&'static str>| {
            for id in ids {
                outbox.push(id, Err(TrypemaError::Internal(error.reason.clone())));
            }
        }
    };
    let spawned = runtime::spawn(async move {
        // One task drives the whole batch; its calls are first polled, and so written to the
        // connection, in the order JavaScript made them.
        let mut running: FuturesUnordered<_> = jobs
            .iter()
            .map(|job| {
                let outbox = &outbox;
                async move {
                    let outcome = std::panic::AssertUnwindSafe(run(job));
                    let outcome = futures_util::FutureExt::catch_unwind(outcome)
                        .await
                        .unwrap_or_else(|_| {
                            Err(TrypemaError::Internal(
                                "trypema panicked; this is a bug".into(),
                            ))
                        });
                    outbox.push(job.id, outcome);
                }
            })
            .collect();
        while running.next().await.is_some() {}
    });
    // Without a runtime every queued call still settles, with the reason.
    spawned.or_else(|error| {
        settle_all(error);
        Ok(())
    })
}

fn decision_numbers(decision: RateLimitDecision) -> [f64; 3] {
    match decision {
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
    }
}

fn with_decision(decision: RateLimitDecision) -> [f64; 7] {
    let [kind, a, b] = decision_numbers(decision);
    [kind, a, b, 0.0, 0.0, 0.0, 0.0]
}

fn with_quota(outcome: QuotaDecision) -> [f64; 7] {
    let [kind, a, b] = decision_numbers(outcome.decision);
    let [limit, remaining, reset_ms] = limiter::quota_numbers(&outcome.quota);
    let flags = HAS_QUOTA + if outcome.degraded { DEGRADED } else { 0.0 };
    [kind, a, b, limit, remaining, reset_ms, flags]
}

fn quota(quota: Quota) -> [f64; 7] {
    let [limit, remaining, reset_ms] = limiter::quota_numbers(&quota);
    [DONE_QUOTA, 0.0, 0.0, limit, remaining, reset_ms, HAS_QUOTA]
}

fn number(value: f64) -> [f64; 7] {
    [DONE_NUMBER, value, 0.0, 0.0, 0.0, 0.0, 0.0]
}

const VOID: [f64; 7] = [DONE_VOID, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];

async fn run(job: &Job) -> Result<[f64; 7], TrypemaError> {
    if job.op == OP_CLOSE {
        job.core.close().await?;
        return Ok(VOID);
    }
    // Never panic here: a panic is caught, but the call then reports an internal error.
    let missing = || TrypemaError::Internal("a call was queued without its arguments".into());
    let (hybrid, suppressed, action) = decode(job.op).ok_or_else(missing)?;
    let key = job.key.as_ref().ok_or_else(missing)?;
    let rate = || job.rate.as_ref().ok_or_else(missing);
    let count = job.count;
    macro_rules! dispatch {
        ($provider:expr) => {{
            let provider = $provider;
            if suppressed {
                let strategy = provider.suppressed();
                match action {
                    Action::Inc => with_decision(strategy.inc(key, rate()?, count).await?),
                    Action::Check => number(strategy.get_suppression_factor(key).await?),
                    Action::IncWithQuota => {
                        with_quota(strategy.inc_with_quota(key, rate()?, count).await?)
                    }
                    Action::Get => quota(strategy.get(key, rate()?).await?),
                    Action::Refund => number(strategy.refund(key, count).await? as f64),
                    Action::Reset => {
                        strategy.reset(key).await?;
                        VOID
                    }
                }
            } else {
                let strategy = provider.absolute();
                match action {
                    Action::Inc => with_decision(strategy.inc(key, rate()?, count).await?),
                    Action::Check => with_decision(strategy.is_allowed(key).await?),
                    Action::IncWithQuota => {
                        with_quota(strategy.inc_with_quota(key, rate()?, count).await?)
                    }
                    Action::Get => quota(strategy.get(key, rate()?).await?),
                    Action::Refund => number(strategy.refund(key, count).await? as f64),
                    Action::Reset => {
                        strategy.reset(key).await?;
                        VOID
                    }
                }
            }
        }};
    }
    Ok(if hybrid {
        dispatch!(job.core.hybrid())
    } else {
        dispatch!(job.core.redis())
    })
}

/// Takes every result that has arrived since the last drain.
#[napi(catch_unwind)]
pub fn redis_drain() -> napi::Result<DrainedResults, &'static str> {
    with_thread(|thread| {
        let taken = std::mem::take(
            &mut *thread
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

/// Connects to Redis as `connection` says, builds a limiter with `options` and verifies that
/// Redis answers, accepts the credentials and lets the user run every command the scripts need.
/// Settles `id` when done; the limiter is then taken with `NativeRateLimiter.adopt(id)`.
#[napi(catch_unwind)]
pub fn redis_build(
    id: f64,
    options: LimiterOptions,
    connection: ConnectionOptions,
) -> napi::Result<(), &'static str> {
    // Settings are checked here, synchronously, so a bad one is reported as such even when
    // Redis is unreachable.
    configure(RateLimiter::local_builder(), &options)?
        .validate()
        .map_err(js_error)?;
    let outbox = with_thread(|thread| Ok(thread.outbox.clone()))?;
    runtime::spawn(async move {
        let outcome = async {
            let connected = connect::connect(&connection).await?;
            let builder = configure(connected.builder(), &options)
                .map_err(|error| TrypemaError::Internal(error.reason.clone()))?;
            let limiter = builder.build_verified().await?;
            outbox
                .built
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .insert(id.to_bits(), limiter);
            Ok(VOID)
        };
        let outcome = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(outcome))
            .await
            .unwrap_or_else(|_| {
                Err(TrypemaError::Internal(
                    "trypema panicked; this is a bug".into(),
                ))
            });
        outbox.push(id, outcome);
    })
}

/// The limiter `redis_build` made under `id`, if it is still waiting.
pub(crate) fn take_built(id: f64) -> Option<RateLimiter> {
    THREAD.with(|thread| {
        let thread = thread.borrow();
        let thread = thread.as_ref()?;
        let mut built = thread
            .outbox
            .built
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        built.remove(&id.to_bits())
    })
}
