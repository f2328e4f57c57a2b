//! `sockit serve`: run the server until SIGINT or SIGTERM.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use sockit::auth::{SecretSource, check_server_secret, resolve_secret};
use sockit::metrics::MetricsListen;
use sockit::server::{FileConfig, ListenAddr, ServiceListen, parse_duration};
use sockit::services::classic::ClassicListen;
use sockit::{Server, ServerConfig};
use tracing::info;
use tracing_subscriber::EnvFilter;

use super::shared::raise_fd_limit;

#[derive(Args)]
#[command(
    about = "Run the sockit server (echo, exec, files and time; encrypted, authenticated sessions)",
    after_help = "Examples:\n  sockit serve                                   # 127.0.0.1:8080, secret created if missing;\n                                                 # UDP time service on 127.0.0.1:9000\n  sockit serve --listen 0.0.0.0:8080 --listen [::]:8080 --listen /run/sockit.sock\n  sockit serve --listen 127.0.0.1:0 --plaintext  # free port, HMAC auth, no encryption\n  sockit serve --time-listen off                 # no UDP time service\n  sockit serve --rfc868-listen 127.0.0.1:3737 --sntp-listen 127.0.0.1:1123\n                                                 # for `rdate -o 3737` and SNTP clients\n  sockit serve --classic --allow-exec             # also the course's own servers, its clients unchanged\n  sockit serve --classic --classic-listen ftp=127.0.0.1:2121 --classic-listen greeting=off\n  sockit serve --metrics 9100                    # Prometheus metrics at http://127.0.0.1:9100/metrics\n  RUST_LOG=debug sockit serve --log-format json\n\nThe unframed services are logged as `time service on udp ADDR` (`classic-echo service on tcp\nADDR`, ...); their UDP replies are rate-limited to 20 per second (bursts of 40) per source address."
)]
pub struct ServeArgs {
    /// Listen on IP:PORT, [IPv6]:PORT or a Unix socket path; repeatable; port 0 picks a free
    /// port [default: 127.0.0.1:8080]
    #[arg(long, short, value_name = "ADDR")]
    listen: Vec<ListenAddr>,
    /// File holding the shared secret [default: $SOCKIT_SECRET, then ~/.config/sockit/secret,
    /// created if missing]
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// HMAC-authenticated plaintext sessions, for learning with a packet capture; refuses
    /// encrypted clients
    #[arg(long)]
    plaintext: bool,
    /// TOML file setting any of these options (flags win)
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format on stderr (level from RUST_LOG, default info)
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
    /// Connections served at once [default: 16384]
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Connections one address (IPv6: one /64) may have open at once; more from it are
    /// refused at once [default: 1024]
    #[arg(long, value_name = "N")]
    max_connections_per_source: Option<usize>,
    /// Connections in their handshake at once [default: 1024]
    #[arg(long, value_name = "N")]
    max_handshakes: Option<usize>,
    /// Connections one address (IPv6: one /64) may have in their handshake at once; more
    /// from it are refused at once [default: 256]
    #[arg(long, value_name = "N")]
    max_handshakes_per_source: Option<usize>,
    /// Close connections that have not authenticated and sent a first request within this
    /// time [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    handshake_timeout: Option<Duration>,
    /// Close authenticated connections idle this long [default: 5m]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    idle_timeout: Option<Duration>,
    /// On SIGINT/SIGTERM, let requests in flight run this long [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    shutdown_timeout: Option<Duration>,
    /// After a failed authentication, refuse that address's attempts at once for this long,
    /// doubling per recent failure up to 5s; 100ms holds guessing to 10 a second [default: 100ms]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    auth_backoff: Option<Duration>,
    /// Largest frame header accepted, in bytes [default: 65536]
    #[arg(long, value_name = "BYTES")]
    max_header_len: Option<usize>,
    /// Let authenticated clients run commands (`sockit exec`, `sockit shell`) as this user
    #[arg(long)]
    allow_exec: bool,
    /// Commands running at once on one connection [default: 8]
    #[arg(long, value_name = "N")]
    exec_max_per_connection: Option<usize>,
    /// Commands running at once on the whole server [default: 64]
    #[arg(long, value_name = "N")]
    exec_max_total: Option<usize>,
    /// The directory file transfers may touch, and nothing outside it
    /// [default: ~/.local/share/sockit/files]
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Most bytes the file root may hold; larger uploads are refused before they start
    #[arg(long, value_name = "BYTES")]
    quota: Option<u64>,
    /// Uploads one connection may have in progress at once (each holds a file open) [default: 16]
    #[arg(long, value_name = "N")]
    uploads_max_per_connection: Option<usize>,
    /// Uploads in progress at once from one address (IPv6: one /64) [default: 64]
    #[arg(long, value_name = "N")]
    uploads_max_per_source: Option<usize>,
    /// Uploads in progress at once on the whole server [default: 1024]
    #[arg(long, value_name = "N")]
    uploads_max_total: Option<usize>,
    /// Remove the partial file of an upload abandoned this long ago [default: 24h]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    partial_max_age: Option<Duration>,
    /// Bytes of chat history kept for all rooms together; the oldest messages go first
    /// [default: 16777216]
    #[arg(long, value_name = "BYTES")]
    chat_history_bytes: Option<u64>,
    /// The course's UDP time service (a strftime format in, the local time out) on IP:PORT,
    /// or `off` [default: 127.0.0.1:9000]
    #[arg(long, value_name = "ADDR|off")]
    time_listen: Option<ServiceListen>,
    /// RFC 867 daytime over TCP and UDP on IP:PORT [default: off]
    #[arg(long, value_name = "ADDR")]
    daytime_listen: Option<ServiceListen>,
    /// RFC 868 time over TCP and UDP on IP:PORT, as `rdate` asks for it [default: off]
    #[arg(long, value_name = "ADDR")]
    rfc868_listen: Option<ServiceListen>,
    /// SNTP (RFC 4330) server over UDP on IP:PORT, answering from the system clock [default: off]
    #[arg(long, value_name = "ADDR")]
    sntp_listen: Option<ServiceListen>,
    /// Also serve the course's own programs on their course ports (loopback, no encryption):
    /// upper echo tcp 8081, exec tcp 8082, FTP tcp 8083, HMAC echo tcp 9999, greeting tcp 9998,
    /// upper echo udp 9001, exec udp 9003; the exec ones only with --allow-exec
    #[arg(long)]
    classic: bool,
    /// Move a classic service (echo, exec, ftp, hmac_echo, greeting, udp_echo, udp_exec) or turn
    /// it off: NAME=IP:PORT or NAME=off; repeatable
    #[arg(long, value_name = "NAME=ADDR|off")]
    classic_listen: Vec<ClassicListen>,
    /// Let the classic UDP exec (9003) run commands sent from other machines
    #[arg(long)]
    classic_exec_any_source: bool,
    /// Prometheus metrics at http://ADDR/metrics; ADDR is IP:PORT, or a PORT on 127.0.0.1, or
    /// `off`. Unauthenticated: keep it on loopback or a private network [default: off]
    #[arg(long, value_name = "ADDR")]
    metrics: Option<MetricsListen>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let file = match &args.config {
        Some(path) => FileConfig::load(path).map_err(anyhow::Error::msg)?,
        None => FileConfig::default(),
    };
    let log_format = match (args.log_format, file.log_format.as_deref()) {
        (Some(format), _) => format,
        (None, None | Some("text")) => LogFormat::Text,
        (None, Some("json")) => LogFormat::Json,
        (None, Some(other)) => anyhow::bail!("log_format `{other}` in the config file: use text or json"),
    };
    init_logging(log_format);
    raise_fd_limit();

    let secret_file = args.secret_file.as_deref().or(file.secret_file.as_deref());
    let (secret, source) = resolve_secret(secret_file, true)?;
    check_server_secret(&secret, &source)?;
    match &source {
        SecretSource::Created(path) => info!(
            "created a new secret at {}; clients on this machine use it with no flags",
            path.display()
        ),
        source => info!("secret from {source}"),
    }
    let mut config = ServerConfig::new(secret);
    file.apply(&mut config);
    args.apply(&mut config);

    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        let server = Server::bind(config).await?;
        server.run(shutdown).await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

impl ServeArgs {
    fn apply(&self, config: &mut ServerConfig) {
        if !self.listen.is_empty() {
            config.listen.clone_from(&self.listen);
        }
        config.plaintext |= self.plaintext;
        let flags = FileConfig {
            max_connections: self.max_connections,
            max_connections_per_source: self.max_connections_per_source,
            max_handshakes: self.max_handshakes,
            max_handshakes_per_source: self.max_handshakes_per_source,
            handshake_timeout: self.handshake_timeout,
            idle_timeout: self.idle_timeout,
            shutdown_timeout: self.shutdown_timeout,
            max_header_len: self.max_header_len,
            auth_backoff: self.auth_backoff,
            allow_exec: self.allow_exec.then_some(true),
            exec_max_per_connection: self.exec_max_per_connection,
            exec_max_total: self.exec_max_total,
            root: self.root.clone(),
            quota: self.quota,
            uploads_max_per_connection: self.uploads_max_per_connection,
            uploads_max_per_source: self.uploads_max_per_source,
            uploads_max_total: self.uploads_max_total,
            partial_max_age: self.partial_max_age,
            chat_history_bytes: self.chat_history_bytes,
            time_listen: self.time_listen,
            daytime_listen: self.daytime_listen,
            rfc868_listen: self.rfc868_listen,
            sntp_listen: self.sntp_listen,
            classic: self.classic.then_some(true),
            classic_listen: Some(
                self.classic_listen
                    .iter()
                    .map(|listen| (listen.service, ServiceListen(listen.addr)))
                    .collect(),
            ),
            classic_exec_any_source: self.classic_exec_any_source.then_some(true),
            metrics: self.metrics,
            ..FileConfig::default()
        };
        flags.apply(config);
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Completes on SIGINT or SIGTERM. The handlers are installed at once, before any address is
/// logged: a signal sent as soon as the server reports it is listening must still shut it down
/// gracefully rather than kill it.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
