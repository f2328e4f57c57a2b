//! The `sockit` command line, laid out as `sockit --help` lists it: one module per subcommand,
//! a folder for one that spans several files (`chat/` with the UDP console, `bench/` with the
//! soak suite). [`shared`] and [`hint`] sit below the commands; no command imports this
//! module or another command's parent.

mod bench;
mod chat;
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
mod shared;
mod shell;
mod time;
mod transfer;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use shared::EXIT_FAILURE;

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
