//! Prometheus metrics: what the server counts, and (`http`) the endpoint that serves them.
//!
//! One process-wide set of metrics, always counted (an atomic add each, too cheap to switch
//! off) and served only when `sockit serve --metrics ADDR` asks. Any module counts with one
//! line, `metrics().request("daytime", "get")`, with no handle to thread through; a new metric
//! is one field in `Metrics` and one `register` line in `Metrics::new`.
//!
//! docs/operations.md lists every metric with its labels and example queries.

pub(crate) mod http;

use std::fmt::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use serde::{Deserialize, Deserializer};

use crate::wire::ErrorCode;

/// The metrics of this process.
pub(crate) fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// Every metric the server keeps. Counters and gauges are cheap handles onto shared atomics:
/// cloning one (as connections do for the byte counters) counts into the same value.
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) connections_accepted: Counter,
    pub(crate) connections_open: Gauge,
    pub(crate) connections_limit: Gauge,
    pub(crate) connections_limit_reached: Counter,
    handshakes: Family<Outcome, Counter>,
    requests: Family<ServiceCommand, Counter>,
    errors: Family<Code, Counter>,
    /// Bytes read from native-protocol sockets (ciphertext in encrypted sessions).
    pub(crate) socket_bytes_received: Counter,
    pub(crate) socket_bytes_sent: Counter,
    socket_bytes: Family<Direction, Counter>,
    pub(crate) exec_running: Gauge,
    exec_commands: Family<Outcome, Counter>,
    transfer_bytes: Family<TransferLabel, Counter>,
    transfers: Family<TransferLabel, Counter>,
    pub(crate) chat_online: Gauge,
    chat_messages: Family<ChatKind, Counter>,
    datagrams: Family<ServiceOutcome, Counter>,
    stream_connections: Family<ServiceLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceCommand {
    service: &'static str,
    command: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Code {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Direction {
    direction: &'static str,
}

type TransferLabel = Direction;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChatKind {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceOutcome {
    service: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: &'static str,
}

/// How a native-protocol handshake ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Handshake {
    Ok,
    /// The client does not hold the secret.
    AuthFailed,
    /// Refused at once: its address is under back-off after failed authentications.
    Throttled,
    /// Refused at once: its address already has its most connections in the handshake.
    Busy,
    /// Not completed within `handshake_timeout`.
    Timeout,
    /// Refused for another reason: wrong version or session mode, malformed messages.
    Refused,
    /// The client hung up before finishing.
    Closed,
}

/// How a command run by the exec service ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExecOutcome {
    /// Exited with status 0.
    Success,
    /// Exited with another status.
    Failure,
    /// Killed by a signal (sent by the client, or by anyone else).
    Signaled,
    /// Stopped by its `timeout_ms`.
    TimedOut,
    /// Its client went away; it was stopped.
    Abandoned,
}

/// Which way file data moved, from the server's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transfer {
    /// Client to server (`put`).
    Upload,
    /// Server to client (`get`).
    Download,
}

/// What became of a datagram sent to an unframed UDP service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Datagram {
    Answered,
    /// Its source had spent its reply budget.
    RateLimited,
    /// Not answered: from a server port (below 1024, or 0, likely forged), or a request the
    /// service does not answer.
    Ignored,
}

impl Metrics {
    fn new() -> Metrics {
        let socket_bytes = Family::<Direction, Counter>::default();
        let socket_counter = |direction| socket_bytes.get_or_create(&Direction { direction }).clone();
        let mut metrics = Metrics {
            registry: Registry::with_prefix("sockit"),
            connections_accepted: Counter::default(),
            connections_open: Gauge::default(),
            connections_limit: Gauge::default(),
            connections_limit_reached: Counter::default(),
            handshakes: Family::default(),
            requests: Family::default(),
            errors: Family::default(),
            socket_bytes_received: socket_counter("in"),
            socket_bytes_sent: socket_counter("out"),
            socket_bytes: socket_bytes.clone(),
            exec_running: Gauge::default(),
            exec_commands: Family::default(),
            transfer_bytes: Family::default(),
            transfers: Family::default(),
            chat_online: Gauge::default(),
            chat_messages: Family::default(),
            datagrams: Family::default(),
            stream_connections: Family::default(),
        };
        metrics.register_all();
        metrics
    }

    /// Names every metric (after the `sockit_` prefix; counters get `_total` appended).
    fn register_all(&mut self) {
        let r = &mut self.registry;
        r.register(
            "connections_accepted",
            "Native-protocol connections accepted",
            self.connections_accepted.clone(),
        );
        r.register(
            "connections_open",
            "Native-protocol connections open now",
            self.connections_open.clone(),
        );
        r.register(
            "connections_limit",
            "Connections served at once at most (the max_connections setting)",
            self.connections_limit.clone(),
        );
        r.register(
            "connections_limit_reached",
            "Times every connection slot was taken, so new clients waited in the listen backlog",
            self.connections_limit_reached.clone(),
        );
        r.register(
            "handshakes",
            "Handshakes by outcome: ok, auth_failed, throttled, busy, timeout, refused, closed",
            self.handshakes.clone(),
        );
        r.register(
            "requests",
            "Requests dispatched, by service and command",
            self.requests.clone(),
        );
        r.register(
            "errors_sent",
            "Error frames sent to clients, by code",
            self.errors.clone(),
        );
        r.register_with_unit(
            "socket",
            "Bytes on native-protocol sockets (handshakes and encryption included), by direction: in, out",
            Unit::Bytes,
            self.socket_bytes.clone(),
        );
        r.register(
            "exec_processes_running",
            "Commands running now",
            self.exec_running.clone(),
        );
        r.register(
            "exec_commands",
            "Commands finished, by outcome: success, failure, signaled, timed_out, abandoned",
            self.exec_commands.clone(),
        );
        r.register_with_unit(
            "transfer",
            "File data moved, by direction: upload, download",
            Unit::Bytes,
            self.transfer_bytes.clone(),
        );
        r.register(
            "transfers_completed",
            "File transfers completed and verified, by direction: upload, download",
            self.transfers.clone(),
        );
        r.register(
            "chat_members_online",
            "Chat members logged in now",
            self.chat_online.clone(),
        );
        r.register(
            "chat_messages",
            "Chat messages posted, by kind: room, direct",
            self.chat_messages.clone(),
        );
        r.register(
            "datagrams",
            "Datagrams to unframed UDP services, by service and outcome: answered, rate_limited, ignored",
            self.datagrams.clone(),
        );
        r.register(
            "stream_connections",
            "Connections accepted by unframed TCP services, by service",
            self.stream_connections.clone(),
        );
    }

    /// The metrics in the Prometheus text format, version 0.0.4.
    pub(crate) fn render(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry).is_err() {
            let _ = writeln!(text, "# encoding failed");
        }
        text
    }

    pub(crate) fn handshake(&self, outcome: Handshake) {
        let outcome = match outcome {
            Handshake::Ok => "ok",
            Handshake::AuthFailed => "auth_failed",
            Handshake::Throttled => "throttled",
            Handshake::Busy => "busy",
            Handshake::Timeout => "timeout",
            Handshake::Refused => "refused",
            Handshake::Closed => "closed",
        };
        self.handshakes.get_or_create(&Outcome { outcome }).inc();
    }

    /// Counts a request. Labels come from the registry's own names, never from what a client
    /// sent, so a client cannot grow the label set.
    pub(crate) fn request(&self, service: &'static str, command: &'static str) {
        self.request_counter(service, command).inc();
    }

    /// The counter [`Metrics::request`] adds to, for a caller that counts one command often
    /// (the service registry keeps one per command, so a request costs one atomic add).
    pub(crate) fn request_counter(&self, service: &'static str, command: &'static str) -> Counter {
        self.requests
            .get_or_create(&ServiceCommand { service, command })
            .clone()
    }

    /// Counts an error frame sent. Its label is a code compiled into the server, or `other`:
    /// never text a peer chose, so no peer can grow the label set.
    pub(crate) fn error_sent(&self, code: &ErrorCode) {
        self.errors
            .get_or_create(&Code {
                code: error_label(code),
            })
            .inc();
    }

    pub(crate) fn exec_finished(&self, outcome: ExecOutcome) {
        let outcome = match outcome {
            ExecOutcome::Success => "success",
            ExecOutcome::Failure => "failure",
            ExecOutcome::Signaled => "signaled",
            ExecOutcome::TimedOut => "timed_out",
            ExecOutcome::Abandoned => "abandoned",
        };
        self.exec_commands.get_or_create(&Outcome { outcome }).inc();
    }

    /// The counter of file data moving `direction`: fetch it once per transfer, add per chunk.
    pub(crate) fn transfer_bytes(&self, direction: Transfer) -> Counter {
        self.transfer_bytes
            .get_or_create(&transfer_label(direction))
            .clone()
    }

    pub(crate) fn transfer_completed(&self, direction: Transfer) {
        self.transfers.get_or_create(&transfer_label(direction)).inc();
    }

    /// Counts a chat message: `room` or `direct`.
    pub(crate) fn chat_message(&self, kind: &'static str) {
        self.chat_messages.get_or_create(&ChatKind { kind }).inc();
    }

    pub(crate) fn datagram(&self, service: &'static str, outcome: Datagram) {
        let outcome = match outcome {
            Datagram::Answered => "answered",
            Datagram::RateLimited => "rate_limited",
            Datagram::Ignored => "ignored",
        };
        self.datagrams
            .get_or_create(&ServiceOutcome { service, outcome })
            .inc();
    }

    pub(crate) fn stream_connection(&self, service: &'static str) {
        self.stream_connections
            .get_or_create(&ServiceLabel { service })
            .inc();
    }
}

/// The `code` label of an error: its name if the server chose it, `other` if a peer did.
fn error_label(code: &ErrorCode) -> &'static str {
    code.static_name().unwrap_or("other")
}

fn transfer_label(direction: Transfer) -> Direction {
    Direction {
        direction: match direction {
            Transfer::Upload => "upload",
            Transfer::Download => "download",
        },
    }
}

/// Holds a gauge one higher while it lives: for things open or running, so that every way out
/// (return, error, a dropped task) counts them down again.
pub(crate) struct Tracked(Gauge);

impl Tracked {
    pub(crate) fn new(gauge: &Gauge) -> Tracked {
        gauge.inc();
        Tracked(gauge.clone())
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Where `--metrics` serves: `PORT` (on 127.0.0.1), `IP:PORT`, or `off`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsListen(pub Option<SocketAddr>);

impl FromStr for MetricsListen {
    type Err = String;

    fn from_str(text: &str) -> Result<MetricsListen, String> {
        if text == "off" {
            return Ok(MetricsListen(None));
        }
        if let Ok(port) = text.parse::<u16>() {
            return Ok(MetricsListen(Some((Ipv4Addr::LOCALHOST, port).into())));
        }
        text.parse()
            .map(|addr| MetricsListen(Some(addr)))
            .map_err(|_| format!("`{text}` is not PORT, IP:PORT (127.0.0.1:9100, [::1]:9100) nor `off`"))
    }
}

impl<'de> Deserialize<'de> for MetricsListen {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<MetricsListen, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_port_means_loopback_and_off_turns_metrics_off() {
        let parse = |text: &str| text.parse::<MetricsListen>().map(|listen| listen.0);
        assert_eq!(parse("9100"), Ok(Some("127.0.0.1:9100".parse().unwrap())));
        assert_eq!(parse("[::1]:9100"), Ok(Some("[::1]:9100".parse().unwrap())));
        assert_eq!(parse("off"), Ok(None));
        assert!(parse("localhost:9100").is_err());
        assert!(parse("70000").is_err());
    }

    #[test]
    fn error_labels_are_a_fixed_set_whatever_a_peer_sends() {
        assert_eq!(error_label(&ErrorCode::AuthFailed), "auth_failed");
        assert_eq!(error_label(&ErrorCode::parse("busy")), "busy");
        assert_eq!(error_label(&ErrorCode::NameTaken), "name_taken");
        assert_eq!(
            error_label(&ErrorCode::Other("an_extension".into())),
            "an_extension"
        );
        let unique = format!("peer-made-{}", "x".repeat(4096));
        assert_eq!(error_label(&ErrorCode::parse(&unique)), "other");
        metrics().error_sent(&ErrorCode::parse(&unique));
        let text = metrics().render();
        assert!(!text.contains("peer-made-"), "{text}");
        assert!(
            text.contains("sockit_errors_sent_total{code=\"other\"} "),
            "{text}"
        );
    }

    #[test]
    fn counters_render_with_prefix_labels_and_total() {
        metrics().request("echo", "echo");
        let text = metrics().render();
        assert!(text.contains("# TYPE sockit_requests_total counter"), "{text}");
        assert!(
            text.contains("sockit_requests_total{service=\"echo\",command=\"echo\"} "),
            "{text}"
        );
        assert!(
            text.contains("sockit_socket_bytes_total{direction=\"in\"} "),
            "{text}"
        );
        assert!(text.contains("# TYPE sockit_connections_open gauge"), "{text}");
    }
}
