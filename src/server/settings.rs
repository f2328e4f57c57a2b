//! Server settings: each declared once, as a field of [`Settings`], and resolved into the
//! [`ServerConfig`] a [`super::Server`] runs with.
//!
//! A field of [`Settings`] is the whole declaration of a setting: its name is the config file
//! key (and, with dashes, the `sockit serve` flag), its type parses both, and its doc comment
//! is the `--help` and manual page text, documented default included. `sockit serve` flattens
//! [`Settings`] into its arguments (clap's half is derived only with the `cli` feature), a
//! config file deserializes into another one, and [`Settings::apply`] lays each on the
//! defaults of [`ServerConfig::new`] in turn: default, then file, then flags, the last one
//! to set a value winning.
//!
//! One struct that serde and clap both read, rather than a macro generating a file struct and
//! a flag struct: the declaration stays plain Rust a reader can follow, and the two parsers
//! cannot drift apart, since there is only one list. The defaults stay in the types that own
//! them ([`ServerConfig::new`], the services' `Default`s), which the library needs without
//! any CLI; the tests check every `[default: ...]` the help shows, and contrib/sockit.toml,
//! against them. Adding a setting: its field here, its field and default in [`ServerConfig`]
//! (or a service's config), its line in [`Settings::apply`], and its key in
//! contrib/sockit.toml (a test fails until it is there).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::ServerConfig;
use super::listener::ListenAddr;
use crate::metrics::MetricsListen;
use crate::services::ServicesConfig;
use crate::services::classic::{ClassicListen, ClassicService};

/// Every setting of `sockit serve`, one field each, in `--help` order. A `Settings` is a layer
/// that sets some of them: the flags are one layer, a config file (`sockit serve --config
/// FILE`) another, every key optional and unknown keys refused (so a typo is never silently
/// ignored).
///
/// A switch (`plaintext`, `allow_exec`, `classic`, `classic_exec_any_source`) is off by default
/// and a layer can only turn it on: a flag has no off form, and a file's `false` is the default.
//
// The field docs are the help text, byte for byte: one paragraph each, as a second one would
// switch `--help` to clap's long layout for every flag. This doc is rustdoc's only: the
// command flattening these settings describes itself.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[cfg_attr(feature = "cli", command(about = None, long_about = None))]
#[allow(
    rustdoc::broken_intra_doc_links,
    reason = "the fields' docs are `sockit serve --help`, written for the terminal: `[IPv6]:PORT`"
)]
pub struct Settings {
    /// Listen on IP:PORT, [IPv6]:PORT or a Unix socket path; repeatable; port 0 picks a free
    /// port [default: 127.0.0.1:8080]
    #[cfg_attr(feature = "cli", arg(long, short, value_name = "ADDR"))]
    pub listen: Option<Vec<ListenAddr>>,
    // Resolved by the CLI, which reads the secret before there is a server.
    /// File holding the shared secret [default: $SOCKIT_SECRET, then ~/.config/sockit/secret,
    /// created if missing]
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub secret_file: Option<PathBuf>,
    /// HMAC-authenticated plaintext sessions, for learning with a packet capture; refuses
    /// encrypted clients
    #[serde(default)]
    #[cfg_attr(feature = "cli", arg(long))]
    pub plaintext: bool,
    // A flag only: the file layer comes from here, and names no further file.
    /// TOML file setting any of these options (flags win)
    #[serde(skip)]
    #[cfg_attr(feature = "cli", arg(long, value_name = "FILE"))]
    pub config: Option<PathBuf>,
    // For the CLI, which sets up logging before anything else. A string, not an enum, so that
    // a file's bad value is reported as the file's (clap checks the flag's).
    /// Log format on stderr (level from RUST_LOG, default info)
    #[cfg_attr(feature = "cli", arg(long, value_parser = ["text", "json"]))]
    pub log_format: Option<String>,
    /// Connections served at once [default: 16384]
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub max_connections: Option<usize>,
    /// Connections one address (IPv6: one /64) may have open at once; more from it are
    /// refused at once [default: 1024]
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub max_connections_per_source: Option<usize>,
    /// Connections in their handshake at once [default: 1024]
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub max_handshakes: Option<usize>,
    /// Connections one address (IPv6: one /64) may have in their handshake at once; more
    /// from it are refused at once [default: 256]
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub max_handshakes_per_source: Option<usize>,
    /// Close connections that have not authenticated and sent a first request within this
    /// time [default: 10s]
    #[serde(default, deserialize_with = "duration")]
    #[cfg_attr(feature = "cli", arg(long, value_name = "DURATION", value_parser = parse_duration))]
    pub handshake_timeout: Option<Duration>,
    /// Close authenticated connections idle this long [default: 5m]
    #[serde(default, deserialize_with = "duration")]
    #[cfg_attr(feature = "cli", arg(long, value_name = "DURATION", value_parser = parse_duration))]
    pub idle_timeout: Option<Duration>,
    /// On SIGINT/SIGTERM, let requests in flight run this long [default: 10s]
    #[serde(default, deserialize_with = "duration")]
    #[cfg_attr(feature = "cli", arg(long, value_name = "DURATION", value_parser = parse_duration))]
    pub shutdown_timeout: Option<Duration>,
    /// After a failed authentication, refuse that address's attempts at once for this long,
    /// doubling per recent failure up to 5s; 100ms holds guessing to 10 a second [default: 100ms]
    #[serde(default, deserialize_with = "duration")]
    #[cfg_attr(feature = "cli", arg(long, value_name = "DURATION", value_parser = parse_duration))]
    pub auth_backoff: Option<Duration>,
    /// Largest frame header accepted, in bytes [default: 65536]
    #[cfg_attr(feature = "cli", arg(long, value_name = "BYTES"))]
    pub max_header_len: Option<usize>,
    /// Let authenticated clients run commands (`sockit exec`, `sockit shell`) as this user
    #[serde(default)]
    #[cfg_attr(feature = "cli", arg(long))]
    pub allow_exec: bool,
    /// Commands running at once on one connection [default: 8]
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub exec_max_per_connection: Option<usize>,
    /// Commands running at once on the whole server [default: 64]
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub exec_max_total: Option<usize>,
    // A config key only: it has no flag.
    /// Between SIGTERM and SIGKILL of a stopped command's process group [default: 2s]
    #[serde(default, deserialize_with = "duration")]
    #[cfg_attr(feature = "cli", arg(skip))]
    pub exec_grace: Option<Duration>,
    /// The directory file transfers may touch, and nothing outside it
    /// [default: ~/.local/share/sockit/files]
    #[cfg_attr(feature = "cli", arg(long, value_name = "DIR"))]
    pub root: Option<PathBuf>,
    /// Most bytes the file root may hold; larger uploads are refused before they start
    #[cfg_attr(feature = "cli", arg(long, value_name = "BYTES"))]
    pub quota: Option<u64>,
    /// Uploads one connection may have in progress at once (each holds a file open) [default: 16]
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub uploads_max_per_connection: Option<usize>,
    /// Uploads in progress at once from one address (IPv6: one /64) [default: 64]
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub uploads_max_per_source: Option<usize>,
    /// Uploads in progress at once on the whole server [default: 1024]
    #[cfg_attr(feature = "cli", arg(long, value_name = "N"))]
    pub uploads_max_total: Option<usize>,
    /// Remove the partial file of an upload abandoned this long ago [default: 24h]
    #[serde(default, deserialize_with = "duration")]
    #[cfg_attr(feature = "cli", arg(long, value_name = "DURATION", value_parser = parse_duration))]
    pub partial_max_age: Option<Duration>,
    /// Bytes of chat history kept for all rooms together; the oldest messages go first
    /// [default: 16777216]
    #[cfg_attr(feature = "cli", arg(long, value_name = "BYTES"))]
    pub chat_history_bytes: Option<u64>,
    /// The course's UDP time service (a strftime format in, the local time out) on IP:PORT,
    /// or `off` [default: 127.0.0.1:9000]
    #[cfg_attr(feature = "cli", arg(long, value_name = "ADDR|off"))]
    pub time_listen: Option<ServiceListen>,
    /// RFC 867 daytime over TCP and UDP on IP:PORT [default: off]
    #[cfg_attr(feature = "cli", arg(long, value_name = "ADDR"))]
    pub daytime_listen: Option<ServiceListen>,
    /// RFC 868 time over TCP and UDP on IP:PORT, as `rdate` asks for it [default: off]
    #[cfg_attr(feature = "cli", arg(long, value_name = "ADDR"))]
    pub rfc868_listen: Option<ServiceListen>,
    /// SNTP (RFC 4330) server over UDP on IP:PORT, answering from the system clock [default: off]
    #[cfg_attr(feature = "cli", arg(long, value_name = "ADDR"))]
    pub sntp_listen: Option<ServiceListen>,
    /// Also serve the course's own programs on their course ports (loopback, no encryption):
    /// upper echo tcp 8081, exec tcp 8082, FTP tcp 8083, HMAC echo tcp 9999, greeting tcp 9998,
    /// upper echo udp 9001, exec udp 9003; the exec ones only with --allow-exec
    #[serde(default)]
    #[cfg_attr(feature = "cli", arg(long))]
    pub classic: bool,
    // In the file, a `[classic_listen]` table: `echo = "127.0.0.1:18081"`, `exec = "off"`, ...
    /// Move a classic service (echo, exec, ftp, hmac_echo, greeting, udp_echo, udp_exec) or turn
    /// it off: NAME=IP:PORT or NAME=off; repeatable
    #[serde(default, deserialize_with = "classic_listen_table")]
    #[cfg_attr(feature = "cli", arg(long, value_name = "NAME=ADDR|off"))]
    pub classic_listen: Vec<ClassicListen>,
    /// Let the classic UDP exec (9003) run commands sent from other machines
    #[serde(default)]
    #[cfg_attr(feature = "cli", arg(long))]
    pub classic_exec_any_source: bool,
    /// Prometheus metrics at http://ADDR/metrics; ADDR is IP:PORT, or a PORT on 127.0.0.1, or
    /// `off`. Unauthenticated: keep it on loopback or a private network [default: off]
    #[cfg_attr(feature = "cli", arg(long, value_name = "ADDR"))]
    pub metrics: Option<MetricsListen>,
}

impl Settings {
    /// Reads a config file.
    pub fn load(path: &Path) -> Result<Settings, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }

    /// Overrides `config` with every setting this layer sets. `secret_file`, `config` and
    /// `log_format` are left to the caller: they are needed before there is a server to
    /// configure.
    pub fn apply(&self, config: &mut ServerConfig) {
        if let Some(listen) = &self.listen {
            config.listen.clone_from(listen);
        }
        config.plaintext |= self.plaintext;
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
        set(&mut config.auth_backoff, self.auth_backoff);
        set(&mut config.max_header_len, self.max_header_len);
        self.apply_services(&mut config.services);
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
        classic.enabled |= self.classic;
        classic.exec_any_source |= self.classic_exec_any_source;
        for listen in &self.classic_listen {
            classic.listen.insert(listen.service, listen.addr);
        }
    }

    fn apply_services(&self, services: &mut ServicesConfig) {
        let exec = &mut services.exec;
        exec.enabled |= self.allow_exec;
        set(&mut exec.max_per_connection, self.exec_max_per_connection);
        set(&mut exec.max_total, self.exec_max_total);
        set(&mut exec.grace, self.exec_grace);
        let files = &mut services.files;
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
        set(&mut services.chat.history_bytes, self.chat_history_bytes);
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *slot = value;
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

/// The file's `[classic_listen]` table, as the list `--classic-listen` makes.
fn classic_listen_table<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<ClassicListen>, D::Error> {
    let table = BTreeMap::<ClassicService, ServiceListen>::deserialize(deserializer)?;
    Ok(table
        .into_iter()
        .map(|(service, listen)| ClassicListen {
            service,
            addr: listen.0,
        })
        .collect())
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
    use crate::auth::Secret;

    #[test]
    fn metrics_are_off_unless_the_file_says_where() {
        let file: Settings = toml::from_str("metrics = \"0.0.0.0:9100\"").unwrap();
        let mut config = ServerConfig::new(Secret::generate());
        assert_eq!(config.metrics_listen, None);
        file.apply(&mut config);
        assert_eq!(config.metrics_listen, Some("0.0.0.0:9100".parse().unwrap()));
    }

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
        let file: Settings = toml::from_str(
            "listen = [\"[::1]:0\", \"/tmp/s.sock\"]\nidle_timeout = \"2m\"\nhandshake_timeout = 3",
        )
        .unwrap();
        let mut config = ServerConfig::new(Secret::generate());
        file.apply(&mut config);
        assert_eq!(config.listen.len(), 2);
        assert_eq!(config.idle_timeout, Duration::from_secs(120));
        assert_eq!(config.handshake_timeout, Duration::from_secs(3));
        assert!(toml::from_str::<Settings>("listn = []").is_err());
    }

    #[test]
    fn time_services_are_set_or_turned_off() {
        let file: Settings = toml::from_str("time_listen = \"off\"\nsntp_listen = \"[::1]:1123\"").unwrap();
        let mut config = ServerConfig::new(Secret::generate());
        assert_eq!(config.time_listen, Some("127.0.0.1:9000".parse().unwrap()));
        file.apply(&mut config);
        assert_eq!(config.time_listen, None);
        assert_eq!(config.sntp_listen, Some("[::1]:1123".parse().unwrap()));
        assert_eq!(config.daytime_listen, None);
        assert!(toml::from_str::<Settings>("time_listen = \"9000\"").is_err());
    }

    #[test]
    fn classic_services_are_moved_or_turned_off_one_by_one() {
        let file: Settings =
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
        let typo = toml::from_str::<Settings>("[classic_listen]\nehco = \"127.0.0.1:0\"");
        assert!(
            typo.unwrap_err()
                .to_string()
                .contains("no classic service `ehco`")
        );
    }

    /// Each `[default: X]` the help shows, given as the flag, changes nothing: the help tells
    /// the truth about [`ServerConfig::new`] and the services' own defaults.
    #[cfg(feature = "cli")]
    #[test]
    fn the_documented_defaults_are_the_defaults() {
        use clap::{Args, FromArgMatches};

        let command = Settings::augment_args(clap::Command::new("serve"));
        let secret = Secret::generate();
        let defaults = format!("{:?}", ServerConfig::new(secret.clone()));
        let mut checked = Vec::new();
        for arg in command.get_arguments() {
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            let Some((_, default)) = help.split_once("[default: ") else {
                continue;
            };
            let default = default.trim_end_matches(']');
            // The secret file and the file root default to paths in the user's home.
            if default.starts_with(['~', '$']) {
                continue;
            }
            let flag = format!("--{}", arg.get_long().unwrap());
            let matches = command
                .clone()
                .try_get_matches_from(["serve", &flag, default])
                .unwrap_or_else(|e| panic!("{flag} {default}: {e}"));
            let mut config = ServerConfig::new(secret.clone());
            Settings::from_arg_matches(&matches).unwrap().apply(&mut config);
            assert_eq!(format!("{config:?}"), defaults, "{flag} {default}");
            checked.push(flag);
        }
        assert!(checked.len() > 20, "{checked:?}");
    }

    #[test]
    fn the_file_cannot_name_another_file() {
        assert!(toml::from_str::<Settings>("config = \"other.toml\"").is_err());
    }
}
