//! Redis server time without a `TIME` call per decision.
//!
//! Every process sharing a limit must agree on time, so the scripts work in the Redis server's
//! clock. Calling `TIME` inside a script costs about a third of the script's server time, so
//! instead each limiter asks once, anchors the answer to its own monotonic clock, and sends
//! `anchor + elapsed` with every call. The anchor is refreshed every [`RESYNC_AFTER`]; its error
//! is at most half the round trip of that one `TIME` call.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use redis::aio::ConnectionManager;

use crate::TrypemaError;

const RESYNC_AFTER: Duration = Duration::from_secs(60);

#[derive(Clone, Copy)]
struct Anchor {
    server_ms: u64,
    at: Instant,
}

#[derive(Default)]
pub(crate) struct ServerClock {
    anchor: Mutex<Option<Anchor>>,
    resyncing: AtomicBool,
}

impl ServerClock {
    /// The Redis server's current time in milliseconds since the Unix epoch.
    pub(crate) async fn now_ms(
        &self,
        connection: &mut ConnectionManager,
    ) -> Result<u64, TrypemaError> {
        let anchor = *self
            .anchor
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        match anchor {
            Some(anchor) if anchor.at.elapsed() < RESYNC_AFTER => Ok(Self::project(anchor)),
            // Stale: one caller refreshes while the others keep using the old anchor.
            Some(anchor) if self.resyncing.swap(true, Ordering::AcqRel) => {
                Ok(Self::project(anchor))
            }
            Some(_) => {
                let synced = self.sync(connection).await;
                self.resyncing.store(false, Ordering::Release);
                synced
            }
            None => self.sync(connection).await,
        }
    }

    fn project(anchor: Anchor) -> u64 {
        anchor.server_ms + anchor.at.elapsed().as_millis() as u64
    }

    async fn sync(&self, connection: &mut ConnectionManager) -> Result<u64, TrypemaError> {
        let sent = Instant::now();
        let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(connection).await?;
        let round_trip = sent.elapsed();
        let anchor = Anchor {
            server_ms: seconds * 1000 + micros / 1000,
            // The server read its clock somewhere in the round trip; the middle is the best guess.
            at: sent + round_trip / 2,
        };
        *self
            .anchor
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(anchor);
        Ok(Self::project(anchor))
    }
}
