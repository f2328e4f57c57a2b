//! `sockit completions SHELL`: the shell's completion script for every subcommand and flag.

use std::process::ExitCode;

use clap::Args;
use clap_complete::Shell;

use super::shared::print_bytes;

#[derive(Args)]
#[command(
    about = "Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout",
    after_help = "Examples:\n  sockit completions bash > /etc/bash_completion.d/sockit\n  sockit completions zsh > \"${fpath[1]}/_sockit\"\n  sockit completions fish > ~/.config/fish/completions/sockit.fish\n  source <(sockit completions bash)         # this shell only"
)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    shell: Shell,
}

/// `cli` is the whole command line's definition, from which the script is generated.
pub fn run(args: CompletionsArgs, mut cli: clap::Command) -> anyhow::Result<ExitCode> {
    // Generated in memory: clap_complete panics if its writer fails, and stdout may be a
    // closed pipe.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cli, "sockit", &mut script);
    print_bytes(&script);
    Ok(ExitCode::SUCCESS)
}
