//! The async runtime the Redis-backed providers run their background work on, chosen by the
//! `redis-tokio` or `redis-smol` feature. Everything else in the crate is runtime-agnostic
//! (`tokio::sync` primitives work under any executor).

use std::{future::Future, time::Duration};

use crate::TrypemaError;

#[cfg(all(feature = "redis-tokio", feature = "redis-smol"))]
compile_error!(
    "trypema: enable exactly one Redis runtime feature, `redis-tokio` or `redis-smol`, not both \
     (the Redis and hybrid providers run their background work on that one runtime)"
);

/// Runs `task` in the background on the runtime. With tokio this needs to be called from
/// within a runtime (as every async trypema call is).
#[cfg(feature = "redis-tokio")]
pub(crate) fn spawn(task: impl Future<Output = ()> + Send + 'static) -> Result<(), TrypemaError> {
    let handle = tokio::runtime::Handle::try_current().map_err(|_| {
        TrypemaError::Internal("no tokio runtime to run trypema's background work on".into())
    })?;
    handle.spawn(task);
    Ok(())
}

#[cfg(feature = "redis-smol")]
pub(crate) fn spawn(task: impl Future<Output = ()> + Send + 'static) -> Result<(), TrypemaError> {
    smol::spawn(task).detach();
    Ok(())
}

#[cfg(feature = "redis-tokio")]
pub(crate) async fn sleep(duration: Duration) {
    tokio::time::sleep(duration).await
}

#[cfg(feature = "redis-smol")]
pub(crate) async fn sleep(duration: Duration) {
    async_io::Timer::after(duration).await;
}

/// `Some(output)`, or `None` if `future` did not finish within `duration`.
#[cfg(feature = "redis-tokio")]
pub(crate) async fn timeout<T>(duration: Duration, future: impl Future<Output = T>) -> Option<T> {
    tokio::time::timeout(duration, future).await.ok()
}

#[cfg(feature = "redis-smol")]
pub(crate) async fn timeout<T>(duration: Duration, future: impl Future<Output = T>) -> Option<T> {
    use futures_lite::FutureExt;
    async { Some(future.await) }
        .or(async {
            async_io::Timer::after(duration).await;
            None
        })
        .await
}
