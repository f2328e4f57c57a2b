//! `sockit bench`: the load generator behind BENCHMARKS.md.
//!
//! It runs every simulated client on one thread, so on a small machine it leaves the other
//! cores to the server under test, and it reports its own CPU use so a reader can tell when
//! the generator, not the server, was the limit.
//!
//! The fault and soak suite ([`soak`], `sockit bench soak`, about 1.8k lines) stays in the
//! product binary rather than a bench binary or crate of its own (as quinn keeps `perf/`
//! apart), because what it tests is the shipped binary itself: it runs this very executable as
//! `sockit serve` and as the `sockit put` processes it kills mid-transfer, so a soak run on a
//! deployed host needs nothing but the installed `sockit`, and the binary that passed is the
//! binary that ships (`--sockit PATH` soaks another build). It adds no dependency the other
//! benchmarks do not already need (`hdrhistogram`, behind the `cli` feature with the rest of
//! the command line), and BENCHMARKS.md and tests/soak.rs run it as `sockit bench soak`.

mod measure;
mod soak;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use serde_json::json;
use sockit::Client;
use sockit::client::Target;
use sockit::proto::exec::ExecRequest;
use sockit::server::parse_duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::shared::{ClientArgs, client_runtime, raise_fd_limit};
use measure::{CpuClock, micros, new_histogram, process_cpu_of, resident_kib};

#[derive(Args)]
#[command(
    about = "Measure a server: echo round trips, connection setup, idle connections",
    after_help = "Examples:\n  sockit bench echo 127.0.0.1:8080 --connections 16 --duration 5s\n  sockit bench echo 127.0.0.1:9090 --raw        # any unframed upper-echo server\n  sockit bench connect 127.0.0.1:8080 --count 1000\n  sockit bench idle 127.0.0.1:8080 --connections 10000 --server-pid $PID\n  sockit bench exec 127.0.0.1:8080 --count 500      # needs serve --allow-exec\n  sockit bench soak --duration 10m --clients 200   # starts its own server"
)]
pub struct BenchArgs {
    #[command(subcommand)]
    kind: BenchKind,
}

#[derive(Subcommand)]
enum BenchKind {
    /// Request/response round trips per second and latency percentiles
    Echo(EchoBench),
    /// Latency of connect + handshake + one echo + close
    Connect(ConnectBench),
    /// Hold many authenticated idle connections; report the server's memory
    Idle(IdleBench),
    /// Latency of running a command, over one session or a fresh session each time
    Exec(ExecBench),
    /// The fault and soak suite: a mixed workload through a fault proxy, then abuse; a verdict
    Soak(soak::SoakArgs),
}

#[derive(Args)]
struct ExecBench {
    /// Server as HOST[:PORT] (not with --local)
    #[arg(required_unless_present = "local")]
    target: Option<String>,
    /// Commands to run, one after another
    #[arg(long, default_value_t = 500)]
    count: usize,
    /// The command line
    #[arg(long, default_value = "true")]
    command: String,
    /// Open a fresh session (connect + handshake) for every command
    #[arg(long)]
    fresh: bool,
    /// No server: run `sh -c COMMAND` here the way the server does (spawn, pipes, wait), the
    /// floor a remote command cannot beat
    #[arg(long)]
    local: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
struct EchoBench {
    /// Server as HOST[:PORT]
    target: String,
    /// Concurrent connections, each with one request in flight
    #[arg(long, short, default_value_t = 16)]
    connections: usize,
    /// How long to measure (after the warm-up)
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Message size in bytes
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// Speak raw bytes (send, read the same number back), for unframed echo servers
    #[arg(long)]
    raw: bool,
    /// Server process id, to report the server's CPU time per request (same machine only)
    #[arg(long)]
    server_pid: Option<u32>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
struct ConnectBench {
    target: String,
    /// Sessions to open, one after another
    #[arg(long, default_value_t = 500)]
    count: usize,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
struct IdleBench {
    target: String,
    #[arg(long, short, default_value_t = 10_000)]
    connections: usize,
    /// How long to hold them once all are open
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    hold: Duration,
    /// Handshakes in flight at once while opening
    #[arg(long, default_value_t = 64)]
    parallel: usize,
    /// Server process id, to read its resident memory (same machine only)
    #[arg(long)]
    server_pid: Option<u32>,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if let BenchKind::Soak(soak) = args.kind {
        return soak::run(soak);
    }
    raise_fd_limit();
    let runtime = client_runtime()?;
    let report = match args.kind {
        BenchKind::Echo(bench) => runtime.block_on(echo(bench))?,
        BenchKind::Connect(bench) => runtime.block_on(connect(bench))?,
        BenchKind::Idle(bench) => runtime.block_on(idle(bench))?,
        BenchKind::Exec(bench) => runtime.block_on(exec(bench))?,
        BenchKind::Soak(_) => unreachable!("run above"),
    };
    println!("{report}");
    Ok(ExitCode::SUCCESS)
}

async fn echo(bench: EchoBench) -> anyhow::Result<serde_json::Value> {
    let config = bench.client.config().ok();
    let message = vec![b'a'; bench.size];
    let mut sessions = Vec::with_capacity(bench.connections);
    for _ in 0..bench.connections {
        sessions.push(if bench.raw {
            Session::Raw(raw_connect(&bench.target).await?)
        } else {
            let config = config
                .as_ref()
                .context("a secret is needed for sockit sessions")?;
            Session::Sockit(Box::new(Client::connect(&bench.target, config).await?))
        });
    }
    // The clock starts once every connection is up: a slow accept loop is not measured as load.
    let measure_from = Instant::now() + bench.warmup;
    let stop_at = measure_from + bench.duration;
    let mut clients = JoinSet::new();
    for mut session in sessions {
        let message = message.clone();
        clients.spawn(async move {
            let latencies = session.run(&message, measure_from, stop_at).await;
            // Keep the connection open until the server's CPU time has been read.
            latencies.map(|latencies| (latencies, session))
        });
    }
    tokio::time::sleep_until(measure_from.into()).await;
    let cpu_before = CpuClock::now();
    let server_cpu_before = bench.server_pid.map(process_cpu_of).transpose()?;
    let mut latencies = new_histogram();
    let mut sessions = Vec::new();
    while let Some(result) = clients.join_next().await {
        let (client_latencies, session) = result??;
        latencies.add(client_latencies)?;
        sessions.push(session);
    }
    let cpu = cpu_before.percent_since();
    let seconds = bench.duration.as_secs_f64();
    let server_cpu = match (bench.server_pid, server_cpu_before) {
        (Some(pid), Some(before)) => Some(process_cpu_of(pid)?.saturating_sub(before).as_secs_f64()),
        _ => None,
    };
    drop(sessions);
    Ok(json!({
        "bench": "echo",
        "target": bench.target,
        "session": session_kind(bench.raw, &bench.client),
        "connections": bench.connections,
        "size": bench.size,
        "requests": latencies.len(),
        "rps": (latencies.len() as f64 / seconds).round(),
        "p50_us": micros(latencies.value_at_quantile(0.50)),
        "p99_us": micros(latencies.value_at_quantile(0.99)),
        "client_cpu_percent": cpu.round(),
        "server_cpu_percent": server_cpu.map(|cpu| (100.0 * cpu / seconds).round()),
        "server_cpu_us_per_request": server_cpu.map(|cpu| (1e7 * cpu / latencies.len() as f64).round() / 10.0),
    }))
}

enum Session {
    Sockit(Box<Client>),
    Raw(TcpStream),
}

impl Session {
    /// Round trips back to back until `stop_at`, recording those that start after `measure_from`.
    async fn run(
        &mut self,
        message: &[u8],
        measure_from: Instant,
        stop_at: Instant,
    ) -> anyhow::Result<Histogram<u64>> {
        let mut latencies = new_histogram();
        let mut reply = vec![0; message.len()];
        loop {
            let begin = Instant::now();
            if begin >= stop_at {
                return Ok(latencies);
            }
            match self {
                Session::Sockit(client) => {
                    let answer = client.echo(message).await?;
                    anyhow::ensure!(answer.len() == message.len(), "short echo reply");
                }
                Session::Raw(stream) => {
                    stream.write_all(message).await?;
                    stream.read_exact(&mut reply).await?;
                }
            }
            if begin >= measure_from {
                latencies.record(begin.elapsed().as_nanos() as u64)?;
            }
        }
    }
}

async fn raw_connect(target: &str) -> anyhow::Result<TcpStream> {
    let target: Target = target.parse().map_err(anyhow::Error::msg)?;
    let addr = *target.resolve().await?.first().context("no address")?;
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

async fn connect(bench: ConnectBench) -> anyhow::Result<serde_json::Value> {
    let config = bench.client.config()?;
    let mut latencies = new_histogram();
    for _ in 0..bench.count {
        let begin = Instant::now();
        let mut client = Client::connect(&bench.target, &config).await?;
        client.echo("ping").await?;
        drop(client);
        latencies.record(begin.elapsed().as_nanos() as u64)?;
    }
    Ok(json!({
        "bench": "connect",
        "target": bench.target,
        "session": session_kind(false, &bench.client),
        "count": bench.count,
        "p50_us": micros(latencies.value_at_quantile(0.50)),
        "p99_us": micros(latencies.value_at_quantile(0.99)),
    }))
}

async fn exec(bench: ExecBench) -> anyhow::Result<serde_json::Value> {
    if bench.local {
        return exec_locally(bench).await;
    }
    let config = bench.client.config()?;
    let target = bench.target.as_deref().unwrap_or_default();
    let request = ExecRequest {
        command: Some(bench.command.clone()),
        ..ExecRequest::default()
    };
    let mut session = Client::connect(target, &config).await?;
    let mut latencies = new_histogram();
    for _ in 0..bench.count {
        let begin = Instant::now();
        if bench.fresh {
            session = Client::connect(target, &config).await?;
        }
        let (_, _, report) = session.exec_output(&request).await?;
        anyhow::ensure!(
            report.status() == 0,
            "`{}` exited with {}",
            bench.command,
            report.status()
        );
        latencies.record(begin.elapsed().as_nanos() as u64)?;
    }
    Ok(json!({
        "bench": "exec",
        "target": bench.target,
        "command": bench.command,
        "fresh_session": bench.fresh,
        "count": bench.count,
        "p50_us": micros(latencies.value_at_quantile(0.50)),
        "p99_us": micros(latencies.value_at_quantile(0.99)),
    }))
}

async fn exec_locally(bench: ExecBench) -> anyhow::Result<serde_json::Value> {
    use std::process::Stdio;
    let mut latencies = new_histogram();
    for _ in 0..bench.count {
        let begin = Instant::now();
        let output = tokio::process::Command::new("sh")
            .args(["-c", &bench.command])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .output()
            .await?;
        anyhow::ensure!(output.status.success(), "`{}` failed", bench.command);
        latencies.record(begin.elapsed().as_nanos() as u64)?;
    }
    Ok(json!({
        "bench": "exec_local",
        "command": bench.command,
        "count": bench.count,
        "p50_us": micros(latencies.value_at_quantile(0.50)),
        "p99_us": micros(latencies.value_at_quantile(0.99)),
    }))
}

async fn idle(bench: IdleBench) -> anyhow::Result<serde_json::Value> {
    let config = bench.client.config()?;
    let rss_before = bench.server_pid.map(resident_kib).transpose()?;
    let begin = Instant::now();
    let mut held = Vec::with_capacity(bench.connections);
    let mut opening = JoinSet::new();
    for _ in 0..bench.connections {
        if opening.len() >= bench.parallel.max(1) {
            held.push(opening.join_next().await.expect("non-empty")??);
        }
        let (target, config) = (bench.target.clone(), config.clone());
        opening.spawn(async move { Client::connect(&target, &config).await });
    }
    while let Some(client) = opening.join_next().await {
        held.push(client??);
    }
    let open_seconds = begin.elapsed().as_secs_f64();
    tokio::time::sleep(bench.hold).await;
    let rss_held = bench.server_pid.map(resident_kib).transpose()?;
    // Every session must still be alive: echo on each.
    for client in &mut held {
        client.echo("still there?").await?;
    }
    Ok(json!({
        "bench": "idle",
        "target": bench.target,
        "connections": held.len(),
        "open_seconds": (open_seconds * 100.0).round() / 100.0,
        "server_rss_before_mib": rss_before.map(|kib| kib / 1024),
        "server_rss_held_mib": rss_held.map(|kib| kib / 1024),
        "all_answered": true,
    }))
}

fn session_kind(raw: bool, client: &ClientArgs) -> &'static str {
    match (raw, client.plaintext) {
        (true, _) => "raw",
        (false, true) => "plaintext",
        (false, false) => "encrypted",
    }
}
