//! One connection to Redis, whatever its topology, and the script calls made over it.

use std::{
    sync::{Arc, LazyLock, Mutex},
    time::Duration,
};

use redis::{
    aio::{ConnectionManager, MultiplexedConnection},
    cluster_async::ClusterConnection,
    sentinel::SentinelClient,
    ErrorKind, RedisError, ServerErrorKind, Value,
};

use crate::TrypemaError;

/// A Lua script as sent to Redis: its source and SHA1.
pub(crate) struct LuaScript {
    source: &'static str,
    hash: String,
}

impl LuaScript {
    fn new(source: &'static str) -> Self {
        Self {
            source,
            hash: redis::Script::new(source).get_hash().to_string(),
        }
    }
}

/// The absolute strategy's script: the shared window code, then the strategy's.
pub(crate) static ABSOLUTE: LazyLock<LuaScript> = LazyLock::new(|| {
    LuaScript::new(concat!(
        include_str!("window.lua"),
        include_str!("absolute.lua")
    ))
});

/// The suppressed strategy's script.
pub(crate) static SUPPRESSED: LazyLock<LuaScript> = LazyLock::new(|| {
    LuaScript::new(concat!(
        include_str!("window.lua"),
        include_str!("suppressed.lua")
    ))
});

/// A connection to a standalone Redis, a Redis Cluster, or the master a set of Sentinels names.
#[derive(Clone)]
pub(crate) enum Connection {
    Single(ConnectionManager),
    /// redis-rs routes each command by its key's slot and follows MOVED / ASK itself.
    Cluster(ClusterConnection),
    Sentinel(Arc<SentinelConnection>),
}

impl Connection {
    async fn query(&self, command: &redis::Cmd) -> Result<Value, RedisError> {
        match self {
            Self::Single(manager) => command.query_async(&mut manager.clone()).await,
            Self::Cluster(cluster) => command.query_async(&mut cluster.clone()).await,
            Self::Sentinel(sentinel) => sentinel.query(command).await,
        }
    }

    async fn query_pipeline(&self, pipeline: &redis::Pipeline) -> Result<Vec<Value>, RedisError> {
        match self {
            Self::Single(manager) => pipeline.query_async(&mut manager.clone()).await,
            Self::Cluster(cluster) => pipeline.query_async(&mut cluster.clone()).await,
            Self::Sentinel(sentinel) => sentinel.query_pipeline(pipeline).await,
        }
    }

    /// One round trip that proves the node holding `key` answers (any node without a key).
    pub(crate) async fn probe(&self, key: Option<&str>) -> Result<(), TrypemaError> {
        match key {
            Some(key) => self
                .query(redis::cmd("EXISTS").arg(key))
                .await
                .map(drop)
                .map_err(|error| classify(&error)),
            None => self.ping().await,
        }
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// One round trip that proves Redis answers.
    pub(crate) async fn ping(&self) -> Result<(), TrypemaError> {
        self.query(&redis::cmd("PING"))
            .await
            .map(drop)
            .map_err(|error| classify(&error))
    }

    /// Deletes `key` (the state of one entity).
    pub(crate) async fn delete(&self, key: &str) -> Result<(), TrypemaError> {
        self.query(redis::cmd("DEL").arg(key))
            .await
            .map(drop)
            .map_err(|error| classify(&error))
    }

    /// Runs `script` on `key` with one packed argument: `EVALSHA`, falling back to `EVAL` (which
    /// also caches the script on that server) when the server does not have it.
    pub(crate) async fn eval(
        &self,
        script: &LuaScript,
        key: &str,
        args: &[u8],
    ) -> Result<Value, TrypemaError> {
        let reply = self
            .query(
                redis::cmd("EVALSHA")
                    .arg(&script.hash)
                    .arg(1)
                    .arg(key)
                    .arg(args),
            )
            .await;
        match reply {
            Err(error) if is_noscript(&error) => self
                .query(
                    redis::cmd("EVAL")
                        .arg(script.source)
                        .arg(1)
                        .arg(key)
                        .arg(args),
                )
                .await
                .map_err(|error| classify(&error)),
            other => other.map_err(|error| classify(&error)),
        }
    }

    /// Runs `script` once per `(key, args)` in one pipelined round trip; each call gets its own
    /// result. Calls the server answered with NOSCRIPT did not run, and only those are sent
    /// again (as `EVAL`), so no call ever runs twice.
    pub(crate) async fn eval_batch(
        &self,
        script: &LuaScript,
        calls: &[(String, Vec<u8>)],
    ) -> Result<Vec<Result<Value, TrypemaError>>, TrypemaError> {
        let pipeline = |command: &str, script: &str, indices: &mut dyn Iterator<Item = usize>| {
            let mut pipeline = redis::pipe();
            pipeline.ignore_errors();
            for index in indices {
                let (key, args) = &calls[index];
                pipeline.cmd(command).arg(script).arg(1).arg(key).arg(args);
            }
            pipeline
        };
        let first = pipeline("EVALSHA", &script.hash, &mut (0..calls.len()));
        let mut results = self
            .query_pipeline(&first)
            .await
            .map_err(|error| classify(&error))?;
        if results.len() != calls.len() {
            return Err(TrypemaError::UnexpectedScriptResult(format!(
                "{} replies to {} pipelined calls",
                results.len(),
                calls.len()
            )));
        }
        let missing: Vec<usize> = (0..calls.len())
            .filter(|&index| matches!(&results[index], Value::ServerError(error) if error.kind() == Some(ServerErrorKind::NoScript)))
            .collect();
        if !missing.is_empty() {
            let again = pipeline("EVAL", script.source, &mut missing.iter().copied());
            let replies = self
                .query_pipeline(&again)
                .await
                .map_err(|error| classify(&error))?;
            for (index, reply) in missing.into_iter().zip(replies) {
                results[index] = reply;
            }
        }
        Ok(results
            .into_iter()
            .map(|value| match value {
                Value::ServerError(error) => Err(classify(&RedisError::from(error))),
                other => Ok(other),
            })
            .collect())
    }
}

/// The master that a set of Sentinels names, connected on demand: after a connection error or
/// a READONLY reply (the node was demoted in a failover) the Sentinels are asked again, so
/// calls recover by themselves once a replica has been promoted.
pub(crate) struct SentinelConnection {
    client: tokio::sync::Mutex<SentinelClient>,
    current: Mutex<Option<MultiplexedConnection>>,
    config: redis::AsyncConnectionConfig,
}

impl SentinelConnection {
    pub(crate) fn new(client: SentinelClient, config: redis::AsyncConnectionConfig) -> Self {
        Self {
            client: tokio::sync::Mutex::new(client),
            current: Mutex::new(None),
            config,
        }
    }

    fn cached(&self) -> Option<MultiplexedConnection> {
        self.current
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    async fn connection(&self) -> Result<MultiplexedConnection, RedisError> {
        if let Some(connection) = self.cached() {
            return Ok(connection);
        }
        let mut client = self.client.lock().await;
        if let Some(connection) = self.cached() {
            return Ok(connection);
        }
        let connection = client
            .get_async_connection_with_config(&self.config)
            .await?;
        *self
            .current
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Some(connection.clone());
        Ok(connection)
    }

    fn forget_on<T>(&self, result: Result<T, RedisError>) -> Result<T, RedisError> {
        if let Err(error) = &result {
            let stale = error.is_io_error()
                || error.is_connection_dropped()
                || error.is_connection_refusal()
                || error.is_timeout()
                || error.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly);
            if stale {
                *self
                    .current
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner()) = None;
            }
        }
        result
    }

    async fn query(&self, command: &redis::Cmd) -> Result<Value, RedisError> {
        let mut connection = self.connection().await?;
        self.forget_on(command.query_async(&mut connection).await)
    }

    async fn query_pipeline(&self, pipeline: &redis::Pipeline) -> Result<Vec<Value>, RedisError> {
        let mut connection = self.connection().await?;
        let result: Result<Vec<Value>, RedisError> = pipeline.query_async(&mut connection).await;
        // A pipeline with ignore_errors reports READONLY per command.
        if let Ok(values) = &result {
            if values.iter().any(|value| {
                matches!(value, Value::ServerError(error) if error.kind() == Some(ServerErrorKind::ReadOnly))
            }) {
                *self
                    .current
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner()) = None;
            }
        }
        self.forget_on(result)
    }
}

fn is_noscript(error: &RedisError) -> bool {
    error.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

/// The trypema error for a Redis error, with a message that names the problem but never the
/// connection's credentials.
pub fn classify(error: &RedisError) -> TrypemaError {
    let message = without_credentials(&error.to_string());
    let code = error.code().unwrap_or("");
    if error.is_timeout() {
        return TrypemaError::RedisTimeout(0);
    }
    // Inside a script, Redis 7 reports a missing ACL permission as a plain ERR.
    let denied_in_script = message.contains("can't run this command")
        || message.contains("No permissions to access")
        || message.contains("can't access")
        // A cluster client wraps the failed handshake of its first connections in an I/O error.
        || message.contains("AuthenticationFailed")
        || message.contains("WRONGPASS");
    if error.kind() == ErrorKind::AuthenticationFailed
        || matches!(code, "NOAUTH" | "WRONGPASS" | "NOPERM")
        || error.kind() == ErrorKind::Server(ServerErrorKind::NoPerm)
        || denied_in_script
    {
        return TrypemaError::RedisAuth(message);
    }
    let unavailable = error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || matches!(
            error.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::MasterNameNotFoundBySentinel
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                )
        )
        // A long-running script (another client's) blocks the server: nothing ran.
        || code == "BUSY";
    if unavailable {
        TrypemaError::RedisConnection(message)
    } else {
        TrypemaError::Redis(message)
    }
}

/// Removes `user:password@` from anything that looks like a URL.
pub(crate) fn without_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(scheme) = rest.find("://") {
        let (before, after) = rest.split_at(scheme + 3);
        out.push_str(before);
        let end = after
            .find(|c: char| c.is_whitespace() || c == '/' || c == '"' || c == '\'')
            .unwrap_or(after.len());
        match after[..end].rfind('@') {
            Some(at) => {
                out.push_str("***@");
                rest = &after[at + 1..];
            }
            None => rest = after,
        }
    }
    out.push_str(rest);
    out
}

/// Runs `operation`, turning a lack of answer within `limit` into `RedisTimeout`.
pub(crate) async fn bounded<T>(
    limit: Duration,
    operation: impl std::future::Future<Output = Result<T, TrypemaError>>,
) -> Result<T, TrypemaError> {
    match crate::runtime::timeout(limit, operation).await {
        None => Err(TrypemaError::RedisTimeout(limit.as_millis() as u64)),
        Some(result) => result,
    }
}

#[cfg(test)]
mod tests {
    use super::without_credentials;

    #[test]
    fn credentials_are_removed_from_urls() {
        assert_eq!(
            without_credentials("cannot reach redis://user:secret@10.0.0.1:6379/0 now"),
            "cannot reach redis://***@10.0.0.1:6379/0 now"
        );
        assert_eq!(
            without_credentials("rediss://:p@ss@host:1"),
            "rediss://***@host:1"
        );
        assert_eq!(without_credentials("no url here"), "no url here");
        assert_eq!(
            without_credentials("redis://host:1/ and redis://a:b@c"),
            "redis://host:1/ and redis://***@c"
        );
    }
}
