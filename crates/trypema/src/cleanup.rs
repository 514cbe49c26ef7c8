//! The background cleanup that drops the local state of idle keys. One thread serves every
//! limiter in the process (1000 limiters do not mean 1000 threads); it starts with the first
//! limiter and ends when the last one is gone.

use std::{
    collections::BTreeMap,
    sync::{Condvar, Mutex, Weak},
    thread,
    time::{Duration, Instant},
};

use crate::TrypemaError;

/// Something holding per-key state that can forget its idle keys.
pub(crate) trait Sweep: Send + Sync {
    fn sweep(&self);
}

struct Job {
    interval: Duration,
    due: Instant,
    /// Weak: the scheduler never keeps a limiter alive.
    targets: Vec<Weak<dyn Sweep>>,
}

#[derive(Default)]
struct Jobs {
    jobs: BTreeMap<u64, Job>,
    next_id: u64,
    thread_running: bool,
}

struct Scheduler {
    jobs: Mutex<Jobs>,
    changed: Condvar,
}

static SCHEDULER: Scheduler = Scheduler {
    jobs: Mutex::new(Jobs {
        jobs: BTreeMap::new(),
        next_id: 0,
        thread_running: false,
    }),
    changed: Condvar::new(),
};

/// A limiter's place in the cleanup schedule; dropping it (with the limiter) removes it.
pub(crate) struct Cleanup {
    id: u64,
}

impl Cleanup {
    /// Schedules `targets` every `interval`, starting the cleanup thread if it is not running.
    /// Fails (instead of aborting) when the thread cannot be started.
    pub(crate) fn start(
        interval: Duration,
        targets: Vec<Weak<dyn Sweep>>,
    ) -> Result<Self, TrypemaError> {
        let mut jobs = lock();
        if !jobs.thread_running {
            thread::Builder::new()
                .name("trypema-cleanup".into())
                .spawn(run)
                .map_err(|error| {
                    TrypemaError::Internal(format!("could not start the cleanup thread: {error}"))
                })?;
            jobs.thread_running = true;
        }
        let id = jobs.next_id;
        jobs.next_id += 1;
        jobs.jobs.insert(
            id,
            Job {
                interval,
                due: Instant::now()
                    .checked_add(interval)
                    .unwrap_or_else(far_future),
                targets,
            },
        );
        SCHEDULER.changed.notify_all();
        Ok(Self { id })
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        lock().jobs.remove(&self.id);
        SCHEDULER.changed.notify_all();
    }
}

fn lock() -> std::sync::MutexGuard<'static, Jobs> {
    SCHEDULER
        .jobs
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// How many limiters the cleanup thread serves (for tests).
#[doc(hidden)]
pub fn scheduled_limiters() -> usize {
    lock().jobs.len()
}

fn run() {
    let mut jobs = lock();
    loop {
        if jobs.jobs.is_empty() {
            jobs.thread_running = false;
            return;
        }
        let now = Instant::now();
        let next_due = jobs.jobs.values().map(|job| job.due).min().unwrap_or(now);
        if next_due > now {
            jobs = SCHEDULER
                .changed
                .wait_timeout(jobs, next_due - now)
                .unwrap_or_else(|poison| poison.into_inner())
                .0;
            continue;
        }
        let mut due = Vec::new();
        for job in jobs.jobs.values_mut() {
            if job.due <= now {
                job.due = now.checked_add(job.interval).unwrap_or_else(far_future);
                due.extend(job.targets.iter().cloned());
            }
        }
        drop(jobs);
        // Sweeps run without the lock, so limiters can come and go meanwhile.
        for target in due.iter().filter_map(Weak::upgrade) {
            target.sweep();
        }
        jobs = lock();
    }
}
