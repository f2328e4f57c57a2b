//! `sockit echo`: send text, print the server's upper-cased answer.

use std::io::Write;
use std::process::ExitCode;

use clap::Args;
use sockit::Client;

use super::shared::{ClientArgs, client_runtime};

#[derive(Args)]
#[command(
    about = "Send text to the echo service and print the upper-cased reply",
    after_help = "Examples:\n  sockit echo localhost hello world     # HELLO WORLD\n  sockit echo 10.0.0.5:9000 --plaintext hi"
)]
pub struct EchoArgs {
    /// Server as HOST[:PORT] (port 8080 if omitted), [IPv6]:PORT, or a Unix socket path
    target: String,
    /// The text to send; words are joined with single spaces
    #[arg(required = true)]
    text: Vec<String>,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn run(args: EchoArgs) -> anyhow::Result<ExitCode> {
    let config = args.client.config()?;
    let reply = client_runtime()?.block_on(async {
        let mut client = Client::connect(&args.target, &config).await?;
        client.echo(args.text.join(" ")).await
    })?;
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&reply)?;
    stdout.write_all(b"\n")?;
    Ok(ExitCode::SUCCESS)
}
