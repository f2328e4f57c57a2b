//! `sockit serve`: run the server until SIGINT or SIGTERM.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use sockit::auth::{SecretSource, check_server_secret, resolve_secret};
use sockit::server::Settings;
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
    // Every flag is a setting, declared once beside its config file key.
    #[command(flatten)]
    settings: Settings,
    /// Once every listener is bound, write their addresses to FILE as one JSON object
    /// (`listen`, `services`, `metrics`), atomically; removed at shutdown. For scripts and tests
    /// that listen on port 0
    #[arg(long, value_name = "FILE")]
    ready_file: Option<PathBuf>,
}

enum LogFormat {
    Text,
    Json,
}

/// Transfer and read-ahead buffers of a few hundred KiB come and go by the thousand. glibc
/// maps the first such buffer on its own, but once one is freed it raises its mmap threshold
/// and serves the next ones from its per-thread heap arenas, which keep what they free: a
/// server that once ran many transfers at once stays that large (issue 12's soak: 111 MiB
/// after a minute, against 44 MiB with the threshold held at 64 KiB). Holding it keeps every
/// large buffer mapped on its own and returned to the system when freed.
fn keep_large_buffers_out_of_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt sets one parameter of glibc's allocator and touches no memory of ours;
    // it runs before the runtime starts any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
    }
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let flags = args.settings;
    let file = match &flags.config {
        Some(path) => Settings::load(path).map_err(anyhow::Error::msg)?,
        None => Settings::default(),
    };
    keep_large_buffers_out_of_the_heap();
    init_logging(log_format(&flags, &file)?);
    raise_fd_limit();

    let secret_file = flags.secret_file.as_deref().or(file.secret_file.as_deref());
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
    flags.apply(&mut config);

    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        let server = Server::bind(config).await?;
        if let Some(path) = &args.ready_file {
            write_ready_file(path, &server)?;
        }
        server.run(shutdown).await;
        if let Some(path) = &args.ready_file {
            // A stale file would announce addresses nobody listens on any more.
            let _ = std::fs::remove_file(path);
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The flag's format, else the file's. clap has checked the flag's, so a bad one is the file's.
fn log_format(flags: &Settings, file: &Settings) -> anyhow::Result<LogFormat> {
    match flags.log_format.as_deref().or(file.log_format.as_deref()) {
        None | Some("text") => Ok(LogFormat::Text),
        Some("json") => Ok(LogFormat::Json),
        Some(other) => anyhow::bail!("log_format `{other}` in the config file: use text or json"),
    }
}

/// Announces where `server` listens, for scripts and tests that asked for port 0: the log says
/// it too, but a log is text for people, and its lines come one bind at a time. The file is
/// written whole to a temporary name and renamed, so whoever sees it sees every address.
fn write_ready_file(path: &Path, server: &Server) -> anyhow::Result<()> {
    let services: Vec<_> = server
        .service_addrs()
        .iter()
        .map(|bound| {
            serde_json::json!({
                "service": bound.service,
                "transport": bound.transport.to_string(),
                "addr": bound.addr.to_string(),
            })
        })
        .collect();
    let listen: Vec<_> = server.local_addrs().iter().map(ToString::to_string).collect();
    let ready = serde_json::json!({
        "listen": listen,
        "services": services,
        "metrics": server.metrics_addr().map(|addr| addr.to_string()),
    });
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    std::fs::write(&temporary, format!("{ready}\n"))
        .and_then(|()| std::fs::rename(&temporary, path))
        .with_context(|| format!("cannot write the ready file {}", path.display()))
}

/// Logs at `info` and above, or as `RUST_LOG` says. Only a `RUST_LOG` filter is an
/// `EnvFilter`: it may select by span, so it looks every span up as a connection's task is
/// polled, a lock shared by every connection that the plain level filter does without.
fn init_logging(format: LogFormat) {
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let by_env =
        std::env::var_os(EnvFilter::DEFAULT_ENV).and_then(|_| EnvFilter::try_from_default_env().ok());
    let by_level = by_env.is_none().then_some(LevelFilter::INFO);
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(by_env).with(by_level);
    match format {
        LogFormat::Text => registry.with(fmt).init(),
        LogFormat::Json => registry.with(fmt.json()).init(),
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
