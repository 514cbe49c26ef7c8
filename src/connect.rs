//! Connecting to Redis as the JavaScript options say: one server by URL (`redis://`, or
//! `rediss://` for TLS), a Cluster by seed URLs, or the master named by Sentinels. Everything
//! else (routing, failover, reconnection) is redis-rs's and the core crate's.

use std::time::Duration;

use napi_derive::napi;
use redis::{
    aio::ConnectionManagerConfig, cluster::ClusterClientBuilder, sentinel::SentinelClientBuilder,
    sentinel::SentinelServerType, ClientTlsConfig, IntoConnectionInfo, TlsCertificates,
};
use trypema::{RateLimiter, RateLimiterBuilder, TrypemaError};

/// How to reach Redis; exactly one of `url`, `cluster` and `sentinelUrls` (checked in `index.js`,
/// and again here).
#[napi(object)]
pub struct ConnectionOptions {
    pub url: Option<String>,
    pub cluster: Option<Vec<String>>,
    pub sentinel_urls: Option<Vec<String>>,
    pub sentinel_master_name: Option<String>,
    /// Credentials of the master (the sentinel URLs' own are for the Sentinels); when absent,
    /// the URLs' credentials are used for both.
    pub sentinel_username: Option<String>,
    pub sentinel_password: Option<String>,
    /// PEM: a CA to trust instead of the system's, and a client certificate and key (mutual TLS).
    pub tls_ca: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
    pub connect_timeout_ms: Option<f64>,
    pub command_timeout_ms: Option<f64>,
}

/// Connect timeout when none is given.
const DEFAULT_CONNECT_TIMEOUT_MS: f64 = 2000.0;
const DEFAULT_COMMAND_TIMEOUT_MS: f64 = 2000.0;

/// A connection, ready to become a limiter.
pub(crate) enum Connected {
    Single(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
    Sentinel(
        Box<(
            redis::sentinel::SentinelClient,
            redis::AsyncConnectionConfig,
        )>,
    ),
}

impl Connected {
    pub(crate) fn builder(self) -> RateLimiterBuilder {
        match self {
            Self::Single(manager) => RateLimiter::builder(manager),
            Self::Cluster(cluster) => RateLimiter::cluster_builder(cluster),
            Self::Sentinel(sentinel) => {
                let (client, config) = *sentinel;
                RateLimiter::sentinel_builder(client, config)
            }
        }
    }
}

fn duration(value: Option<f64>, default: f64, name: &str) -> Result<Duration, TrypemaError> {
    let value = value.unwrap_or(default);
    if value.is_finite() && (1.0..=3_600_000.0).contains(&value) {
        Ok(Duration::from_millis(value as u64))
    } else {
        Err(TrypemaError::Redis(format!(
            "invalid {name} {value}: must be from 1 to 3600000 ms"
        )))
    }
}

fn certificates(options: &ConnectionOptions) -> Result<Option<TlsCertificates>, TrypemaError> {
    let client_tls = match (&options.tls_cert, &options.tls_key) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: cert.as_bytes().to_vec(),
            client_key: key.as_bytes().to_vec(),
        }),
        (None, None) => None,
        _ => {
            return Err(TrypemaError::Redis(
                "tls.cert and tls.key must be given together".into(),
            ))
        }
    };
    let root_cert = options.tls_ca.as_ref().map(|ca| ca.as_bytes().to_vec());
    Ok(
        (client_tls.is_some() || root_cert.is_some()).then_some(TlsCertificates {
            client_tls,
            root_cert,
        }),
    )
}

/// While connecting, no call can have been counted: a timeout is a connection failure.
fn invalid(error: redis::RedisError) -> TrypemaError {
    match trypema::redis::classify_error(&error) {
        TrypemaError::RedisTimeout(_) => {
            TrypemaError::RedisConnection(format!("could not connect: {}", "timed out"))
        }
        other => other,
    }
}

/// Connects within the connect timeout; errors name the problem, never the credentials.
pub(crate) async fn connect(options: &ConnectionOptions) -> Result<Connected, TrypemaError> {
    let connect_timeout = duration(
        options.connect_timeout_ms,
        DEFAULT_CONNECT_TIMEOUT_MS,
        "connectTimeoutMs",
    )?;
    let command_timeout = duration(
        options.command_timeout_ms,
        DEFAULT_COMMAND_TIMEOUT_MS,
        "commandTimeoutMs",
    )?;
    let certificates = certificates(options)?;
    let attempt = async {
        match (&options.url, &options.cluster, &options.sentinel_urls) {
            (Some(url), None, None) => {
                let client = match certificates {
                    Some(certificates) => redis::Client::build_with_tls(url.as_str(), certificates),
                    None => redis::Client::open(url.as_str()),
                }
                .map_err(invalid)?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(command_timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                let manager = client
                    .get_connection_manager_with_config(config)
                    .await
                    .map_err(invalid)?;
                Ok(Connected::Single(manager))
            }
            (None, Some(nodes), None) => {
                let mut builder = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                    .connection_timeout(connect_timeout)
                    .response_timeout(command_timeout);
                if let Some(certificates) = certificates {
                    builder = builder.certs(certificates);
                }
                let client = builder.build().map_err(invalid)?;
                let cluster = client.get_async_connection().await.map_err(invalid)?;
                Ok(Connected::Cluster(cluster))
            }
            (None, None, Some(urls)) => {
                let master = options
                    .sentinel_master_name
                    .clone()
                    .ok_or_else(|| TrypemaError::Redis("sentinel.masterName is required".into()))?;
                let infos = urls
                    .iter()
                    .map(|url| url.as_str().into_connection_info().map_err(invalid))
                    .collect::<Result<Vec<_>, _>>()?;
                let first = infos.first().ok_or_else(|| {
                    TrypemaError::Redis("sentinel.urls must name at least one Sentinel".into())
                })?;
                let redis_info = first.redis_settings();
                let mut builder = SentinelClientBuilder::new(
                    infos.iter().map(|info| info.addr().clone()),
                    master,
                    SentinelServerType::Master,
                )
                .map_err(invalid)?;
                // The URLs' credentials are the Sentinels'; the master's are its own when given,
                // else the same (a common set-up).
                if let Some(username) = redis_info.username() {
                    builder = builder.set_client_to_sentinel_username(username);
                }
                if let Some(password) = redis_info.password() {
                    builder = builder.set_client_to_sentinel_password(password);
                }
                let master_username = options.sentinel_username.as_deref().or(redis_info
                    .username()
                    .filter(|_| options.sentinel_password.is_none()));
                let master_password = options
                    .sentinel_password
                    .as_deref()
                    .or(redis_info.password());
                if let Some(username) = master_username {
                    builder = builder.set_client_to_redis_username(username);
                }
                if let Some(password) = master_password {
                    builder = builder.set_client_to_redis_password(password);
                }
                if let Some(certificates) = certificates {
                    builder = builder.set_client_to_redis_certificates(certificates);
                }
                let client = builder.build().map_err(invalid)?;
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(connect_timeout))
                    .set_response_timeout(Some(command_timeout));
                Ok(Connected::Sentinel(Box::new((client, config))))
            }
            _ => Err(TrypemaError::Redis(
                "give exactly one of url, cluster and sentinel".into(),
            )),
        }
    };
    match tokio::time::timeout(connect_timeout + Duration::from_millis(100), attempt).await {
        Ok(result) => result,
        Err(_) => Err(TrypemaError::RedisConnection(format!(
            "could not connect within {} ms",
            connect_timeout.as_millis()
        ))),
    }
}
