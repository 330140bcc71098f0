//! Typed configuration: defaults → `config.toml` → `TOLLGATE_SECTION__KEY` environment variables.
//!
//! Every key is validated at load time; an unknown key or a bad value stops startup with a
//! message that names the key. Secrets are wrapped in [`Secret`], whose `Debug` is redacted.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use chrono_tz::Tz;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// A string that must never be printed: `Debug` and `Display` show `[redacted]`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret(s)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("[redacted]")
        }
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub billing: BillingConfig,
    pub admin: AdminConfig,
    pub upstream: UpstreamConfig,
    pub recorder: RecorderConfig,
    pub log: LogConfig,
    pub secrets: SecretsConfig,
    pub metrics: MetricsConfig,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: String,
    pub max_body_bytes: usize,
    pub public_url: String,
    pub shutdown_grace_secs: u64,
    pub header_timeout_secs: u64,
    /// Peers whose `X-Forwarded-For` is believed (`crate::client_addr`); empty: nobody's.
    pub trusted_proxies: crate::client_addr::CidrList,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    pub url: Secret,
    pub max_connections: u32,
    /// Bound on waiting for a database connection (a hung database answers 503 past it), in
    /// milliseconds.
    pub timeout_ms: u64,
    /// Bound on one database read on the request path (key lookup, grants, prices,
    /// accounts, key budgets), in milliseconds: a database that hangs mid-query answers 503
    /// past it.
    pub statement_timeout_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    pub url: Secret,
    pub key_prefix: String,
    pub timeout_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BillingConfig {
    pub timezone: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub api_token: Secret,
    pub initial_username: String,
    pub initial_password: Secret,
    pub session_idle_minutes: u64,
    pub session_max_hours: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    pub connect_timeout_secs: u64,
    pub first_byte_timeout_secs: u64,
    pub idle_timeout_secs: u64,
    pub max_attempts: u32,
    pub cooldown_secs: u64,
    pub failure_threshold: u32,
    pub max_cooldown_secs: u64,
    pub max_tokens_per_request: i64,
    /// Seconds between background probes of cooling accounts (SPEC §11.2); 0 turns them off.
    pub probe_interval_secs: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RecorderConfig {
    pub queue_capacity: usize,
    pub batch_size: usize,
    pub flush_interval_ms: u64,
    pub journal_path: String,
    /// Largest size of the journal in bytes; 0 = no limit but the disk's.
    pub journal_max_bytes: u64,
}

/// `/metrics` access: with `token` set, a scrape must send `Authorization: Bearer <token>`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub token: Secret,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub level: String,
    pub format: String,
    /// One line per proxied request (target `tollgate::access`, level info).
    pub access: bool,
}

/// Upstream account secrets at rest (SPEC §11.7).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// 32 bytes in base64; empty = account secrets are stored in plaintext (warned at start).
    pub key: Secret,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            max_body_bytes: 33_554_432,
            public_url: String::new(),
            shutdown_grace_secs: 30,
            header_timeout_secs: 10,
            trusted_proxies: Default::default(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: Secret::new("sqlite://data/tollgate.db"),
            max_connections: 16,
            timeout_ms: 2000,
            statement_timeout_ms: 2000,
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: Secret::default(),
            key_prefix: "tollgate:".into(),
            timeout_ms: 50,
        }
    }
}

impl Default for BillingConfig {
    fn default() -> Self {
        BillingConfig {
            timezone: "UTC".into(),
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            api_token: Secret::default(),
            initial_username: "admin".into(),
            initial_password: Secret::default(),
            session_idle_minutes: 60,
            session_max_hours: 12,
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            connect_timeout_secs: 10,
            first_byte_timeout_secs: 300,
            idle_timeout_secs: 120,
            max_attempts: 3,
            cooldown_secs: 30,
            failure_threshold: 3,
            max_cooldown_secs: 300,
            max_tokens_per_request: 10_000_000,
            probe_interval_secs: 10,
        }
    }
}

impl Default for RecorderConfig {
    fn default() -> Self {
        RecorderConfig {
            queue_capacity: 100_000,
            batch_size: 200,
            flush_interval_ms: 50,
            journal_path: "data/recorder-journal".into(),
            journal_max_bytes: 0,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: "text".into(),
            access: true,
        }
    }
}

/// A configuration error; its message always names the offending key.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

/// Which database a URL points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbKind {
    Sqlite,
    MySql,
}

impl Config {
    /// Load defaults, then the file (if it exists, or fail if it was named explicitly and is
    /// missing), then `TOLLGATE_*` environment variables; then validate.
    pub fn load(path: &Path, must_exist: bool) -> Result<Config, ConfigError> {
        if must_exist && !path.exists() {
            return Err(ConfigError(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        Self::from_figment(
            Figment::from(Serialized::defaults(Config::default()))
                .merge(Toml::file(path))
                // Only SECTION__KEY variables are configuration; other TOLLGATE_* variables
                // (test settings, CLI flags) are not.
                .merge(
                    Env::prefixed("TOLLGATE_")
                        .filter(|k| k.as_str().contains("__"))
                        .split("__"),
                ),
        )
    }

    /// Parse a TOML string over the defaults (no environment); used by tests and `check-config`.
    pub fn from_toml_str(s: &str) -> Result<Config, ConfigError> {
        Self::from_figment(
            Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(s)),
        )
    }

    fn from_figment(fig: Figment) -> Result<Config, ConfigError> {
        let cfg: Config = fig.extract().map_err(|e| {
            let key = e.path.join(".");
            let msgs: Vec<String> = e.clone().into_iter().map(|e| e.kind.to_string()).collect();
            if key.is_empty() {
                ConfigError(msgs.join("; "))
            } else {
                ConfigError(format!("`{key}`: {}", msgs.join("; ")))
            }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, msg: String| Err(ConfigError(format!("`{key}`: {msg}")));
        if SocketAddr::from_str(&self.server.listen).is_err() {
            return bad(
                "server.listen",
                format!(
                    "`{}` is not an address like 127.0.0.1:8080",
                    self.server.listen
                ),
            );
        }
        if self.server.max_body_bytes == 0 {
            return bad("server.max_body_bytes", "must be greater than 0".into());
        }
        if !self.server.public_url.is_empty() && url::Url::parse(&self.server.public_url).is_err() {
            return bad("server.public_url", "is not a valid URL".into());
        }
        self.db_kind()?;
        if self.database.max_connections == 0 {
            return bad("database.max_connections", "must be greater than 0".into());
        }
        if self.database.timeout_ms == 0 {
            return bad("database.timeout_ms", "must be greater than 0".into());
        }
        if self.database.statement_timeout_ms == 0 {
            return bad(
                "database.statement_timeout_ms",
                "must be greater than 0".into(),
            );
        }
        let redis = self.redis.url.expose();
        if !(redis.is_empty() || redis.starts_with("redis://") || redis.starts_with("rediss://")) {
            return bad(
                "redis.url",
                "must start with redis:// or rediss:// (or be empty for in-process counters)"
                    .into(),
            );
        }
        if Tz::from_str(&self.billing.timezone).is_err() {
            return bad(
                "billing.timezone",
                format!(
                    "`{}` is not an IANA time zone name such as UTC or Asia/Shanghai",
                    self.billing.timezone
                ),
            );
        }
        for (key, v) in [
            (
                "upstream.connect_timeout_secs",
                self.upstream.connect_timeout_secs,
            ),
            (
                "upstream.first_byte_timeout_secs",
                self.upstream.first_byte_timeout_secs,
            ),
            (
                "upstream.idle_timeout_secs",
                self.upstream.idle_timeout_secs,
            ),
            (
                "server.header_timeout_secs",
                self.server.header_timeout_secs,
            ),
            ("redis.timeout_ms", self.redis.timeout_ms),
        ] {
            if v == 0 {
                return bad(key, "must be greater than 0".into());
            }
        }
        if self.upstream.max_tokens_per_request <= 0 {
            return bad(
                "upstream.max_tokens_per_request",
                "must be greater than 0".into(),
            );
        }
        if self.upstream.max_attempts == 0 {
            return bad("upstream.max_attempts", "must be at least 1".into());
        }
        if self.upstream.failure_threshold == 0 {
            return bad("upstream.failure_threshold", "must be at least 1".into());
        }
        if self.upstream.max_cooldown_secs < self.upstream.cooldown_secs {
            return bad(
                "upstream.max_cooldown_secs",
                "must be at least upstream.cooldown_secs".into(),
            );
        }
        if self.recorder.queue_capacity == 0 {
            return bad("recorder.queue_capacity", "must be greater than 0".into());
        }
        if self.recorder.batch_size == 0 {
            return bad("recorder.batch_size", "must be greater than 0".into());
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return bad("log.format", "must be `text` or `json`".into());
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return bad("log.level", "is not a valid log filter".into());
        }
        if let Err(e) = crate::secrets::at_rest::Sealer::from_config(&self.secrets.key) {
            return Err(ConfigError(e.to_string()));
        }
        Ok(())
    }

    pub fn db_kind(&self) -> Result<DbKind, ConfigError> {
        db_kind_of(self.database.url.expose())
    }

    pub fn timezone(&self) -> Tz {
        Tz::from_str(&self.billing.timezone).unwrap_or(Tz::UTC)
    }

    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::from_str(&self.server.listen)
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8080)))
    }

    pub fn journal_path(&self) -> PathBuf {
        PathBuf::from(&self.recorder.journal_path)
    }
}

pub fn db_kind_of(url: &str) -> Result<DbKind, ConfigError> {
    if url.starts_with("sqlite:") {
        Ok(DbKind::Sqlite)
    } else if url.starts_with("mysql://") || url.starts_with("mariadb://") {
        Ok(DbKind::MySql)
    } else {
        let scheme = url.split(':').next().unwrap_or("");
        Err(ConfigError(format!(
            "`database.url`: unsupported scheme `{scheme}`; use sqlite://PATH or mysql://USER@HOST/DB"
        )))
    }
}

/// The shipped, commented default configuration (also `tollgate print-default-config`).
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../config.toml");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_equals_defaults() {
        let cfg = Config::from_toml_str(DEFAULT_CONFIG_TOML).expect("shipped config parses");
        assert_eq!(cfg, Config::default());
    }

    #[test]
    fn shipped_config_documents_every_key() {
        let defaults = serde_json::to_value(Config::default()).unwrap();
        for (section, keys) in defaults.as_object().unwrap() {
            assert!(
                DEFAULT_CONFIG_TOML.contains(&format!("[{section}]")),
                "config.toml lacks section [{section}]"
            );
            for key in keys.as_object().unwrap().keys() {
                let line = DEFAULT_CONFIG_TOML
                    .lines()
                    .any(|l| l.trim_start().starts_with(&format!("{key} =")));
                assert!(line, "config.toml does not document `{section}.{key}`");
            }
        }
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml_str("[server]\nlisten = \"127.0.0.1:1\"\nlistne = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listne"), "{err}");
        let err = Config::from_toml_str("[nosuch]\na = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nosuch"), "{err}");
    }

    #[test]
    fn invalid_values_are_named() {
        let cases = [
            ("[database]\nurl = \"postgres://x/y\"\n", "database.url"),
            (
                "[billing]\ntimezone = \"Mars/Olympus\"\n",
                "billing.timezone",
            ),
            ("[server]\nlisten = \"not-an-address\"\n", "server.listen"),
            ("[redis]\nurl = \"http://x\"\n", "redis.url"),
            (
                "[server]\nmax_body_bytes = \"big\"\n",
                "server.max_body_bytes",
            ),
            (
                "[upstream]\nidle_timeout_secs = 0\n",
                "upstream.idle_timeout_secs",
            ),
            ("[secrets]\nkey = \"c2hvcnQ=\"\n", "secrets.key"),
            ("[secrets]\nkey = \"not base64!\"\n", "secrets.key"),
            (
                "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/40\"]\n",
                "`10.0.0.0/40`",
            ),
        ];
        for (toml, key) in cases {
            let err = Config::from_toml_str(toml).unwrap_err().to_string();
            assert!(err.contains(key), "{toml:?} → {err}");
        }
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn env_overrides_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[billing]\ntimezone = \"Asia/Shanghai\"\n")?;
            jail.set_env("TOLLGATE_DATABASE__URL", "mysql://root@127.0.0.1/x");
            jail.set_env("TOLLGATE_SERVER__MAX_BODY_BYTES", "1024");
            jail.set_env("TOLLGATE_TEST_BACKEND", "mysql");
            let cfg = Config::load(Path::new("c.toml"), true).unwrap();
            assert_eq!(cfg.billing.timezone, "Asia/Shanghai");
            assert_eq!(cfg.database.url.expose(), "mysql://root@127.0.0.1/x");
            assert_eq!(cfg.server.max_body_bytes, 1024);
            assert_eq!(cfg.db_kind().unwrap(), DbKind::MySql);
            Ok(())
        });
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let mut cfg = Config::default();
        cfg.admin.api_token = Secret::new("tok-very-secret");
        cfg.database.url = Secret::new("mysql://root:hunter2@db/x");
        cfg.secrets.key = Secret::new("c2VjcmV0cy1rZXktMzItYnl0ZXMtbG9uZy0hISEhISE=");
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("tok-very-secret"));
        assert!(!dbg.contains("hunter2"));
        assert!(!dbg.contains("c2VjcmV0cy1rZXkt"));
        assert!(dbg.contains("[redacted]"));
    }
}
