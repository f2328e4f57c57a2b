//! `sockit exec`: run a command on one server, or on many at once.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Args;
use serde_json::json;
use sockit::client::{CommandInput, ExecEvent, RemoteCommand};
use sockit::proto::exec::{ExecRequest, ExitReport, Stream};
use sockit::server::parse_duration;
use sockit::{Client, ClientConfig};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::hint::describe;
use super::shared::{ClientArgs, EXIT_FAILURE, client_runtime, print_line};

#[derive(Args)]
#[command(
    about = "Run a command on a server (the server needs --allow-exec)",
    after_help = "Examples:\n  sockit exec web1 'ls -l; pwd'             # stdout and stderr apart, remote exit status\n  echo hi | sockit exec web1 cat            # stdin is forwarded\n  sockit exec --timeout 5s web1 make test\n  sockit exec -H web1 -H web2 -H web3 uptime  # in parallel, lines prefixed by host\n  sockit exec --hosts-file hosts.txt --json df -h\n\nExit status: the remote command's (128+N if killed by signal N), 255 for sockit's own failures;\nwith several hosts, the largest of them."
)]
pub struct ExecArgs {
    /// Run on this host (repeatable); then every positional word is the command
    #[arg(short = 'H', long = "host", value_name = "HOST[:PORT]")]
    hosts: Vec<String>,
    /// Run on every host listed in FILE (one per line, # comments)
    #[arg(long, value_name = "FILE")]
    hosts_file: Option<PathBuf>,
    /// With several hosts, how many run at once
    #[arg(long, default_value_t = 32)]
    parallel: usize,
    /// One JSON record per line (host, stream, data, exit code), for scripts
    #[arg(long)]
    json: bool,
    /// Kill the command (its whole process group) after this long
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// Working directory on the server
    #[arg(long, value_name = "DIR")]
    cwd: Option<String>,
    /// Extra environment variable for the command (repeatable)
    #[arg(long, value_name = "K=V", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// Do not forward stdin (the command reads end-of-file)
    #[arg(short = 'n', long)]
    no_stdin: bool,
    /// HOST[:PORT] then the command; its words are joined with spaces, as ssh does
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "HOST] [COMMAND"
    )]
    words: Vec<String>,
    #[command(flatten)]
    client: ClientArgs,
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("`{text}` is not K=V")),
    }
}

pub fn run(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let config = args.client.config()?;
    let mut hosts = args.hosts.clone();
    if let Some(file) = &args.hosts_file {
        hosts.extend(read_hosts_file(file)?);
    }
    let mut words = args.words.clone();
    let fan_out = !hosts.is_empty();
    if !fan_out {
        hosts.push(words.remove(0));
    }
    anyhow::ensure!(
        !words.is_empty(),
        "no command given (sockit exec HOST COMMAND...)"
    );
    let request = ExecRequest {
        command: Some(words.join(" ")),
        cwd: args.cwd.clone(),
        env: args.env.iter().cloned().collect::<BTreeMap<_, _>>(),
        timeout_ms: args.timeout.map(|t| t.as_millis() as u64),
        stdin: !fan_out && !args.no_stdin,
        ..ExecRequest::default()
    };
    let runtime = client_runtime()?;
    let status = if fan_out || args.json {
        runtime.block_on(run_many(hosts, request, config, args.parallel, args.json))
    } else {
        runtime.block_on(run_one(&hosts[0], &request, &config))?
    };
    // A blocking read of our stdin may still be pending: do not wait for it.
    runtime.shutdown_background();
    Ok(ExitCode::from(status))
}

fn read_hosts_file(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(text
        .lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect())
}

/// One host, interactive: output streams to our stdout and stderr as it comes, our stdin
/// goes to the command, Ctrl-C goes to it as SIGINT (then SIGTERM, then SIGKILL).
async fn run_one(target: &str, request: &ExecRequest, config: &ClientConfig) -> anyhow::Result<u8> {
    let mut client = Client::connect(target, config).await?;
    let stdin = request.stdin.then(tokio::io::stdin);
    let report = run_attached(&mut client, request, stdin).await?;
    if report.timed_out {
        eprintln!("sockit: the command timed out and was stopped");
    }
    Ok(report.status())
}

/// Runs a command attached to this terminal: its output to ours as it comes, `stdin` (if any)
/// and Ctrl-C to it. Shared by `sockit exec` and `sockit shell`.
pub async fn run_attached(
    client: &mut Client,
    request: &ExecRequest,
    stdin: Option<impl AsyncRead + Unpin>,
) -> Result<ExitReport, sockit::ClientError> {
    let RemoteCommand {
        mut output,
        mut input,
    } = client.exec(request).await?;
    let done = CancellationToken::new();
    let show = async {
        let terminal = Terminal::start();
        let result = loop {
            match output.next_event().await {
                Ok(ExecEvent::Stdout(bytes)) => terminal.write(Stream::Stdout, bytes).await,
                Ok(ExecEvent::Stderr(bytes)) => terminal.write(Stream::Stderr, bytes).await,
                Ok(ExecEvent::Exit(report)) => break Ok(report),
                Err(error) => break Err(error),
            }
        };
        // Every byte is out before the exit status is told or the program ends.
        terminal.finish().await;
        done.cancel();
        result
    };
    let (report, fed) = tokio::join!(show, feed(&mut input, stdin, &done));
    let report = report?;
    fed?;
    Ok(report)
}

/// Our stdout and stderr, written by a thread of their own: the connection's thread decrypts
/// the next pieces of output while this one writes the last, each piece handed over as it
/// came (no copy) and written straight to the descriptor (no line scan, no buffer). Output
/// keeps its order across the two streams. A reader that stops reading stops the thread,
/// the queue, the connection and so the command (its pipe fills): memory stays at
/// [`Terminal::QUEUED`] pieces.
struct Terminal {
    pieces: mpsc::Sender<(Stream, Bytes)>,
    writer: tokio::task::JoinHandle<()>,
}

impl Terminal {
    /// Pieces waiting for the writer; each is at most one read of the connection.
    const QUEUED: usize = 8;

    fn start() -> Terminal {
        let (pieces, mut queue) = mpsc::channel::<(Stream, Bytes)>(Terminal::QUEUED);
        let writer = tokio::task::spawn_blocking(move || {
            // Anything printed before, through the standard library's buffer, goes first.
            let _ = std::io::stdout().flush();
            // A reader that went away (`| head`) is not an error of ours: that stream is
            // dropped, the other still written.
            let (mut stdout_open, mut stderr_open) = (true, true);
            while let Some((stream, bytes)) = queue.blocking_recv() {
                match stream {
                    Stream::Stdout if stdout_open => {
                        stdout_open = write_all(std::io::stdout(), &bytes).is_ok();
                    }
                    Stream::Stderr if stderr_open => {
                        stderr_open = write_all(std::io::stderr(), &bytes).is_ok();
                    }
                    _ => {}
                }
            }
        });
        Terminal { pieces, writer }
    }

    async fn write(&self, stream: Stream, bytes: Bytes) {
        let _ = self.pieces.send((stream, bytes)).await;
    }

    async fn finish(self) {
        drop(self.pieces);
        let _ = self.writer.await;
    }
}

/// Writes all of `bytes` to `out` with plain `write` calls, waiting out a descriptor that
/// someone left non-blocking.
fn write_all(out: impl AsFd, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        match rustix::io::write(&out, bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::AGAIN) => {
                let mut ready = [rustix::event::PollFd::new(&out, rustix::event::PollFlags::OUT)];
                rustix::event::poll(&mut ready, None)?;
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

/// Forwards stdin and Ctrl-C to the command until `done`.
async fn feed(
    input: &mut CommandInput<'_>,
    mut stdin: Option<impl AsyncRead + Unpin>,
    done: &CancellationToken,
) -> Result<(), sockit::ClientError> {
    const ESCALATION: [&str; 3] = ["INT", "TERM", "KILL"];
    let mut interrupts = signal(SignalKind::interrupt()).map_err(sockit::wire::FrameError::from)?;
    let mut presses = 0;
    if stdin.is_none() {
        input.close_stdin().await?;
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            () = done.cancelled() => return Ok(()),
            Some(()) = interrupts.recv() => {
                input.signal(ESCALATION[presses.min(2)]).await?;
                presses += 1;
            }
            read = read_some(&mut stdin, &mut buf) => match read {
                0 => {
                    stdin = None;
                    input.close_stdin().await?;
                }
                n => input.write_stdin(&buf[..n]).await?,
            },
        }
    }
}

/// Reads from stdin if it is still open; otherwise waits forever.
async fn read_some(stdin: &mut Option<impl AsyncRead + Unpin>, buf: &mut [u8]) -> usize {
    match stdin {
        Some(stdin) => stdin.read(buf).await.unwrap_or(0),
        None => std::future::pending().await,
    }
}

/// What one host's task reports to the printer.
enum Report {
    Line {
        host: Arc<str>,
        stderr: bool,
        data: Vec<u8>,
    },
    Done {
        host: Arc<str>,
        outcome: Result<ExitReport, String>,
    },
}

/// Many hosts in parallel: each output line is prefixed with its host, a down host is reported
/// without stopping the others, and a summary follows. The status is the largest of all.
async fn run_many(
    hosts: Vec<String>,
    request: ExecRequest,
    config: ClientConfig,
    parallel: usize,
    json: bool,
) -> u8 {
    let (reports, mut printer) = mpsc::unbounded_channel();
    let slots = Arc::new(Semaphore::new(parallel.max(1)));
    for host in &hosts {
        let (host, request, config) = (Arc::<str>::from(host.as_str()), request.clone(), config.clone());
        let (reports, slots) = (reports.clone(), slots.clone());
        tokio::spawn(async move {
            let _slot = slots.acquire().await;
            let outcome = run_quiet(&host, &request, &config, &reports)
                .await
                .map_err(|e| describe(&e));
            let _ = reports.send(Report::Done { host, outcome });
        });
    }
    drop(reports);
    let mut finished = Vec::new();
    while let Some(report) = printer.recv().await {
        match report {
            Report::Line { host, stderr, data } => print_host_line(&host, stderr, &data, json),
            Report::Done { host, outcome } => {
                if json {
                    print_line(format_args!("{}", done_record(&host, &outcome)));
                }
                finished.push((host, outcome));
            }
        }
    }
    if !json {
        print_summary(&finished);
    }
    finished
        .iter()
        .map(|(_, outcome)| outcome.as_ref().map_or(EXIT_FAILURE, ExitReport::status))
        .max()
        .unwrap_or(0)
}

/// Runs on one host with no stdin, sending complete output lines to the printer.
async fn run_quiet(
    host: &Arc<str>,
    request: &ExecRequest,
    config: &ClientConfig,
    reports: &mpsc::UnboundedSender<Report>,
) -> Result<ExitReport, sockit::ClientError> {
    let mut client = Client::connect(host, config).await?;
    let RemoteCommand {
        mut output,
        mut input,
    } = client.exec(request).await?;
    input.close_stdin().await?;
    let mut partial: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let send_line = |stderr: bool, data: Vec<u8>| {
        let _ = reports.send(Report::Line {
            host: host.clone(),
            stderr,
            data,
        });
    };
    loop {
        let (stderr, bytes) = match output.next_event().await? {
            ExecEvent::Stdout(bytes) => (false, bytes),
            ExecEvent::Stderr(bytes) => (true, bytes),
            ExecEvent::Exit(report) => {
                for (stream, rest) in partial.iter_mut().enumerate() {
                    if !rest.is_empty() {
                        send_line(stream == 1, std::mem::take(rest));
                    }
                }
                return Ok(report);
            }
        };
        let buffer = &mut partial[usize::from(stderr)];
        buffer.extend_from_slice(&bytes);
        while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            send_line(stderr, line[..end].to_vec());
        }
    }
}

fn print_host_line(host: &str, stderr: bool, data: &[u8], json: bool) {
    if json {
        let mut record = json!({
            "host": host,
            "stream": if stderr { "stderr" } else { "stdout" },
            "data": String::from_utf8_lossy(data),
        });
        if std::str::from_utf8(data).is_err() {
            record["data_hex"] = hex::encode(data).into();
        }
        print_line(format_args!("{record}"));
        return;
    }
    let text = escape_controls(&String::from_utf8_lossy(data));
    if stderr {
        eprintln!("{host}: {text}");
    } else {
        print_line(format_args!("{host}: {text}"));
    }
}

/// Remote output printed with a host prefix must not move the cursor, recolour the screen or
/// turn text around; tabs are kept.
fn escape_controls(text: &str) -> String {
    sockit::text::escape_except(text, &['\t'])
}

fn done_record(host: &str, outcome: &Result<ExitReport, String>) -> serde_json::Value {
    match outcome {
        Ok(report) => json!({
            "host": host,
            "exit": report.status(),
            "code": report.code,
            "signal": report.signal_name,
            "duration_ms": report.duration_ms,
            "timed_out": report.timed_out,
        }),
        Err(error) => json!({"host": host, "exit": EXIT_FAILURE, "error": error}),
    }
}

fn print_summary(finished: &[(Arc<str>, Result<ExitReport, String>)]) {
    let failed = finished
        .iter()
        .filter(|(_, outcome)| outcome.as_ref().map_or(true, |r| r.status() != 0))
        .count();
    eprintln!(
        "-- {} hosts: {} ok, {failed} failed",
        finished.len(),
        finished.len() - failed
    );
    let width = finished.iter().map(|(host, _)| host.len()).max().unwrap_or(0);
    for (host, outcome) in finished {
        match outcome {
            Ok(report) if report.timed_out => {
                eprintln!("   {host:width$}  timed out ({:.0} ms)", report.duration_ms)
            }
            Ok(report) => eprintln!(
                "   {host:width$}  exit {} ({:.1} ms)",
                report.status(),
                report.duration_ms
            ),
            Err(error) => eprintln!("   {host:width$}  failed: {}", escape_controls(error)),
        }
    }
}
