//! `sockit keygen`: write a fresh random secret.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use sockit::Secret;
use sockit::auth::default_secret_path;

#[derive(Args)]
#[command(
    about = "Write a fresh random secret (mode 0600) for servers and clients to share",
    after_help = "Examples:\n  sockit keygen                          # ~/.config/sockit/secret\n  sockit keygen --secret-file ./team.key # then copy it to the other machines"
)]
pub struct KeygenArgs {
    /// Where to write it [default: ~/.config/sockit/secret]
    #[arg(long, value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// Replace an existing secret (clients using the old one will be refused)
    #[arg(long)]
    force: bool,
}

pub fn run(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    let path = match args.secret_file {
        Some(path) => path,
        None => default_secret_path().context("no config directory; pass --secret-file")?,
    };
    Secret::create(&path, args.force)?;
    eprintln!("wrote a new secret to {} (mode 0600)", path.display());
    Ok(ExitCode::SUCCESS)
}
