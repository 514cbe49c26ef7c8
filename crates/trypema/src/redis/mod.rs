//! The Redis provider: every call is one `EVALSHA` of a script that evicts, decides and records
//! atomically, so any number of processes share one exact limit.
//!
//! Key layout, per entity and strategy (`a` absolute, `s` suppressed): a header string
//! `{<prefix>:<key>}:a` and a list of older buckets `{<prefix>:<key>}:a:b`. The braces are a
//! Redis Cluster hash tag, so all of an entity's state lives in one slot; no global key is
//! touched per call.

pub(crate) mod absolute;
mod server_clock;
pub(crate) mod suppressed;

use std::sync::Arc;

pub use absolute::AbsoluteRedisRateLimiter;
use redis::{aio::ConnectionManager, FromRedisValue, Script};
pub use suppressed::SuppressedRedisRateLimiter;

use self::server_clock::ServerClock;
pub use crate::redis_key::RedisKey;
use crate::{limiter::Settings, TrypemaError};

/// `rl.redis()`: both strategies over one connection.
#[derive(Clone)]
pub struct RedisProvider {
    absolute: AbsoluteRedisRateLimiter,
    suppressed: SuppressedRedisRateLimiter,
}

impl RedisProvider {
    pub(crate) fn new(context: Arc<RedisContext>) -> Self {
        Self {
            absolute: AbsoluteRedisRateLimiter::new(context.clone()),
            suppressed: SuppressedRedisRateLimiter::new(context),
        }
    }

    /// The strategy that rejects at the limit.
    pub fn absolute(&self) -> &AbsoluteRedisRateLimiter {
        &self.absolute
    }

    /// The strategy that sheds a growing fraction of traffic above the rate.
    pub fn suppressed(&self) -> &SuppressedRedisRateLimiter {
        &self.suppressed
    }
}

/// What both strategies need to reach their state.
pub(crate) struct RedisContext {
    connection: Option<ConnectionManager>,
    prefix: RedisKey,
    pub(crate) settings: Settings,
    clock: ServerClock,
}

impl RedisContext {
    pub(crate) fn new(
        connection: Option<ConnectionManager>,
        prefix: RedisKey,
        settings: Settings,
    ) -> Arc<Self> {
        Arc::new(Self {
            connection,
            prefix,
            settings,
            clock: ServerClock::default(),
        })
    }

    /// The keys holding `key`'s state for one strategy (`tag` is `a` or `s`): header, buckets.
    pub(crate) fn entity_keys(&self, key: &RedisKey, tag: &str) -> [String; 2] {
        let header = format!("{{{}:{}}}:{tag}", self.prefix.as_str(), key.as_str());
        let buckets = format!("{header}:b");
        [header, buckets]
    }

    /// Runs `script` on an entity's keys: `EVALSHA`, loading the script only on NOSCRIPT.
    pub(crate) async fn run<T: FromRedisValue>(
        &self,
        script: &Script,
        keys: [String; 2],
        call: ScriptCall,
    ) -> Result<T, TrypemaError> {
        let mut connection = self
            .connection
            .clone()
            .ok_or(TrypemaError::RedisNotConfigured)?;
        let now = self.clock.now_ms(&mut connection).await?;
        let mut invocation = script.key(&keys[0]);
        invocation.key(&keys[1]).arg(call.pack(now));
        Ok(invocation.invoke_async(&mut connection).await?)
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Runs `script` once per entry of `calls` in one pipelined round trip. Calls are
    /// independent: each gets its own result. If the script is missing from the server
    /// (NOSCRIPT), it is loaded and the calls are sent again.
    pub(crate) async fn run_batch(
        &self,
        script: &Script,
        source: &str,
        calls: &[([String; 2], ScriptCall)],
    ) -> Result<Vec<redis::Value>, TrypemaError> {
        let mut connection = self
            .connection
            .clone()
            .ok_or(TrypemaError::RedisNotConfigured)?;
        let now = self.clock.now_ms(&mut connection).await?;
        let pipeline = |hash: &str| {
            let mut pipeline = redis::pipe();
            pipeline.ignore_errors();
            for (keys, call) in calls {
                pipeline
                    .cmd("EVALSHA")
                    .arg(hash)
                    .arg(2)
                    .arg(&keys[0])
                    .arg(&keys[1])
                    .arg(call.pack(now));
            }
            pipeline
        };
        let mut results: Vec<redis::Value> = pipeline(script.get_hash())
            .query_async(&mut connection)
            .await?;
        let missing = |value: &redis::Value| matches!(value, redis::Value::ServerError(error) if error.code() == "NOSCRIPT");
        if results.iter().any(missing) {
            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(source)
                .query_async::<String>(&mut connection)
                .await?;
            results = pipeline(script.get_hash())
                .query_async(&mut connection)
                .await?;
        }
        Ok(results)
    }
}

/// A script call's arguments. They travel as one string of little-endian doubles, `mode`,
/// the server time, then `args`: one argument instead of nine saves Redis about a
/// microsecond per call, and the script reads numbers without parsing text.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ScriptCall {
    pub(crate) mode: f64,
    pub(crate) args: [f64; 7],
}

impl ScriptCall {
    fn pack(&self, now_ms: u64) -> Vec<u8> {
        let values = [self.mode, now_ms as f64].into_iter().chain(self.args);
        values.flat_map(f64::to_le_bytes).collect()
    }
}

fn unexpected(what: impl std::fmt::Debug) -> TrypemaError {
    TrypemaError::UnexpectedScriptResult(format!("{what:?}"))
}
