//! The sliding window every provider counts in: a queue of coalesced buckets plus running sums,
//! so that adding, evicting and reading the total are all O(1) amortised.

use std::collections::VecDeque;

use crate::RateLimitDecision;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bucket {
    pub(crate) start_ms: u64,
    pub(crate) observed: u64,
    pub(crate) declined: u64,
}

#[derive(Debug, Default)]
pub(crate) struct SlidingWindow {
    buckets: VecDeque<Bucket>,
    observed: u64,
    declined: u64,
}

impl SlidingWindow {
    /// Drops the buckets whose start is more than `window_ms` before `now_ms`, and empty
    /// buckets at the old end (left by a refund: they free nothing, so no hint may name them).
    #[inline]
    pub(crate) fn evict(&mut self, now_ms: u64, window_ms: u64) {
        while let Some(oldest) = self.buckets.front() {
            if now_ms.saturating_sub(oldest.start_ms) <= window_ms && oldest.observed > 0 {
                break;
            }
            self.observed -= oldest.observed;
            self.declined -= oldest.declined;
            self.buckets.pop_front();
        }
    }

    /// Adds `count` to the newest bucket if it started less than `group_ms` ago, else opens one.
    #[inline]
    pub(crate) fn record(&mut self, now_ms: u64, group_ms: u64, count: u64) {
        if count == 0 {
            return;
        }
        match self.buckets.back_mut() {
            Some(newest) if now_ms.saturating_sub(newest.start_ms) < group_ms => {
                newest.observed += count;
            }
            _ => self.buckets.push_back(Bucket {
                start_ms: now_ms,
                observed: count,
                declined: 0,
            }),
        }
        self.observed += count;
    }

    /// Takes back up to `count` accepted units, newest first; returns how many.
    pub(crate) fn refund(&mut self, count: u64) -> u64 {
        let mut left = count;
        for bucket in self.buckets.iter_mut().rev() {
            if left == 0 {
                break;
            }
            let taken = left.min(bucket.observed - bucket.declined);
            bucket.observed -= taken;
            left -= taken;
        }
        self.observed -= count - left;
        count - left
    }

    /// Milliseconds until the oldest bucket leaves the window (0 when empty).
    pub(crate) fn reset_ms(&self, now_ms: u64, window_ms: u64) -> u64 {
        self.buckets.front().map_or(0, |oldest| {
            (oldest.start_ms + window_ms + 1).saturating_sub(now_ms)
        })
    }

    /// Marks `count` of what the newest bucket observed as declined.
    pub(crate) fn decline_newest(&mut self, count: u64) {
        if let Some(newest) = self.buckets.back_mut() {
            newest.declined += count;
            self.declined += count;
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    pub(crate) fn observed(&self) -> u64 {
        self.observed
    }

    pub(crate) fn accepted(&self) -> u64 {
        self.observed - self.declined
    }

    /// What the buckets that started after `after_ms` observed.
    pub(crate) fn observed_after(&self, after_ms: u64) -> u64 {
        self.buckets
            .iter()
            .rev()
            .take_while(|bucket| bucket.start_ms > after_ms)
            .map(|bucket| bucket.observed)
            .sum()
    }

    /// The absolute strategy's refusal: when the oldest bucket leaves and what is left then.
    /// A count that can never fit (`fits` false) is told to wait a whole window.
    pub(crate) fn rejection(&self, now_ms: u64, window_ms: u64, fits: bool) -> RateLimitDecision {
        let (retry_after_ms, remaining_after_waiting) = match self.buckets.front() {
            // A bucket is still counted while now - start == window_ms, so it is gone 1 ms later.
            Some(oldest) => (
                if fits {
                    (oldest.start_ms + window_ms + 1).saturating_sub(now_ms)
                } else {
                    window_ms
                },
                self.accepted() - (oldest.observed - oldest.declined),
            ),
            None => (window_ms, 0),
        };
        RateLimitDecision::Rejected {
            window_size_seconds: window_ms / 1000,
            retry_after_ms,
            remaining_after_waiting,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesces_within_the_group_and_evicts_after_the_window() {
        let mut window = SlidingWindow::default();
        window.record(0, 10, 1);
        window.record(9, 10, 2);
        window.record(10, 10, 4);
        assert_eq!(window.observed(), 7);
        assert_eq!(window.buckets.len(), 2);
        window.evict(1000, 1000);
        assert_eq!(
            window.observed(),
            7,
            "a bucket exactly one window old still counts"
        );
        window.evict(1001, 1000);
        assert_eq!(window.observed(), 4);
        window.evict(1011, 1000);
        assert!(window.is_empty());
        assert_eq!(window.observed(), 0);
    }

    #[test]
    fn rejection_hints_name_the_oldest_bucket() {
        let mut window = SlidingWindow::default();
        window.record(100, 10, 3);
        window.record(400, 10, 2);
        let decision = window.rejection(500, 1000, true);
        assert_eq!(
            decision,
            RateLimitDecision::Rejected {
                window_size_seconds: 1,
                retry_after_ms: 601,
                remaining_after_waiting: 2
            }
        );
    }

    #[test]
    fn declined_counts_are_not_accepted() {
        let mut window = SlidingWindow::default();
        window.record(0, 10, 5);
        window.decline_newest(2);
        assert_eq!(window.accepted(), 3);
        assert_eq!(window.observed_after(0), 0);
        window.record(50, 10, 1);
        assert_eq!(window.observed_after(0), 1);
    }
}
