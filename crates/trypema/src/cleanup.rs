//! The background task that drops the local state of idle keys.

use std::{
    sync::{mpsc, Weak},
    thread,
    time::Duration,
};

/// Something holding per-key state that can forget its idle keys.
pub(crate) trait Sweep: Send + Sync {
    fn sweep(&self);
}

/// Owns the cleanup thread: dropping it wakes the thread, which then exits.
pub(crate) struct Cleanup {
    _stop: mpsc::Sender<()>,
}

impl Cleanup {
    pub(crate) fn start(interval: Duration, targets: Vec<Weak<dyn Sweep>>) -> Self {
        let (stop, stopped) = mpsc::channel::<()>();
        thread::Builder::new()
            .name("trypema-cleanup".into())
            .spawn(move || {
                // The thread holds only weak references, so it never keeps a limiter alive;
                // the channel closing (the limiter dropped) is what ends the loop.
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    for target in targets.iter().filter_map(Weak::upgrade) {
                        target.sweep();
                    }
                }
            })
            .expect("failed to spawn the trypema cleanup thread");
        Self { _stop: stop }
    }
}
