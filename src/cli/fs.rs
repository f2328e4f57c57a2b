//! `sockit ls`, `rm`, `mkdir`, `mv`: the file root's directory operations.

use std::process::ExitCode;

use clap::Args;
use sockit::Client;
use sockit::text::escape;

use super::shared::{ClientArgs, client_runtime, print_line};

#[derive(Args)]
#[command(
    about = "List a directory of the server's file root",
    after_help = "Examples:\n  sockit ls web1\n  sockit ls web1 logs --json"
)]
pub struct LsArgs {
    target: String,
    #[arg(default_value = "")]
    path: String,
    /// A JSON array of entries (name, type, size, mtime, mode)
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
#[command(
    about = "Remove files or directories from the file root",
    after_help = "Examples:\n  sockit rm web1 old.log\n  sockit rm -r web1 build"
)]
pub struct RmArgs {
    target: String,
    #[arg(required = true)]
    paths: Vec<String>,
    /// Remove directories and their contents
    #[arg(short, long)]
    recursive: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
#[command(
    about = "Create directories in the file root",
    after_help = "Examples:\n  sockit mkdir -p web1 logs/2026/11"
)]
pub struct MkdirArgs {
    target: String,
    #[arg(required = true)]
    paths: Vec<String>,
    /// Create missing parents, and do not mind existing directories
    #[arg(short, long)]
    parents: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Args)]
#[command(
    about = "Rename or move within the file root",
    after_help = "Examples:\n  sockit mv web1 draft.txt final.txt\n  sockit mv --force web1 new.cfg app.cfg"
)]
pub struct MvArgs {
    target: String,
    from: String,
    to: String,
    /// Replace an existing target
    #[arg(long)]
    force: bool,
    #[command(flatten)]
    client: ClientArgs,
}

pub fn run_ls(args: LsArgs) -> anyhow::Result<ExitCode> {
    let config = args.client.config()?;
    let entries = client_runtime()?.block_on(async {
        let mut client = Client::connect(&args.target, &config).await?;
        client.list(&args.path).await
    })?;
    if args.json {
        print_line(format_args!("{}", serde_json::to_string(&entries)?));
        return Ok(ExitCode::SUCCESS);
    }
    for entry in entries {
        let kind = match entry.kind.as_str() {
            "dir" => 'd',
            "symlink" => 'l',
            "file" => '-',
            _ => '?',
        };
        let name = escape(&entry.name);
        let mtime = chrono::DateTime::from_timestamp(entry.mtime, 0).unwrap_or_default();
        print_line(format_args!(
            "{kind}{:04o} {:>12} {} {name}",
            entry.mode,
            entry.size,
            mtime.format("%Y-%m-%d %H:%M")
        ));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_rm(args: RmArgs) -> anyhow::Result<ExitCode> {
    each(&args.target, &args.client, &args.paths, |client, path| {
        Box::pin(client.remove(path, args.recursive))
    })
}

pub fn run_mkdir(args: MkdirArgs) -> anyhow::Result<ExitCode> {
    each(&args.target, &args.client, &args.paths, |client, path| {
        Box::pin(client.mkdir(path, args.parents))
    })
}

pub fn run_mv(args: MvArgs) -> anyhow::Result<ExitCode> {
    let config = args.client.config()?;
    client_runtime()?.block_on(async {
        let mut client = Client::connect(&args.target, &config).await?;
        client.rename(&args.from, &args.to, args.force).await
    })?;
    Ok(ExitCode::SUCCESS)
}

type Op<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), sockit::ClientError>> + 'a>>;

/// Runs one operation per path over one session; stops at the first failure.
fn each(
    target: &str,
    client_args: &ClientArgs,
    paths: &[String],
    op: impl for<'a> Fn(&'a mut Client, &'a str) -> Op<'a>,
) -> anyhow::Result<ExitCode> {
    let config = client_args.config()?;
    client_runtime()?.block_on(async {
        let mut client = Client::connect(target, &config).await?;
        for path in paths {
            op(&mut client, path).await?;
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
