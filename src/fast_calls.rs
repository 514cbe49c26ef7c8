//! The per-request calls (`local` inc and the hybrid fast paths) as raw N-API callbacks.
//!
//! napi-rs's generated wrapper costs ~180 ns for a call with three number arguments on this
//! machine (it sets up borrow scopes and barriers per call), against ~35 ns for a plain N-API
//! callback — more than the rate-limiting decision itself. These four functions are the hot
//! path, so they read their arguments with N-API directly; everything else stays `#[napi]`.
//! They convert and dispatch only: the decisions are the core crate's.

use std::{
    ffi::CString,
    panic::{catch_unwind, AssertUnwindSafe},
    ptr,
};

use napi::{bindgen_prelude::FromNapiValue, sys};
use napi_derive::napi;
use trypema::RateLimitDecision;

use crate::{
    convert::{self, KeyArg},
    limiter::{remember, with_limiter, Limiter},
};

/// What `hybrid*Try` returns when the call needs Redis: it is then queued like a `redis` call.
const NEEDS_REDIS: f64 = -2.0;

type Call = fn(&Limiter, &KeyArg, f64, f64) -> napi::Result<f64, &'static str>;

fn local_absolute_inc(
    limiter: &Limiter,
    key: &KeyArg,
    rate: f64,
    count: f64,
) -> napi::Result<f64, &'static str> {
    let decision = limiter.core.local().absolute().inc(
        key.local()?,
        &convert::rate(rate)?,
        convert::count(count)?,
    );
    Ok(remember(decision))
}

fn local_suppressed_inc(
    limiter: &Limiter,
    key: &KeyArg,
    rate: f64,
    count: f64,
) -> napi::Result<f64, &'static str> {
    let decision = limiter.core.local().suppressed().inc(
        key.local()?,
        &convert::rate(rate)?,
        convert::count(count)?,
    );
    Ok(remember(decision))
}

/// A hybrid fast path: the decision (encoded as for `local`) when local state decides it, else
/// `NEEDS_REDIS`. Arguments are checked exactly as for a queued call. No thread hop, no I/O.
fn hybrid_try(
    limiter: &Limiter,
    key: &KeyArg,
    rate: f64,
    count: f64,
    decide: impl FnOnce(&trypema::hybrid::HybridProvider, &str, u64) -> Option<RateLimitDecision>,
) -> napi::Result<f64, &'static str> {
    limiter.require_redis()?;
    let key = key.redis_text()?;
    convert::rate(rate)?;
    let decision = decide(limiter.core.hybrid(), key, convert::count(count)?);
    Ok(decision.map_or(NEEDS_REDIS, remember))
}

fn hybrid_absolute_try(
    limiter: &Limiter,
    key: &KeyArg,
    rate: f64,
    count: f64,
) -> napi::Result<f64, &'static str> {
    hybrid_try(limiter, key, rate, count, |hybrid, key, count| {
        hybrid.absolute().try_inc_locally(key, count)
    })
}

fn hybrid_suppressed_try(
    limiter: &Limiter,
    key: &KeyArg,
    rate: f64,
    count: f64,
) -> napi::Result<f64, &'static str> {
    hybrid_try(limiter, key, rate, count, |hybrid, key, count| {
        hybrid.suppressed().try_inc_locally(key, count)
    })
}

unsafe fn throw(
    env: sys::napi_env,
    code: &str,
    message: &str,
    type_error: bool,
) -> sys::napi_value {
    let code = CString::new(code).unwrap_or_default();
    let message = CString::new(message.replace('\0', " ")).unwrap_or_default();
    if type_error {
        sys::napi_throw_type_error(env, code.as_ptr(), message.as_ptr());
    } else {
        sys::napi_throw_error(env, code.as_ptr(), message.as_ptr());
    }
    ptr::null_mut()
}

/// Reads `(handle, key, rate, count)`, runs `call` and returns its number, or throws.
unsafe fn dispatch(
    env: sys::napi_env,
    info: sys::napi_callback_info,
    call: Call,
) -> sys::napi_value {
    let mut argc: usize = 4;
    let mut argv = [ptr::null_mut(); 4];
    let status = sys::napi_get_cb_info(
        env,
        info,
        &mut argc,
        argv.as_mut_ptr(),
        ptr::null_mut(),
        ptr::null_mut(),
    );
    if status != sys::Status::napi_ok {
        return throw(
            env,
            "TRYPEMA_INTERNAL",
            "could not read the call's arguments",
            false,
        );
    }
    let mut handle = 0u32;
    let mut rate = 0f64;
    let mut count = 0f64;
    if sys::napi_get_value_uint32(env, argv[0], &mut handle) != sys::Status::napi_ok
        || sys::napi_get_value_double(env, argv[2], &mut rate) != sys::Status::napi_ok
        || sys::napi_get_value_double(env, argv[3], &mut count) != sys::Status::napi_ok
    {
        return throw(
            env,
            "ERR_INVALID_ARG_TYPE",
            "handle, rate and count must be numbers",
            true,
        );
    }
    let key = match KeyArg::from_napi_value(env, argv[1]) {
        Ok(key) => key,
        Err(error) => return throw(env, "ERR_INVALID_ARG_TYPE", &error.reason, true),
    };
    // A panic must not unwind into Node: it becomes an exception like any other error.
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        with_limiter(handle, |limiter| call(limiter, &key, rate, count))
    }));
    match outcome {
        Ok(Ok(value)) => {
            let mut result = ptr::null_mut();
            sys::napi_create_double(env, value, &mut result);
            result
        }
        Ok(Err(error)) => throw(env, error.status, &error.reason, false),
        Err(_) => throw(
            env,
            "TRYPEMA_INTERNAL",
            "trypema panicked; this is a bug",
            false,
        ),
    }
}

macro_rules! callback {
    ($name:ident, $call:ident) => {
        unsafe extern "C" fn $name(
            env: sys::napi_env,
            info: sys::napi_callback_info,
        ) -> sys::napi_value {
            dispatch(env, info, $call)
        }
    };
}

callback!(local_absolute_inc_callback, local_absolute_inc);
callback!(local_suppressed_inc_callback, local_suppressed_inc);
callback!(hybrid_absolute_try_callback, hybrid_absolute_try);
callback!(hybrid_suppressed_try_callback, hybrid_suppressed_try);

type Callback = unsafe extern "C" fn(sys::napi_env, sys::napi_callback_info) -> sys::napi_value;

/// The hot-path functions, each `(handle, key, rate, count) => number`: `localAbsoluteInc` and
/// `localSuppressedInc` return the encoded decision, `hybridAbsoluteTry` / `hybridSuppressedTry`
/// the encoded decision or -2 when the call needs Redis.
#[napi(
    ts_return_type = "Record<'localAbsoluteInc' | 'localSuppressedInc' | 'hybridAbsoluteTry' | 'hybridSuppressedTry', (handle: number, key: string, rate: number, count: number) => number>"
)]
pub fn fast_calls(env: napi::Env) -> napi::Result<napi::Unknown<'static>> {
    let functions: [(&str, Callback); 4] = [
        ("localAbsoluteInc", local_absolute_inc_callback),
        ("localSuppressedInc", local_suppressed_inc_callback),
        ("hybridAbsoluteTry", hybrid_absolute_try_callback),
        ("hybridSuppressedTry", hybrid_suppressed_try_callback),
    ];
    let env = env.raw();
    unsafe {
        let mut object = ptr::null_mut();
        napi::check_status!(sys::napi_create_object(env, &mut object))?;
        for (name, callback) in functions {
            let mut function = ptr::null_mut();
            napi::check_status!(sys::napi_create_function(
                env,
                name.as_ptr().cast(),
                name.len() as isize,
                Some(callback),
                ptr::null_mut(),
                &mut function,
            ))?;
            let key = CString::new(name).expect("names have no NUL");
            napi::check_status!(sys::napi_set_named_property(
                env,
                object,
                key.as_ptr(),
                function
            ))?;
        }
        Ok(napi::Unknown::from_raw_unchecked(env, object))
    }
}
