//! What several commands share: the client flags, output that stops quietly when its reader
//! has gone, the prompt, the runtime and the descriptor limit.
//!
//! It sits below the commands and imports none of them, so a command reaches it without
//! importing its own parent.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use sockit::ClientConfig;
use sockit::auth::resolve_secret;
use sockit::server::parse_duration;

/// Exit status for sockit's own failures (refused, unreachable, auth failed, protocol error),
/// as ssh does, so scripts can tell them from a remote command's status.
pub const EXIT_FAILURE: u8 = 255;

/// How a client command finds the server's secret and which session to ask for.
#[derive(Args, Clone, Debug)]
pub struct ClientArgs {
    /// File holding the shared secret [default: $SOCKIT_SECRET, then ~/.config/sockit/secret]
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// Authenticate with HMAC and send frames unencrypted; the server must use --plaintext too
    #[arg(long)]
    pub plaintext: bool,
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
