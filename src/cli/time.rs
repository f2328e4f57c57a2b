//! `sockit time`: ask a time service for the time, as the course's time client does.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use sockit::client::{Target, ask_datagram};
use sockit::proto::ports::{DEFAULT_PORT, DEFAULT_TIME_PORT};
use sockit::server::parse_duration;
use sockit::services::time::{is_answered, parse_datagram_reply};
use sockit::{Client, ClientError};

use super::shared::{ClientArgs, client_runtime, print_line};

#[derive(Args)]
#[command(
    about = "Ask a time service for its local time in a strftime format",
    after_help = "Examples:\n  sockit time localhost                    # 2024-11-28 09:30:00 (the course's %Y-%m-%d %X)\n  sockit time 127.0.0.1:9000 '%Y %m %d'   # any strftime format\n  sockit time --timeout 200ms --retries 10 server.example\n  sockit time --native localhost '%H:%M'  # over an authenticated session (port 8080)\n\nOver UDP the request is sent again when no answer comes within --timeout, --retries times;\nexit status 255 when nothing answers or the server refuses the format."
)]
pub struct TimeArgs {
    /// Server as HOST[:PORT]: port 9000 if omitted (8080 with --native)
    target: String,
    /// A strftime format such as '%Y %m %d' [default: the server's, %Y-%m-%d %X]
    format: Option<String>,
    /// How long to wait for each answer over UDP
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    timeout: Duration,
    /// Send again this many times when no answer comes over UDP
    #[arg(long, value_name = "N", default_value_t = 3)]
    retries: u32,
    /// Ask the native service over an authenticated session instead of the UDP service
    #[arg(long)]
    native: bool,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn run(args: TimeArgs) -> anyhow::Result<ExitCode> {
    let time = if args.native {
        native_time(&args)?
    } else {
        datagram_time(&args)?
    };
    print_line(time);
    Ok(ExitCode::SUCCESS)
}

fn datagram_time(args: &TimeArgs) -> anyhow::Result<String> {
    let target = Target::parse_with_port(&args.target, DEFAULT_TIME_PORT).map_err(ClientError::BadTarget)?;
    let request = args.format.as_deref().unwrap_or_default().as_bytes();
    if !is_answered(request) {
        anyhow::bail!(
            "{:?} is not a strftime format (no `%`); the time service does not answer such text",
            args.format.as_deref().unwrap_or_default()
        );
    }
    let tries = args.retries.saturating_add(1);
    let reply = client_runtime()?.block_on(ask_datagram(&target, request, args.timeout, tries))?;
    parse_datagram_reply(&reply).map_err(|message| anyhow::anyhow!("server error: {message}"))
}

fn native_time(args: &TimeArgs) -> anyhow::Result<String> {
    let target = Target::parse_with_port(&args.target, DEFAULT_PORT).map_err(ClientError::BadTarget)?;
    let config = args.client.config()?;
    let reply = client_runtime()?.block_on(async {
        let mut client = Client::connect(&target.to_string(), &config).await?;
        client.time(args.format.as_deref()).await
    })?;
    Ok(reply.time)
}
