//! The Redis provider: every call is one `EVALSHA` of a script that evicts, decides and records
//! atomically, so any number of processes share one exact limit.
//!
//! Key layout: `{<prefix>:<key>}:a` (absolute) and `{<prefix>:<key>}:s` (suppressed), one hash
//! per entity and strategy. The braces are a Redis Cluster hash tag, so all of an entity's state
//! lives in one slot; no global key is touched per call.

mod absolute;
mod suppressed;

use std::sync::Arc;

pub use absolute::AbsoluteRedisRateLimiter;
use redis::{aio::ConnectionManager, FromRedisValue, Script};
pub use suppressed::SuppressedRedisRateLimiter;

pub use crate::redis_key::RedisKey;
use crate::{limiter::Settings, TrypemaError};

/// `rl.redis()`: both strategies over one connection.
#[derive(Clone)]
pub struct RedisProvider {
    absolute: AbsoluteRedisRateLimiter,
    suppressed: SuppressedRedisRateLimiter,
}

impl RedisProvider {
    pub(crate) fn new(connection: Option<ConnectionManager>, prefix: RedisKey, settings: Settings) -> Self {
        let context = Arc::new(RedisContext {
            connection,
            prefix,
            settings,
        });
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
}

impl RedisContext {
    /// The hash holding `key`'s state for one strategy (`tag` is `a` or `s`).
    pub(crate) fn entity_key(&self, key: &RedisKey, tag: &str) -> String {
        format!("{{{}:{}}}:{tag}", self.prefix.as_str(), key.as_str())
    }

    /// Runs `script` with one key: `EVALSHA`, loading the script only if Redis answers NOSCRIPT.
    pub(crate) async fn run<T: FromRedisValue>(
        &self,
        script: &Script,
        key: String,
        args: &[&dyn ScriptArg],
    ) -> Result<T, TrypemaError> {
        let mut connection = self
            .connection
            .clone()
            .ok_or(TrypemaError::RedisNotConfigured)?;
        let mut invocation = script.key(key);
        for arg in args {
            arg.push(&mut invocation);
        }
        Ok(invocation.invoke_async(&mut connection).await?)
    }
}

/// A script argument; lets callers pass mixed types in one slice.
pub(crate) trait ScriptArg: Sync {
    fn push(&self, invocation: &mut redis::ScriptInvocation<'_>);
}

impl<T: redis::ToRedisArgs + Sync> ScriptArg for T {
    fn push(&self, invocation: &mut redis::ScriptInvocation<'_>) {
        invocation.arg(self);
    }
}

fn unexpected(what: impl std::fmt::Debug) -> TrypemaError {
    TrypemaError::UnexpectedScriptResult(format!("{what:?}"))
}
