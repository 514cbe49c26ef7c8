//! The one Tokio runtime every limiter of the process runs its Redis I/O and hybrid sync on:
//! a fixed pair of threads, however many limiters exist, and no dependence on napi's own
//! runtime (whose absence would abort the process).

use std::{future::Future, sync::OnceLock};

use tokio::runtime::Runtime;

/// Threads of the runtime: Redis I/O is light per call; two match the typical small container.
const WORKER_THREADS: usize = 2;

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// The runtime, started on first use; an error (instead of a panic) when it cannot start.
pub(crate) fn get() -> napi::Result<&'static Runtime, &'static str> {
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(WORKER_THREADS)
                .thread_name("trypema-io")
                .enable_all()
                .build()
                .map_err(|error| format!("could not start trypema's I/O threads: {error}"))
        })
        .as_ref()
        .map_err(|message| napi::Error::new("TRYPEMA_INTERNAL", message.clone()))
}

pub(crate) fn spawn(task: impl Future<Output = ()> + Send + 'static) -> napi::Result<(), &'static str> {
    get()?.spawn(task);
    Ok(())
}

/// Runs `work` inside the runtime's context, so that what it drops can hand work to the
/// runtime (a limiter dropped by the garbage collector gives its hybrid leases back this way).
pub(crate) fn within<T>(work: impl FnOnce() -> T) -> T {
    match get() {
        Ok(runtime) => {
            let _entered = runtime.enter();
            work()
        }
        Err(_) => work(),
    }
}
