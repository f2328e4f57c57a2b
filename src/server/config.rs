//! Server settings, their defaults, and the optional TOML file that can set any of them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::listener::ListenAddr;
use crate::auth::Secret;
use crate::metrics::MetricsListen;
use crate::proto::ports::{DEFAULT_PORT, DEFAULT_TIME_PORT};
use crate::services::ServicesConfig;
use crate::services::classic::{ClassicConfig, ClassicService};
use crate::wire::DEFAULT_MAX_HEADER_LEN;

/// Everything a [`super::Server`] needs. [`ServerConfig::new`] gives the documented defaults.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: Vec<ListenAddr>,
    pub secret: Secret,
    /// HMAC-authenticated plaintext sessions instead of encrypted ones.
    pub plaintext: bool,
    /// Connections served at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Connections one source address (IPv6: /64) may have open at once, authenticated or
    /// not; more from it are refused at once, so one source cannot take every connection.
    pub max_connections_per_source: usize,
    /// Connections still in their handshake at once; the rest wait (within their deadline).
    pub max_handshakes: usize,
    /// Connections one source address (IPv6: /64) may have before their first request;
    /// more from it are refused at once, so one source cannot take every handshake slot.
    pub max_handshakes_per_source: usize,
    /// A connection must finish its handshake and send its first request within this.
    pub handshake_timeout: Duration,
    /// An authenticated connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// How long requests in flight may run after SIGINT/SIGTERM.
    pub shutdown_timeout: Duration,
    pub max_header_len: usize,
    /// Back-off of a source after its first failed authentication (its attempts are refused
    /// meanwhile); doubles per recent failure, up to 5 s. At 100 ms, at most 10 guesses a second.
    pub auth_backoff: Duration,
    pub services: ServicesConfig,
    /// The course's UDP time service (a strftime format in, the time out).
    pub time_listen: Option<SocketAddr>,
    /// RFC 867 daytime, over TCP and UDP on this address.
    pub daytime_listen: Option<SocketAddr>,
    /// RFC 868 time, over TCP and UDP on this address.
    pub rfc868_listen: Option<SocketAddr>,
    /// SNTP (RFC 4330) server, over UDP.
    pub sntp_listen: Option<SocketAddr>,
    /// The course's own services on their course ports (`--classic`).
    pub classic: ClassicConfig,
    /// Prometheus metrics over HTTP at `/metrics` on this address.
    pub metrics_listen: Option<SocketAddr>,
}

impl ServerConfig {
    pub fn new(secret: Secret) -> ServerConfig {
        ServerConfig {
            listen: vec![ListenAddr::Tcp(([127, 0, 0, 1], DEFAULT_PORT).into())],
            secret,
            plaintext: false,
            max_connections: 16_384,
            max_connections_per_source: 1024,
            max_handshakes: 1024,
            max_handshakes_per_source: 256,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            shutdown_timeout: Duration::from_secs(10),
            max_header_len: DEFAULT_MAX_HEADER_LEN,
            auth_backoff: Duration::from_millis(100),
            services: ServicesConfig::default(),
            time_listen: Some(([127, 0, 0, 1], DEFAULT_TIME_PORT).into()),
            daytime_listen: None,
            rfc868_listen: None,
            sntp_listen: None,
            classic: ClassicConfig::default(),
            metrics_listen: None,
        }
    }
}

/// Where an optional service listens: `IP:PORT`, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceListen(pub Option<SocketAddr>);

impl FromStr for ServiceListen {
    type Err = String;

    fn from_str(text: &str) -> Result<ServiceListen, String> {
        if text == "off" {
            return Ok(ServiceListen(None));
        }
        text.parse()
            .map(|addr| ServiceListen(Some(addr)))
            .map_err(|_| format!("`{text}` is not IP:PORT (127.0.0.1:9000, [::1]:9000) nor `off`"))
    }
}

impl<'de> Deserialize<'de> for ServiceListen {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ServiceListen, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The TOML config file (`sockit serve --config FILE`): every key is optional, unknown keys
/// are errors (so a typo is never silently ignored), and command-line flags win over it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<Vec<ListenAddr>>,
    pub secret_file: Option<PathBuf>,
    pub plaintext: Option<bool>,
    pub max_connections: Option<usize>,
    pub max_connections_per_source: Option<usize>,
    pub max_handshakes: Option<usize>,
    pub max_handshakes_per_source: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    pub handshake_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub idle_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "duration")]
    pub shutdown_timeout: Option<Duration>,
    pub max_header_len: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    pub auth_backoff: Option<Duration>,
    pub log_format: Option<String>,
    pub allow_exec: Option<bool>,
    pub exec_max_per_connection: Option<usize>,
    pub exec_max_total: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    pub exec_grace: Option<Duration>,
    pub root: Option<PathBuf>,
    pub quota: Option<u64>,
    pub uploads_max_per_connection: Option<usize>,
    pub uploads_max_per_source: Option<usize>,
    pub uploads_max_total: Option<usize>,
    #[serde(default, deserialize_with = "duration")]
    pub partial_max_age: Option<Duration>,
    pub chat_history_bytes: Option<u64>,
    pub time_listen: Option<ServiceListen>,
    pub daytime_listen: Option<ServiceListen>,
    pub rfc868_listen: Option<ServiceListen>,
    pub sntp_listen: Option<ServiceListen>,
    pub classic: Option<bool>,
    /// `[classic_listen]`: `echo = "127.0.0.1:18081"`, `exec = "off"`, ...
    pub classic_listen: Option<BTreeMap<ClassicService, ServiceListen>>,
    pub classic_exec_any_source: Option<bool>,
    pub metrics: Option<MetricsListen>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    /// Overrides `config` with every key this file sets.
    pub fn apply(&self, config: &mut ServerConfig) {
        if let Some(listen) = &self.listen {
            config.listen.clone_from(listen);
        }
        set(&mut config.plaintext, self.plaintext);
        set(&mut config.max_connections, self.max_connections);
        set(
            &mut config.max_connections_per_source,
            self.max_connections_per_source,
        );
        set(&mut config.max_handshakes, self.max_handshakes);
        set(
            &mut config.max_handshakes_per_source,
            self.max_handshakes_per_source,
        );
        set(&mut config.handshake_timeout, self.handshake_timeout);
        set(&mut config.idle_timeout, self.idle_timeout);
        set(&mut config.shutdown_timeout, self.shutdown_timeout);
        set(&mut config.max_header_len, self.max_header_len);
        set(&mut config.auth_backoff, self.auth_backoff);
        let exec = &mut config.services.exec;
        set(&mut exec.enabled, self.allow_exec);
        set(&mut exec.max_per_connection, self.exec_max_per_connection);
        set(&mut exec.max_total, self.exec_max_total);
        set(&mut exec.grace, self.exec_grace);
        set(&mut config.services.chat.history_bytes, self.chat_history_bytes);
        let files = &mut config.services.files;
        if let Some(root) = &self.root {
            files.root.clone_from(root);
        }
        if self.quota.is_some() {
            files.quota = self.quota;
        }
        set(
            &mut files.max_uploads_per_connection,
            self.uploads_max_per_connection,
        );
        set(&mut files.max_uploads_per_source, self.uploads_max_per_source);
        set(&mut files.max_uploads_total, self.uploads_max_total);
        set(&mut files.partial_max_age, self.partial_max_age);
        let listens = [
            (&mut config.time_listen, self.time_listen),
            (&mut config.daytime_listen, self.daytime_listen),
            (&mut config.rfc868_listen, self.rfc868_listen),
            (&mut config.sntp_listen, self.sntp_listen),
            (
                &mut config.metrics_listen,
                self.metrics.map(|m| ServiceListen(m.0)),
            ),
        ];
        for (slot, value) in listens {
            set(slot, value.map(|listen| listen.0));
        }
        let classic = &mut config.classic;
        set(&mut classic.enabled, self.classic);
        set(&mut classic.exec_any_source, self.classic_exec_any_source);
        for (service, listen) in self.classic_listen.iter().flatten() {
            classic.listen.insert(*service, listen.0);
        }
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *slot = value;
    }
}

/// Parses `500ms`, `10s`, `5m`, `2h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (try 500ms, 10s, 5m)"))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown unit `{other}` in `{text}` (use ms, s, m or h)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"))
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(f64),
        Text(String),
    }
    match Raw::deserialize(deserializer)? {
        Raw::Seconds(seconds) => Duration::try_from_secs_f64(seconds)
            .map(Some)
            .map_err(serde::de::Error::custom),
        Raw::Text(text) => parse_duration(&text).map(Some).map_err(serde::de::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn file_keys_override_and_typos_are_refused() {
        let file: FileConfig = toml::from_str(
            "listen = [\"[::1]:0\", \"/tmp/s.sock\"]\nidle_timeout = \"2m\"\nhandshake_timeout = 3",
        )
        .unwrap();
        let mut config = ServerConfig::new(Secret::generate());
        file.apply(&mut config);
        assert_eq!(config.listen.len(), 2);
        assert_eq!(config.idle_timeout, Duration::from_secs(120));
        assert_eq!(config.handshake_timeout, Duration::from_secs(3));
        assert!(toml::from_str::<FileConfig>("listn = []").is_err());
    }

    #[test]
    fn time_services_are_set_or_turned_off() {
        let file: FileConfig = toml::from_str("time_listen = \"off\"\nsntp_listen = \"[::1]:1123\"").unwrap();
        let mut config = ServerConfig::new(Secret::generate());
        assert_eq!(config.time_listen, Some("127.0.0.1:9000".parse().unwrap()));
        file.apply(&mut config);
        assert_eq!(config.time_listen, None);
        assert_eq!(config.sntp_listen, Some("[::1]:1123".parse().unwrap()));
        assert_eq!(config.daytime_listen, None);
        assert!(toml::from_str::<FileConfig>("time_listen = \"9000\"").is_err());
    }

    #[test]
    fn metrics_are_off_unless_the_file_says_where() {
        let file: FileConfig = toml::from_str("metrics = \"0.0.0.0:9100\"").unwrap();
        let mut config = ServerConfig::new(Secret::generate());
        assert_eq!(config.metrics_listen, None);
        file.apply(&mut config);
        assert_eq!(config.metrics_listen, Some("0.0.0.0:9100".parse().unwrap()));
    }

    #[test]
    fn classic_services_are_moved_or_turned_off_one_by_one() {
        let file: FileConfig =
            toml::from_str("classic = true\n[classic_listen]\necho = \"127.0.0.1:0\"\nudp_exec = \"off\"")
                .unwrap();
        let mut config = ServerConfig::new(Secret::generate());
        file.apply(&mut config);
        let classic = &config.classic;
        assert_eq!(
            classic.addr(ClassicService::Echo),
            Some("127.0.0.1:0".parse().unwrap())
        );
        assert_eq!(classic.addr(ClassicService::UdpExec), None);
        assert_eq!(
            classic.addr(ClassicService::Greeting),
            Some("127.0.0.1:9998".parse().unwrap())
        );
        let typo = toml::from_str::<FileConfig>("[classic_listen]\nehco = \"127.0.0.1:0\"");
        assert!(
            typo.unwrap_err()
                .to_string()
                .contains("no classic service `ehco`")
        );
    }
}
