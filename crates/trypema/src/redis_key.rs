use crate::TrypemaError;

/// A key of the Redis-backed providers: any text of 1 to 255 bytes (`:`, `{`, `}` included, so
/// `req.ip` or `user:123` work as they are). Also used for the prefix, which additionally has no
/// `:`, so the layout `{<prefix>:<key>}:a` maps distinct (prefix, key) pairs to distinct Redis
/// keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RedisKey(String);

pub(crate) const MAX_REDIS_KEY_BYTES: usize = 255;

fn check(value: &str) -> Result<(), String> {
    if value.is_empty() {
        Err("must not be empty".into())
    } else if value.len() > MAX_REDIS_KEY_BYTES {
        Err(format!(
            "must be at most {MAX_REDIS_KEY_BYTES} bytes, got {}",
            value.len()
        ))
    } else {
        Ok(())
    }
}

impl RedisKey {
    /// Validates `value`.
    pub fn new(value: impl Into<String>) -> Result<Self, TrypemaError> {
        let value = value.into();
        Self::check(&value)?;
        Ok(Self(value))
    }

    /// Checks `value` against the key rules without allocating.
    pub fn check(value: &str) -> Result<(), TrypemaError> {
        check(value).map_err(|reason| TrypemaError::InvalidRedisKey(format!("a key {reason}")))
    }

    /// Like [`Self::new`], panicking on an invalid value; for constants.
    pub fn new_or_panic(value: impl Into<String>) -> Self {
        Self::new(value).unwrap_or_else(|error| panic!("{error}"))
    }

    /// The error for a key of `len` bytes, more than the 255 a key may have.
    pub fn too_long(len: usize) -> TrypemaError {
        TrypemaError::InvalidRedisKey(format!(
            "a key must be at most {MAX_REDIS_KEY_BYTES} bytes, got {len}"
        ))
    }

    /// The prefix used when none is configured: `trypema`.
    pub fn default_prefix() -> Self {
        Self("trypema".into())
    }

    /// Validates a prefix: the key rules, and no `:`.
    pub(crate) fn prefix(value: impl Into<String>) -> Result<Self, TrypemaError> {
        let value = value.into();
        check(&value)
            .and_then(|()| match value.contains(':') {
                true => Err(format!("must not contain ':', got {value:?}")),
                false => Ok(()),
            })
            .map_err(|reason| TrypemaError::InvalidRedisPrefix(format!("a prefix {reason}")))?;
        Ok(Self(value))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RedisKey {
    type Error = TrypemaError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<&str> for RedisKey {
    type Error = TrypemaError;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl AsRef<str> for RedisKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RedisKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
