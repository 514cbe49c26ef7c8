//! The one Tokio runtime every limiter of the process runs its Redis I/O and hybrid sync on:
//! a fixed pair of threads, however many limiters exist, and no dependence on napi's own
//! runtime (whose absence would abort the process).

use std::{
    future::Future,
    panic::{catch_unwind, AssertUnwindSafe},
    sync::{Mutex, OnceLock},
};

use tokio::runtime::Runtime;

/// Threads of the runtime: Redis I/O is light per call; two match the typical small container.
const WORKER_THREADS: usize = 2;

static RUNTIME: OnceLock<Runtime> = OnceLock::new();
static STARTING: Mutex<()> = Mutex::new(());

/// The runtime, started on first use; an error (never a panic) when its threads cannot start,
/// and a later call tries again (the limit on threads may have been lifted).
pub(crate) fn get() -> napi::Result<&'static Runtime, &'static str> {
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime);
    }
    let _starting = STARTING.lock().unwrap_or_else(|poison| poison.into_inner());
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime);
    }
    // Tokio panics (rather than failing) when the OS refuses a worker thread.
    let built = catch_unwind(AssertUnwindSafe(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("trypema-io")
            .enable_all()
            .build()
    }));
    match built {
        Ok(Ok(runtime)) => Ok(RUNTIME.get_or_init(|| runtime)),
        Ok(Err(error)) => Err(napi::Error::new(
            "TRYPEMA_INTERNAL",
            format!("could not start trypema's I/O threads: {error}"),
        )),
        Err(_) => Err(napi::Error::new(
            "TRYPEMA_INTERNAL",
            "could not start trypema's I/O threads (the system refused a thread)".to_string(),
        )),
    }
}

pub(crate) fn spawn(
    task: impl Future<Output = ()> + Send + 'static,
) -> napi::Result<(), &'static str> {
    get()?.spawn(task);
    Ok(())
}

/// Runs `work` inside the runtime's context if the runtime exists, so that what it drops can
/// hand work to it (a limiter dropped by the garbage collector gives its hybrid leases back this
/// way). Without a runtime no limiter ever used Redis, so there is nothing to hand over.
pub(crate) fn within<T>(work: impl FnOnce() -> T) -> T {
    match RUNTIME.get() {
        Some(runtime) => {
            let _entered = runtime.enter();
            work()
        }
        None => work(),
    }
}
