//! Typed settings, layered: built-in defaults (`config/default.toml`, compiled
//! in) → an optional file → `OPENIM_CALLBACK__SECTION__KEY` environment
//! variables. Loaded and validated once at start-up; a bad key stops the
//! process with one line naming it.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

// Each sink's section is its own, with its checks: the sinks own them.
pub use crate::sinks::SinksSettings;
pub use crate::sinks::forward::ForwardTarget;
pub use crate::sinks::log::LogSinkSettings;
pub use crate::sinks::redis_stream::RedisStreamSinkSettings;
pub use crate::sinks::sql::SqlSinkSettings;
pub use crate::sinks::stats::settings::{StatsBackend, StatsSettings, StatsSinkSettings};

/// The defaults, and the documentation of every key.
pub const DEFAULTS_TOML: &str = include_str!("../config/default.toml");

/// Prefix of the environment variables that override settings.
pub const ENV_PREFIX: &str = "OPENIM_CALLBACK";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub callbacks: CallbacksSettings,
    pub telemetry: TelemetrySettings,
    pub sinks: SinksSettings,
    pub auth: AuthSettings,
    pub stats: StatsSettings,
    pub journal: JournalSettings,
}

/// Which of OpenIM's callbacks are recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallbacksSettings {
    /// OpenIM's `webhooks.yml` keys (`afterSendSingleMsg`, …); a command not
    /// listed is answered as an unknown one.
    pub record: Vec<String>,
}

impl CallbacksSettings {
    pub fn records(&self, command: &crate::callbacks::Command) -> bool {
        self.record.iter().any(|key| key == command.key)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalSettings {
    /// Directory of the segment files, sink cursors and the lock.
    pub dir: PathBuf,
    /// What is done before a 200: write(2), or write(2) and fdatasync.
    pub sync: SyncMode,
    /// How often written records are fdatasynced with `sync = "os"`.
    #[serde(with = "humantime_serde")]
    pub sync_interval: Duration,
    /// A segment file is closed and a new one started past this size.
    #[serde(deserialize_with = "byte_size")]
    pub segment_bytes: u64,
    /// The journal's size limit.
    #[serde(deserialize_with = "byte_size")]
    pub max_bytes: u64,
    /// Disk space held in reserve (`<dir>/RESERVE`) and given back when the
    /// disk is full, so positions and snapshots can still be saved and the
    /// journal can recover; 0 for none.
    #[serde(deserialize_with = "byte_size")]
    pub reserve_bytes: u64,
    /// What happens when a sink is so far behind that the journal reaches `max_bytes`.
    pub when_full: WhenFull,
    /// How often a sink's position is saved while it works (and always when it stops).
    #[serde(with = "humantime_serde")]
    pub cursor_interval: Duration,
    /// Segments every sink has read are kept at least this long after they
    /// close (for a sink added with `start = "oldest"`, or a look with
    /// `journal cat`); 0 deletes them at once. They give way when the journal
    /// needs the room.
    #[serde(with = "humantime_serde")]
    pub retain: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Written to the OS before the 200; fdatasync every `sync_interval`.
    Os,
    /// fdatasync before the 200 (group commit).
    Always,
}

impl SyncMode {
    /// The name used in settings.
    pub fn name(self) -> &'static str {
        match self {
            SyncMode::Os => "os",
            SyncMode::Always => "always",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenFull {
    /// Keep accepting; the sinks that are behind skip their oldest unread records.
    Skip,
    /// Answer 503 until the sinks catch up.
    Refuse,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address and port to listen on (a host name is resolved at start).
    #[serde(deserialize_with = "listen_address")]
    pub listen: SocketAddr,
    /// Path part of the webhook URL configured in OpenIM, without a trailing slash.
    pub base_path: String,
    /// Refuse callbacks that carry no operation id (else one is generated).
    pub require_operation_id: bool,
    /// Largest request body accepted, in bytes.
    #[serde(deserialize_with = "byte_size_usize")]
    pub max_body_bytes: usize,
    /// Every request is answered within this time.
    #[serde(with = "humantime_serde")]
    pub response_timeout: Duration,
    /// Time allowed at shutdown to finish requests and drain sink queues.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Time a client has to send a complete request head (slowloris defence).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// An idle keep-alive connection is closed after this long: above Go's 90 s,
    /// so that OpenIM's client, not the receiver, closes an idle connection.
    #[serde(with = "humantime_serde")]
    pub keep_alive_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// Requests handled at once; beyond it, an immediate 503.
    pub max_in_flight: usize,
    /// Threads that serve HTTP connections, each connection on one of them
    /// from accept to close: 0, one per core; 1, one (and one standing by
    /// for new connections while it is held up); N, N in turn.
    pub worker_threads: usize,
    /// Largest request head, in bytes.
    #[serde(deserialize_with = "byte_size_usize")]
    pub max_header_bytes: usize,
    /// Most header fields in an HTTP/1 request head (431 past it).
    pub max_headers: usize,
    /// Proxies whose X-Forwarded-For is believed.
    #[serde(deserialize_with = "ip_ranges")]
    pub trusted_proxies: Vec<IpNet>,
    pub tls: TlsSettings,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain; empty for plain HTTP.
    pub cert_path: PathBuf,
    /// PEM private key; empty for plain HTTP.
    pub key_path: PathBuf,
}

impl TlsSettings {
    pub fn enabled(&self) -> bool {
        !self.cert_path.as_os_str().is_empty()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSettings {
    /// Secret path segment (or bearer token) callers must present; empty for none.
    pub token: Secret,
    /// Who may call, by peer address (or X-Forwarded-For from a trusted proxy).
    #[serde(deserialize_with = "ip_ranges")]
    pub allow_ips: Vec<IpNet>,
}

/// A setting that is never shown: `Debug` and serialization redact it.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

/// What `--print-config` shows instead of a secret.
pub const REDACTED: &str = "<redacted>";

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Secret {
    /// What may be shown: nothing of a token; of a URL everything but its
    /// secrets, so `--print-config`, logs and `/stats` still say where it points.
    pub fn shown(&self) -> std::borrow::Cow<'_, str> {
        if self.0.is_empty() {
            return "".into();
        }
        // A Redis Cluster's nodes: `redis://…,redis://…`.
        if self.0.matches("://").count() > 1 {
            let nodes: Option<Vec<_>> = self.0.split(',').map(|node| shown_url(node.trim())).collect();
            return nodes.map_or(REDACTED.into(), |nodes| nodes.join(",").into());
        }
        match shown_url(&self.0) {
            Some(shown) => shown,
            None => REDACTED.into(),
        }
    }

    /// True when the value still holds the placeholder `--print-config` shows.
    pub fn is_placeholder(&self) -> bool {
        self.0.contains(REDACTED)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.shown())
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.shown())
    }
}

/// Query parameters that hold a secret in database and Redis URLs
/// (`?password=`, PostgreSQL's `sslpassword`, a `token`), compared ignoring case.
const SECRET_PARAMETERS: [&str; 6] = ["password", "pass", "pwd", "sslpassword", "token", "secret"];

/// A URL (`scheme://user:password@host/…?password=…`) with its password and
/// secret query parameters replaced by [`REDACTED`]; None when `text` is no URL.
pub fn shown_url(text: &str) -> Option<std::borrow::Cow<'_, str>> {
    let (scheme, rest) = text.split_once("://")?;
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let (authority, path) = before_query.split_at(before_query.find('/').unwrap_or(before_query.len()));
    let (authority, hid_user_info) = match authority.rsplit_once('@') {
        Some((user_info, host)) if user_info.contains(':') => {
            let user = user_info.split_once(':').map_or(user_info, |(user, _)| user);
            (format!("{user}:{REDACTED}@{host}"), true)
        }
        _ => (authority.to_owned(), false),
    };
    let mut hid_parameter = false;
    let query = query.map(|query| {
        let parameters = query.split('&').map(|parameter| {
            let name = parameter.split('=').next().unwrap_or_default();
            if SECRET_PARAMETERS.iter().any(|secret| name.eq_ignore_ascii_case(secret)) {
                hid_parameter = true;
                format!("{name}={REDACTED}")
            } else {
                parameter.to_owned()
            }
        });
        parameters.collect::<Vec<_>>().join("&")
    });
    if !hid_user_info && !hid_parameter {
        return Some(text.into());
    }
    let query = query.map(|query| format!("?{query}")).unwrap_or_default();
    Some(format!("{scheme}://{authority}{path}{query}").into())
}

/// CIDR ranges or plain addresses (a plain address is its own /32 or /128).
fn ip_ranges<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    let texts = Vec::<String>::deserialize(deserializer)?;
    texts.iter().map(|text| parse_ip_range(text).map_err(serde::de::Error::custom)).collect()
}

pub fn parse_ip_range(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not an IP address or CIDR range"))
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    /// Log line format.
    pub format: LogFormat,
    /// tracing filter for diagnostic events.
    pub level: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Pretty on a terminal, JSON otherwise.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Pretty,
}

/// A settings enum read from its name; any other name is refused with the
/// names allowed (serde's own message names the Rust type instead).
macro_rules! named_choices {
    ($type:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $type {
            /// The names this setting takes.
            pub const NAMES: &'static [&'static str] = &[$($name),+];
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let name = String::deserialize(deserializer)?;
                match name.as_str() {
                    $($name => Ok($type::$variant),)+
                    other => Err(serde::de::Error::custom(format!(
                        "{other:?} is not one of {}",
                        Self::NAMES.join(", ")
                    ))),
                }
            }
        }
    };
}

named_choices!(SyncMode { Os => "os", Always => "always" });
named_choices!(WhenFull { Skip => "skip", Refuse => "refuse" });
named_choices!(LogFormat { Auto => "auto", Json => "json", Pretty => "pretty" });
pub(crate) use named_choices;

/// A size in bytes: a whole number (`67108864`), or one with a unit
/// (`"64MiB"`, `"1 GiB"`, `"512KB"`; KiB/MiB/GiB/TiB are powers of 1024,
/// KB/MB/GB/TB of 1000, B is bytes).
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let invalid = || {
        format!("{text:?} is not a size: use a number of bytes or one like \"64MiB\", \"1GiB\", \"512KB\"")
    };
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(invalid()),
    };
    number.checked_mul(multiplier).ok_or_else(|| format!("{text:?} is too large"))
}

pub(crate) fn byte_size<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(deserializer)? {
        Size::Bytes(bytes) => Ok(bytes),
        Size::Text(text) => parse_byte_size(&text).map_err(serde::de::Error::custom),
    }
}

fn byte_size_usize<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
    let bytes = byte_size(deserializer)?;
    usize::try_from(bytes).map_err(|_| serde::de::Error::custom(format!("{bytes} is too large")))
}

/// `host:port`: an IP address, or a host name (its first IPv4 address, else
/// its first address), like `0.0.0.0:10006` or `localhost:10006`.
pub fn resolve_listen(text: &str) -> Result<SocketAddr, String> {
    if let Ok(address) = text.parse() {
        return Ok(address);
    }
    let invalid = || format!("{text:?} is not host:port, like 0.0.0.0:10006 or localhost:10006");
    let (host, port) = text.rsplit_once(':').ok_or_else(invalid)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(invalid());
    }
    let addresses: Vec<SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(text)
        .map_err(|error| format!("{text:?}: cannot resolve {host:?}: {error}"))?
        .collect();
    addresses
        .iter()
        .find(|address| address.is_ipv4())
        .or(addresses.first())
        .copied()
        .ok_or_else(|| format!("{text:?}: {host:?} has no address"))
}

fn listen_address<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    resolve_listen(&text).map_err(serde::de::Error::custom)
}

/// `telemetry.level` takes levels and `target=level` directives. A bare word
/// that is no level would be read by tracing as a target name at TRACE, which
/// silences everything else: refused instead.
fn check_level(level: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    for directive in level.split(',').map(str::trim) {
        if directive.contains('=') || LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
            continue;
        }
        return Err(format!(
            "{directive:?} is not a level: use one of {}, or target=level (like openim_callback_receiver=debug)",
            LEVELS.join(", ")
        ));
    }
    Ok(())
}

/// A key whose value is refused, and why: what each section's own check answers.
#[derive(Debug)]
pub struct Invalid {
    pub key: String,
    pub why: String,
}

impl Invalid {
    pub fn new(key: impl Into<String>, why: impl Into<String>) -> Self {
        Invalid { key: key.into(), why: why.into() }
    }

    fn into_error(self) -> SettingsError {
        SettingsError(format!("{}: {}", self.key, self.why))
    }
}

/// Longest a duration setting may be: past it, arithmetic on it (a deadline) could overflow.
pub const LONGEST: Duration = Duration::from_secs(3600);

/// `value` is longer than 0 and at most `max`.
pub fn check_duration(key: &str, value: Duration, max: Duration) -> Result<(), Invalid> {
    if value.is_zero() || value > max {
        let why = format!("must be longer than 0s and at most {}", humantime::format_duration(max));
        return Err(Invalid::new(key, why));
    }
    Ok(())
}

/// `value` is from `min` to `max`.
pub fn check_count(key: &str, value: u64, min: u64, max: u64) -> Result<(), Invalid> {
    if !(min..=max).contains(&value) {
        return Err(Invalid::new(key, format!("must be from {min} to {max}")));
    }
    Ok(())
}

/// The secret is not the placeholder `--print-config` shows in its place.
pub fn check_not_placeholder(key: &str, secret: &Secret) -> Result<(), Invalid> {
    if secret.is_placeholder() {
        return Err(Invalid::new(key, "set the real password, not the placeholder --print-config shows"));
    }
    Ok(())
}

/// A callback key that is no command's.
pub fn unknown_callback(key: &str, unknown: &str) -> Invalid {
    let known: Vec<&str> = crate::callbacks::COMMANDS.iter().map(|command| command.key).collect();
    Invalid::new(key, format!("unknown callback {unknown:?}; known: {}", known.join(", ")))
}

/// A setting that stops start-up; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid settings: {0}")]
pub struct SettingsError(String);

/// The layers a key may have come from, to say which one holds a bad key.
struct Sources<'a> {
    file: Option<&'a Path>,
    variables: Vec<String>,
}

impl Sources<'_> {
    /// "in <file>: " or "in OPENIM_CALLBACK__…: " for the layer that sets
    /// `key` last (the environment wins over the file); "" for the defaults.
    fn where_set(&self, key: &str) -> String {
        let variable = format!("{ENV_PREFIX}__{}", key.replace('.', "__")).to_uppercase();
        if self.variables.iter().any(|name| name.to_uppercase() == variable) {
            return format!("in {variable}: ");
        }
        let Some(file) = self.file else { return String::new() };
        let Ok(table) = std::fs::read_to_string(file).map(|text| text.parse::<toml::Table>()) else {
            return String::new();
        };
        let Ok(table) = table else { return String::new() };
        let mut node = Some(&toml::Value::Table(table));
        for part in key.split('.') {
            node = node.and_then(|value| value.get(part));
        }
        if node.is_some() { format!("in {}: ", file.display()) } else { String::new() }
    }
}

/// Variables named like ours that set nothing: the settings take
/// `OPENIM_CALLBACK__SECTION__KEY` (two underscores after the prefix), and an
/// unknown key there stops start-up; `OPENIM_CALLBACK_SERVER_LISTEN` (one
/// underscore) would otherwise be ignored without a word.
pub fn ignored_variables(names: impl IntoIterator<Item = String>) -> Vec<String> {
    /// Read by the command line (`--config`) and by the test suite.
    const OTHER_USES: [&str; 2] = ["OPENIM_CALLBACK_CONFIG", "OPENIM_CALLBACK_REQUIRE_SERVICES"];
    let mut ignored: Vec<String> = names
        .into_iter()
        .filter(|name| {
            let upper = name.to_ascii_uppercase();
            upper.starts_with(ENV_PREFIX)
                && !upper.starts_with(&format!("{ENV_PREFIX}__"))
                && !OTHER_USES.contains(&upper.as_str())
                && !upper.starts_with("OPENIM_CALLBACK_TEST_")
        })
        .collect();
    ignored.sort();
    ignored
}

/// Where the environment layer comes from: the process, or a map given by a test.
pub enum EnvSource {
    Process,
    Map(HashMap<String, String>),
}

impl Settings {
    /// The built-in defaults alone.
    pub fn defaults() -> Self {
        Self::load(None, EnvSource::Map(HashMap::new())).expect("the built-in defaults are valid")
    }

    /// Layers defaults, the optional file and the environment, then validates.
    pub fn load(file: Option<&Path>, env: EnvSource) -> Result<Self, SettingsError> {
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS_TOML, config::FileFormat::Toml));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(SettingsError(format!("config file {} not found", path.display())));
            }
            builder = builder.add_source(config::File::from(path).required(true));
        }
        let mut environment = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("server.trusted_proxies")
            .with_list_parse_key("auth.allow_ips")
            .with_list_parse_key("callbacks.record");
        let variables: Vec<String> = match &env {
            EnvSource::Process => std::env::vars().map(|(name, _)| name).collect(),
            EnvSource::Map(map) => map.keys().cloned().collect(),
        };
        if let EnvSource::Map(map) = env {
            environment = environment.source(Some(map));
        }
        let layered =
            builder.add_source(environment).build().map_err(|error| SettingsError(error.to_string()))?;
        let sources = Sources { file, variables };
        let settings: Settings = serde_path_to_error::deserialize(layered).map_err(|error| {
            let key = error.path().to_string();
            // config adds " for key `…`" to what the key already says.
            let why = error.inner().to_string();
            let why = why.split(" for key `").next().unwrap_or_default().to_owned();
            SettingsError(format!("{}{key}: {why}", sources.where_set(&key)))
        })?;
        settings.validate().map_err(|SettingsError(message)| {
            let key = message.split(':').next().unwrap_or_default();
            SettingsError(format!("{}{message}", sources.where_set(key)))
        })?;
        Ok(settings)
    }

    /// Checks what types alone cannot say.
    fn validate(&self) -> Result<(), SettingsError> {
        let fail = |key: &str, why: &str| Err(SettingsError(format!("{key}: {why}")));
        if let Some(unknown) =
            self.callbacks.record.iter().find(|key| crate::callbacks::Command::by_key(key).is_none())
        {
            return Err(unknown_callback("callbacks.record", unknown).into_error());
        }
        let base = &self.server.base_path;
        if !base.starts_with('/') {
            return fail("server.base_path", "must start with '/'");
        }
        if base.contains(['?', '#', '{', '}', '*']) || base.contains("//") {
            return fail("server.base_path", "must be a plain path (no '?', '#', '{', '}', '*' or '//')");
        }
        let server = &self.server;
        // Every number and duration within a sane range: past these, arithmetic
        // on them (a deadline, a semaphore's permits) would overflow or panic.
        const HOUR: Duration = LONGEST;
        let durations = [
            ("server.response_timeout", server.response_timeout, HOUR),
            ("server.shutdown_timeout", server.shutdown_timeout, HOUR),
            ("server.header_read_timeout", server.header_read_timeout, HOUR),
            ("server.keep_alive_timeout", server.keep_alive_timeout, HOUR),
            ("journal.sync_interval", self.journal.sync_interval, HOUR),
            ("journal.cursor_interval", self.journal.cursor_interval, HOUR),
        ];
        for (key, value, max) in durations {
            if value.is_zero() || value > max {
                return fail(
                    key,
                    &format!("must be longer than 0s and at most {}", humantime::format_duration(max)),
                );
            }
        }
        if self.journal.retain > Duration::from_secs(366 * 86_400) {
            return fail("journal.retain", "must be at most 366 days (0 keeps nothing past its readers)");
        }
        let counts = [
            // A journal record holds a body: below record::MAX_PAYLOAD_LEN with room to spare.
            ("server.max_body_bytes", server.max_body_bytes as u64, 1, 128 * 1024 * 1024),
            ("server.max_connections", server.max_connections as u64, 1, 1_000_000),
            ("server.max_in_flight", server.max_in_flight as u64, 1, 1_000_000),
            ("server.worker_threads", server.worker_threads as u64, 0, 1024),
            ("server.max_header_bytes", server.max_header_bytes as u64, 8192, 1024 * 1024),
            ("server.max_headers", server.max_headers as u64, 16, 10_000),
            ("journal.segment_bytes", self.journal.segment_bytes, 1024 * 1024, 1024 * 1024 * 1024),
            ("journal.max_bytes", self.journal.max_bytes, 2 * 1024 * 1024, 1 << 50),
            ("journal.reserve_bytes", self.journal.reserve_bytes, 0, 1 << 30),
        ];
        for (key, value, min, max) in counts {
            if !(min..=max).contains(&value) {
                return fail(key, &format!("must be from {min} to {max}"));
            }
        }
        let tls = &server.tls;
        if tls.cert_path.as_os_str().is_empty() != tls.key_path.as_os_str().is_empty() {
            return fail("server.tls", "set both cert_path and key_path, or neither");
        }
        for (key, path) in [("server.tls.cert_path", &tls.cert_path), ("server.tls.key_path", &tls.key_path)]
        {
            if !path.as_os_str().is_empty() && !path.is_file() {
                return fail(key, &format!("{} is not a readable file", path.display()));
            }
        }
        let token = self.auth.token.expose();
        if token == REDACTED {
            return fail("auth.token", "set the real token, not the placeholder --print-config shows");
        }
        if !token.is_empty()
            && (token.len() < 16 || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b)))
        {
            return fail(
                "auth.token",
                "must be at least 16 characters of A-Z a-z 0-9 - _ . ~ (it is a URL path segment)",
            );
        }
        self.stats.validate().map_err(Invalid::into_error)?;
        self.sinks.validate().map_err(Invalid::into_error)?;
        let journal = &self.journal;
        if journal.dir.as_os_str().is_empty() {
            return fail("journal.dir", "must name a directory");
        }
        if journal.max_bytes < 2 * journal.segment_bytes {
            return fail("journal.max_bytes", "must be at least twice journal.segment_bytes");
        }
        if let Err(why) = check_level(&self.telemetry.level) {
            return fail("telemetry.level", &why);
        }
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&self.telemetry.level) {
            return fail("telemetry.level", &error.to_string());
        }
        Ok(())
    }

    /// The base path as routes use it: no trailing slash, "" for the root.
    pub fn callback_base(&self) -> &str {
        self.server.base_path.trim_end_matches('/')
    }

    /// The effective settings as TOML, loadable again with `--config`.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("settings serialize to TOML")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> EnvSource {
        EnvSource::Map(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn defaults_match_the_documented_file() {
        let settings = Settings::defaults();
        assert_eq!(settings.server.listen, "127.0.0.1:10006".parse().unwrap());
        assert_eq!(settings.server.base_path, "/callbackExample");
        assert_eq!(settings.server.response_timeout, Duration::from_secs(3));
        assert_eq!(settings.server.max_body_bytes, 4 * 1024 * 1024);
        assert_eq!(settings.telemetry.format, LogFormat::Auto);
        // Longer than the 90 s Go's HTTP client (OpenIM's) keeps an idle connection.
        assert!(settings.server.keep_alive_timeout > Duration::from_secs(90));
        assert!(settings.server.header_read_timeout < settings.server.keep_alive_timeout);
    }

    #[test]
    fn environment_overrides_nested_keys_with_typed_values() {
        let settings = Settings::load(
            None,
            env(&[
                ("OPENIM_CALLBACK__SERVER__LISTEN", "0.0.0.0:9000"),
                ("OPENIM_CALLBACK__SINKS__LOG__INCLUDE_CONTENT", "false"),
                ("OPENIM_CALLBACK__SERVER__RESPONSE_TIMEOUT", "250ms"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.server.listen.port(), 9000);
        assert!(!settings.sinks.log.include_content);
        assert_eq!(settings.server.response_timeout, Duration::from_millis(250));
    }

    #[test]
    fn unknown_and_invalid_keys_are_named() {
        let unknown = Settings::load(None, env(&[("OPENIM_CALLBACK__SERVER__LISTN", "x")])).unwrap_err();
        assert!(unknown.to_string().contains("listn"), "{unknown}");
        let invalid =
            Settings::load(None, env(&[("OPENIM_CALLBACK__SERVER__MAX_BODY_BYTES", "lots")])).unwrap_err();
        assert!(invalid.to_string().contains("server.max_body_bytes"), "{invalid}");
        let base = Settings::load(None, env(&[("OPENIM_CALLBACK__SERVER__BASE_PATH", "cb")])).unwrap_err();
        assert!(base.to_string().contains("server.base_path"), "{base}");
    }

    #[test]
    fn the_redis_stats_backend_needs_a_redis_url_and_a_sane_prefix() {
        let error = |pairs: &[(&str, &str)]| Settings::load(None, env(pairs)).unwrap_err().to_string();
        let no_url = error(&[("OPENIM_CALLBACK__STATS__BACKEND", "redis")]);
        assert!(no_url.contains("stats.redis_url"), "{no_url}");
        let backend = error(&[("OPENIM_CALLBACK__STATS__BACKEND", "etcd")]);
        assert!(backend.contains("stats.backend"), "{backend}");
        let prefix = error(&[("OPENIM_CALLBACK__STATS__KEY_PREFIX", "")]);
        assert!(prefix.contains("stats.key_prefix"), "{prefix}");
        let replica = error(&[("OPENIM_CALLBACK__STATS__REPLICA_ID", "two words")]);
        assert!(replica.contains("stats.replica_id"), "{replica}");
        let url = "redis://:pw-9f2@10.0.0.5:6379/0";
        let settings = Settings::load(
            None,
            env(&[("OPENIM_CALLBACK__STATS__BACKEND", "redis"), ("OPENIM_CALLBACK__STATS__REDIS_URL", url)]),
        )
        .unwrap();
        assert_eq!(settings.stats.backend, StatsBackend::Redis);
        assert!(!settings.to_toml().contains("pw-9f2"), "the password is never printed");
        assert!(settings.stats.snapshot_path().is_none(), "Redis holds the fleet's state, not a snapshot");
        assert!(!settings.stats.replica_name().is_empty(), "the host name by default");
        let cluster = "redis://:pw-9f2@10.0.0.1:6379, redis://:pw-9f2@10.0.0.2:6379";
        let settings = Settings::load(
            None,
            env(&[
                ("OPENIM_CALLBACK__STATS__BACKEND", "redis"),
                ("OPENIM_CALLBACK__STATS__REDIS_URL", cluster),
            ]),
        )
        .unwrap();
        assert!(!settings.to_toml().contains("pw-9f2"), "no node's password is printed");
        let half = error(&[
            ("OPENIM_CALLBACK__STATS__BACKEND", "redis"),
            ("OPENIM_CALLBACK__STATS__REDIS_URL", "redis://10.0.0.1:6379,10.0.0.2:6379"),
        ]);
        assert!(half.contains("stats.redis_url"), "{half}");
    }

    #[test]
    fn bad_values_name_the_allowed_ones_and_where_they_were_set() {
        let error = |file: Option<&Path>, pairs: &[(&str, &str)]| {
            Settings::load(file, env(pairs)).unwrap_err().to_string()
        };
        let format = error(None, &[("OPENIM_CALLBACK__TELEMETRY__FORMAT", "logfmt")]);
        assert!(format.contains(r#""logfmt" is not one of auto, json, pretty"#), "{format}");
        assert!(format.contains("in OPENIM_CALLBACK__TELEMETRY__FORMAT"), "{format}");
        assert!(!format.contains("LogFormat"), "no Rust type names: {format}");
        let level = error(None, &[("OPENIM_CALLBACK__TELEMETRY__LEVEL", "loud")]);
        assert!(level.contains("telemetry.level") && level.contains(r#""loud" is not a level"#), "{level}");
        let listen = error(None, &[("OPENIM_CALLBACK__SERVER__LISTEN", "localhost:port")]);
        assert!(listen.contains(r#""localhost:port""#), "the value is echoed: {listen}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("receiver.toml");
        std::fs::write(&file, "[journal]\nsync = \"sometimes\"\n").unwrap();
        let in_file = error(Some(&file), &[]);
        assert!(in_file.contains(&format!("in {}: journal.sync", file.display())), "{in_file}");
        std::fs::write(&file, "[server]\nlistn = \"0.0.0.0:1\"\n").unwrap();
        let typo = error(Some(&file), &[]);
        assert!(typo.contains(&format!("in {}: server.listn", file.display())), "{typo}");
        for level in ["debug", "warn,openim_callback_receiver=debug", "INFO"] {
            assert!(
                Settings::load(None, env(&[("OPENIM_CALLBACK__TELEMETRY__LEVEL", level)])).is_ok(),
                "{level}"
            );
        }
    }

    #[test]
    fn sizes_take_units_as_well_as_numbers() {
        let settings = Settings::load(
            None,
            env(&[
                ("OPENIM_CALLBACK__JOURNAL__SEGMENT_BYTES", "64MiB"),
                ("OPENIM_CALLBACK__JOURNAL__MAX_BYTES", "2 GiB"),
                ("OPENIM_CALLBACK__SERVER__MAX_BODY_BYTES", "1048576"),
                ("OPENIM_CALLBACK__JOURNAL__RESERVE_BYTES", "512KB"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.journal.segment_bytes, 64 << 20);
        assert_eq!(settings.journal.max_bytes, 2 << 30);
        assert_eq!(settings.server.max_body_bytes, 1 << 20);
        assert_eq!(settings.journal.reserve_bytes, 512_000);
        let bad = Settings::load(None, env(&[("OPENIM_CALLBACK__JOURNAL__SEGMENT_BYTES", "64 furlongs")]))
            .unwrap_err();
        assert!(
            bad.to_string().contains("journal.segment_bytes") && bad.to_string().contains("64MiB"),
            "{bad}"
        );
    }

    #[test]
    fn variables_that_set_nothing_are_named() {
        let names = [
            "OPENIM_CALLBACK_SERVER_LISTEN",
            "OPENIM_CALLBACK__SERVER__LISTEN",
            "OPENIM_CALLBACK_CONFIG",
            "OPENIMCALLBACK",
            "OPENIM_CALLBACKS__X",
            "PATH",
        ];
        assert_eq!(
            ignored_variables(names.map(String::from)),
            vec!["OPENIM_CALLBACKS__X".to_owned(), "OPENIM_CALLBACK_SERVER_LISTEN".to_owned()]
        );
    }

    #[test]
    fn listen_takes_host_names() {
        let settings =
            Settings::load(None, env(&[("OPENIM_CALLBACK__SERVER__LISTEN", "localhost:10007")])).unwrap();
        assert!(settings.server.listen.ip().is_loopback());
        assert_eq!(settings.server.listen.port(), 10007);
    }

    #[test]
    fn lists_of_ranges_come_from_the_environment_comma_separated() {
        let settings = Settings::load(
            None,
            env(&[
                ("OPENIM_CALLBACK__AUTH__ALLOW_IPS", "10.0.0.0/8,127.0.0.1"),
                ("OPENIM_CALLBACK__SERVER__TRUSTED_PROXIES", "192.168.1.1"),
            ]),
        )
        .unwrap();
        assert_eq!(settings.auth.allow_ips.len(), 2);
        assert!(settings.auth.allow_ips[1].contains(&"127.0.0.1".parse::<std::net::IpAddr>().unwrap()));
        let bad =
            Settings::load(None, env(&[("OPENIM_CALLBACK__AUTH__ALLOW_IPS", "10.0.0.0/99")])).unwrap_err();
        assert!(bad.to_string().contains("auth.allow_ips"), "{bad}");
    }

    #[test]
    fn the_token_is_never_printed_and_the_placeholder_is_refused() {
        let token = "s3cret-token-0123456789";
        let settings = Settings::load(None, env(&[("OPENIM_CALLBACK__AUTH__TOKEN", token)])).unwrap();
        assert_eq!(settings.auth.token.expose(), token);
        assert!(!settings.to_toml().contains(token));
        assert!(!format!("{settings:?}").contains(token));
        let placeholder =
            Settings::load(None, env(&[("OPENIM_CALLBACK__AUTH__TOKEN", REDACTED)])).unwrap_err();
        assert!(placeholder.to_string().contains("auth.token"));
        let short = Settings::load(None, env(&[("OPENIM_CALLBACK__AUTH__TOKEN", "short")])).unwrap_err();
        assert!(short.to_string().contains("auth.token"));
    }

    #[test]
    fn numbers_and_durations_out_of_range_are_refused_by_key_and_range() {
        let huge = "2305843009213693952"; // 2^61
        for (key, value, named) in [
            ("SERVER__MAX_IN_FLIGHT", huge, "server.max_in_flight: must be from 1 to 1000000"),
            ("SERVER__MAX_CONNECTIONS", huge, "server.max_connections: must be from 1 to 1000000"),
            ("SERVER__WORKER_THREADS", "1025", "server.worker_threads: must be from 0 to 1024"),
            ("SINKS__LOG__BATCH_SIZE", huge, "sinks.log.batch_size: must be from 1 to 100000"),
            (
                "SERVER__RESPONSE_TIMEOUT",
                "10000000000000000000s",
                "server.response_timeout: must be longer than 0s and at most 1h",
            ),
            ("SERVER__SHUTDOWN_TIMEOUT", "10000000000000000000s", "server.shutdown_timeout"),
            ("SERVER__HEADER_READ_TIMEOUT", "300000000000000000000ms", "server.header_read_timeout"),
            ("SERVER__KEEP_ALIVE_TIMEOUT", "0s", "server.keep_alive_timeout"),
            ("SERVER__MAX_BODY_BYTES", "0", "server.max_body_bytes: must be from 1 to 134217728"),
            ("JOURNAL__SEGMENT_BYTES", "1000", "journal.segment_bytes"),
            ("JOURNAL__MAX_BYTES", "1048576", "journal.max_bytes"),
            ("JOURNAL__CURSOR_INTERVAL", "2h", "journal.cursor_interval"),
        ] {
            let error =
                Settings::load(None, env(&[(&format!("OPENIM_CALLBACK__{key}"), value)])).unwrap_err();
            assert!(error.to_string().contains(named), "{key}={value}: {error}");
        }
    }

    #[test]
    fn a_relay_target_comes_from_the_environment_alone() {
        let settings = Settings::load(
            None,
            env(&[
                ("OPENIM_CALLBACK__SINKS__FORWARD__CRM__URL", "http://127.0.0.1:9/hook"),
                ("OPENIM_CALLBACK__SINKS__FORWARD__CRM__CONCURRENCY", "1"),
            ]),
        )
        .unwrap();
        let crm = &settings.sinks.forward["crm"];
        assert_eq!((crm.url.expose(), crm.concurrency, crm.batch_size), ("http://127.0.0.1:9/hook", 1, 100));
        let bad = Settings::load(None, env(&[("OPENIM_CALLBACK__SINKS__FORWARD__CRM__URL", "ftp://x")]))
            .unwrap_err();
        assert!(bad.to_string().contains("sinks.forward.crm.url"), "{bad}");
        let undecodable = Settings::load(
            None,
            env(&[
                ("OPENIM_CALLBACK__SINKS__FORWARD__CRM__URL", "http://127.0.0.1:9/hook"),
                ("OPENIM_CALLBACK__SINKS__FORWARD__CRM__SECRET", "whsec_not*base64!"),
            ]),
        )
        .unwrap_err();
        assert!(undecodable.to_string().contains("sinks.forward.crm.secret"), "{undecodable}");
    }

    #[test]
    fn a_url_is_printed_without_its_password_and_a_token_not_at_all() {
        let url = Secret::new("postgres://app:s3cret@db:5432/archive");
        assert_eq!(url.shown(), format!("postgres://app:{REDACTED}@db:5432/archive"));
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(Secret::new("redis://127.0.0.1:6379").shown(), "redis://127.0.0.1:6379");
        assert_eq!(
            Secret::new("redis://:pw@127.0.0.1:6379/0").shown(),
            format!("redis://:{REDACTED}@127.0.0.1:6379/0")
        );
        assert_eq!(Secret::new("plain-token-0123456789").shown(), REDACTED);
        assert_eq!(
            Secret::new("postgres://app@db/archive?sslmode=disable&password=s3cret&PWD=x").shown(),
            format!("postgres://app@db/archive?sslmode=disable&password={REDACTED}&PWD={REDACTED}")
        );
        assert_eq!(
            shown_url("https://bot:hunter2@hooks.example/in?token=abc").unwrap(),
            format!("https://bot:{REDACTED}@hooks.example/in?token={REDACTED}")
        );
        let placeholder = format!("postgres://app:{REDACTED}@db/archive");
        let refused =
            Settings::load(None, env(&[("OPENIM_CALLBACK__SINKS__SQL__URL", &placeholder)])).unwrap_err();
        assert!(refused.to_string().contains("sinks.sql.url"), "{refused}");
    }

    #[test]
    fn printed_settings_load_back_unchanged() {
        let settings = Settings::defaults();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("printed.toml");
        std::fs::write(&path, settings.to_toml()).unwrap();
        assert_eq!(Settings::load(Some(&path), env(&[])).unwrap(), settings);
    }
}
