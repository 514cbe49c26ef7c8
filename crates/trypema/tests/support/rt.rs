//! The async runtime the Redis and hybrid suites run on: tokio under `redis-tokio`, smol under
//! `redis-smol`, so the same test bodies check both runtime features.

use std::{future::Future, time::Duration};

/// Runs a test body to completion on the feature's runtime.
#[cfg(feature = "redis-tokio")]
pub fn run<F: Future>(body: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(body)
}

#[cfg(feature = "redis-smol")]
pub fn run<F: Future>(body: F) -> F::Output {
    smol::block_on(body)
}

#[cfg(feature = "redis-tokio")]
pub async fn sleep(duration: Duration) {
    tokio::time::sleep(duration).await;
}

#[cfg(feature = "redis-smol")]
pub async fn sleep(duration: Duration) {
    smol::Timer::after(duration).await;
}

/// `Some(output)`, or `None` when `future` took longer than `duration`.
pub async fn timeout<T>(duration: Duration, future: impl Future<Output = T>) -> Option<T> {
    use futures_util::future::{select, Either};
    let sleeping = sleep(duration);
    futures_util::pin_mut!(future, sleeping);
    match select(future, sleeping).await {
        Either::Left((output, _)) => Some(output),
        Either::Right(_) => None,
    }
}

/// Runs `task` concurrently (on the runtime's threads); await the handle for its output.
#[cfg(feature = "redis-tokio")]
pub fn spawn<T: Send + 'static>(
    task: impl Future<Output = T> + Send + 'static,
) -> impl Future<Output = T> {
    let handle = tokio::spawn(task);
    async move { handle.await.expect("spawned task panicked") }
}

#[cfg(feature = "redis-smol")]
pub fn spawn<T: Send + 'static>(
    task: impl Future<Output = T> + Send + 'static,
) -> impl Future<Output = T> {
    smol::spawn(task)
}

/// Lets other tasks run.
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            std::task::Poll::Ready(())
        } else {
            yielded = true;
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await
}

/// Runs blocking work on a thread of its own and waits for it without blocking the runtime.
pub async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = sender.send(work());
    });
    receiver.await.expect("blocking work panicked")
}
