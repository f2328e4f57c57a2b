//! The `sockit` command line: one subcommand per file.

mod bench;
mod chat;
mod chat_udp;
mod completions;
mod demo;
mod echo;
mod exec;
mod fetch;
mod fs;
mod hint;
mod keygen;
mod man;
mod serve;
mod shell;
mod soak;
mod time;
mod transfer;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};
use sockit::ClientConfig;
use sockit::auth::resolve_secret;
use sockit::server::parse_duration;

/// Exit status for sockit's own failures (refused, unreachable, auth failed, protocol error),
/// as ssh does, so scripts can tell them from a remote command's status.
pub const EXIT_FAILURE: u8 = 255;

#[derive(Parser)]
#[command(
    name = "sockit",
    version,
    about = "A network toolkit: one authenticated, encrypted server and its clients",
    after_help = "Examples:\n  sockit serve                      # serve on 127.0.0.1:8080\n  sockit echo localhost hello       # prints HELLO\n  sockit time localhost '%Y %m %d'  # the UDP time service on port 9000\n  sockit keygen --secret-file ./key # make a secret to share with another machine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    // Boxed: `serve` has far more options than any other command.
    Serve(Box<serve::ServeArgs>),
    Echo(echo::EchoArgs),
    Exec(exec::ExecArgs),
    Keygen(keygen::KeygenArgs),
    Shell(shell::ShellArgs),
    Put(transfer::PutArgs),
    Get(transfer::GetArgs),
    Ls(fs::LsArgs),
    Rm(fs::RmArgs),
    Mkdir(fs::MkdirArgs),
    Mv(fs::MvArgs),
    Chat(chat::ChatArgs),
    Time(time::TimeArgs),
    Fetch(fetch::FetchArgs),
    Bench(bench::BenchArgs),
    Demo(demo::DemoArgs),
    Completions(completions::CompletionsArgs),
    Man(man::ManArgs),
}

/// How a client command finds the server's secret and which session to ask for.
#[derive(Args, Clone, Debug)]
pub struct ClientArgs {
    /// File holding the shared secret [default: $SOCKIT_SECRET, then ~/.config/sockit/secret]
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// Authenticate with HMAC and send frames unencrypted; the server must use --plaintext too
    #[arg(long)]
    plaintext: bool,
    /// Give up if connecting and authenticating take longer than this
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    connect_timeout: Duration,
}

impl ClientArgs {
    pub fn config(&self) -> anyhow::Result<ClientConfig> {
        let (secret, _) = resolve_secret(self.secret_file.as_deref(), false)?;
        let mut config = ClientConfig::new(secret);
        config.plaintext = self.plaintext;
        config.connect_timeout = self.connect_timeout;
        Ok(config)
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Echo(args) => echo::run(args),
        Command::Exec(args) => exec::run(args),
        Command::Keygen(args) => keygen::run(args),
        Command::Shell(args) => shell::run(args),
        Command::Put(args) => transfer::run_put(args),
        Command::Get(args) => transfer::run_get(args),
        Command::Ls(args) => fs::run_ls(args),
        Command::Rm(args) => fs::run_rm(args),
        Command::Mkdir(args) => fs::run_mkdir(args),
        Command::Mv(args) => fs::run_mv(args),
        Command::Chat(args) => chat::run(args),
        Command::Time(args) => time::run(args),
        Command::Fetch(args) => fetch::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Completions(args) => completions::run(args, Cli::command()),
        Command::Man(args) => man::run(args, Cli::command()),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            // Errors may quote the server and, through it, other people: shown escaped.
            eprintln!("sockit: {}", sockit::text::escape(&hint::one_line(&error)));
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Prints a line on stdout; if the reader has gone (`| head`), stops quietly as Unix tools do.
pub fn print_line(line: impl std::fmt::Display) {
    use std::io::Write;
    if writeln!(std::io::stdout().lock(), "{line}").is_err() {
        std::process::exit(0);
    }
}

/// Writes bytes to stdout; if the reader has gone, stops quietly as [`print_line`] does.
pub fn print_bytes(bytes: &[u8]) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if stdout.write_all(bytes).and_then(|()| stdout.flush()).is_err() {
        std::process::exit(0);
    }
}

/// The next non-empty line typed at `prompt`, trimmed and added to the history; `None` at
/// Ctrl-D. Ctrl-C at the prompt only clears the line, as in a shell.
pub fn prompt_line(editor: &mut rustyline::DefaultEditor, prompt: &str) -> rustyline::Result<Option<String>> {
    use rustyline::error::ReadlineError;
    loop {
        match editor.readline(prompt) {
            Ok(line) if line.trim().is_empty() => {}
            Ok(line) => {
                let line = line.trim().to_owned();
                let _ = editor.add_history_entry(&line);
                return Ok(Some(line));
            }
            Err(ReadlineError::Interrupted) => {}
            Err(ReadlineError::Eof) => return Ok(None),
            Err(error) => return Err(error),
        }
    }
}

/// A single-threaded runtime: client commands do one thing at a time and start faster so.
pub fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Lifts the open-file limit to its hard maximum: a server or load generator holding
/// thousands of connections needs one descriptor each.
pub fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let Some(maximum) = limit.maximum {
        let raised = rustix::process::Rlimit {
            current: Some(maximum),
            maximum: Some(maximum),
        };
        let _ = setrlimit(Resource::Nofile, raised);
    }
}
