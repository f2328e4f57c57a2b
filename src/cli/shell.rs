//! `sockit shell`: the course's `>>: ` prompt, each line run remotely over one kept-open session.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use rustyline::DefaultEditor;
use sockit::proto::exec::ExecRequest;
use sockit::{Client, ClientConfig, ClientError};

use super::exec::run_attached;
use super::hint::describe;
use super::shared::{ClientArgs, client_runtime, prompt_line};

#[derive(Args)]
#[command(
    about = "An interactive prompt whose lines run on the server (the server needs --allow-exec)",
    after_help = "Examples:\n  sockit shell web1\n  >>: ls -l\n  >>: make test     # Ctrl-C interrupts the command, not the shell\n  >>: quit          # or Ctrl-D"
)]
pub struct ShellArgs {
    /// Server as HOST[:PORT]
    target: String,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn run(args: ShellArgs) -> anyhow::Result<ExitCode> {
    let config = args.client.config()?;
    let runtime = client_runtime()?;
    let mut client = runtime.block_on(Client::connect(&args.target, &config))?;
    let mut editor = DefaultEditor::new()?;
    let history = history_path();
    if let Some(path) = &history {
        let _ = editor.load_history(path);
    }
    eprintln!(
        "connected to {} ({}); `quit` or Ctrl-D leaves",
        args.target,
        client.server_info().server
    );
    while let Some(line) = prompt_line(&mut editor, ">>: ")? {
        if line == "quit" || line == "exit" {
            break;
        }
        match runtime.block_on(run_line(&mut client, &args.target, &config, &line)) {
            Ok(0) => {}
            Ok(status) => eprintln!("[exit {status}]"),
            Err(error) => eprintln!("sockit: {}", describe(&error)),
        }
    }
    if let Some(path) = &history {
        let _ = std::fs::create_dir_all(path.parent().unwrap_or(path));
        let _ = editor.save_history(path);
    }
    runtime.shutdown_background();
    Ok(ExitCode::SUCCESS)
}

fn history_path() -> Option<PathBuf> {
    dirs::data_dir().map(|dir| dir.join("sockit").join("shell_history"))
}

/// Runs one line; if the session died meanwhile (the server's idle timeout), reconnects once.
async fn run_line(
    client: &mut Client,
    target: &str,
    config: &ClientConfig,
    line: &str,
) -> Result<u8, ClientError> {
    match run_remote(client, line).await {
        Err(ClientError::Connection(_) | ClientError::Closed) => {
            *client = Client::connect(target, config).await?;
            run_remote(client, line).await
        }
        result => result,
    }
}

async fn run_remote(client: &mut Client, line: &str) -> Result<u8, ClientError> {
    let request = ExecRequest {
        command: Some(line.to_owned()),
        ..ExecRequest::default()
    };
    let no_stdin: Option<tokio::io::Stdin> = None;
    Ok(run_attached(client, &request, no_stdin).await?.status())
}
