//! `sockit man`: manual pages in roff, generated from the same definitions as `--help`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use clap_mangen::Man;
use roff::{Roff, roman};

use super::shared::print_bytes;

#[derive(Args)]
#[command(
    about = "Print the sockit(1) manual page, or write one page per subcommand into a directory",
    after_help = "Examples:\n  sockit man | man -l -                      # read it now\n  sockit man --dir /usr/local/share/man/man1 # sockit.1, sockit-serve.1, ...; then run mandb"
)]
pub struct ManArgs {
    /// Write sockit.1 and sockit-SUBCOMMAND.1 for every subcommand into DIR (created if
    /// missing) instead of printing sockit.1
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// `cli` is the whole command line's definition, from which the pages are generated.
pub fn run(args: ManArgs, cli: clap::Command) -> anyhow::Result<ExitCode> {
    // As clap_mangen's own generate_to does: `help` is a subcommand for the terminal, not a
    // page; building names each subcommand `sockit-NAME`.
    let mut cli = cli.disable_help_subcommand(true);
    cli.build();
    match args.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            write_pages(&cli, &dir)?;
        }
        None => print_bytes(&render(&cli)?),
    }
    Ok(ExitCode::SUCCESS)
}

/// One page for `command` and, recursively, one for each of its visible subcommands.
fn write_pages(command: &clap::Command, dir: &Path) -> anyhow::Result<()> {
    let path = dir.join(page(command).get_filename());
    std::fs::write(&path, render(command)?).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    for subcommand in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_pages(subcommand, dir)?;
    }
    Ok(())
}

/// The page, with the examples of `--help` as an EXAMPLES section kept line for line:
/// clap_mangen would fill them into a paragraph, and a command line cut and joined with its
/// comment is no example.
fn render(command: &clap::Command) -> anyhow::Result<Vec<u8>> {
    let mut roff = Vec::new();
    page(&command.clone().after_help(None::<&str>)).render(&mut roff)?;
    if let Some(examples) = command.get_after_help() {
        examples_section(&examples.to_string()).to_writer(&mut roff)?;
    }
    Ok(roff)
}

fn examples_section(text: &str) -> Roff {
    let mut roff = Roff::new();
    roff.control("SH", ["EXAMPLES"]).control("nf", []);
    for line in text.strip_prefix("Examples:\n").unwrap_or(text).lines() {
        roff.text([roman(line)]);
    }
    roff.control("fi", []);
    roff
}

/// Every page says which sockit it documents: subcommands have no version of their own.
fn page(command: &clap::Command) -> Man {
    Man::new(command.clone())
        .source(format!("sockit {}", env!("CARGO_PKG_VERSION")))
        .manual("sockit manual")
}
