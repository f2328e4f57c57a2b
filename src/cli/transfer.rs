//! `sockit put` and `sockit get`: files and whole trees, resumable and verified.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use sockit::client::{TransferOptions, Transferred, safe_local_name};
use sockit::proto::files::INLINE_MAX;
use sockit::{Client, ClientError};

use super::hint::describe;
use super::shared::{ClientArgs, EXIT_FAILURE, client_runtime, print_line};

#[derive(Args)]
#[command(
    about = "Upload files or trees into the server's file root",
    after_help = "Examples:\n  sockit put web1 report.pdf                 # into the root\n  sockit put web1 *.log --to logs/2026       # into a directory (created if missing)\n  sockit put -r -p web1 site/ --to www       # a whole tree, keeping modes and times\n  sockit put --force web1 report.pdf         # replace what is there\n\nAn interrupted upload resumes where it stopped when run again; the part already sent is\nchecked by hash, not trusted. Every file is verified end to end with BLAKE3."
)]
pub struct PutArgs {
    /// Server as HOST[:PORT]
    target: String,
    /// Local files (directories with -r)
    #[arg(required = true)]
    local: Vec<PathBuf>,
    /// Remote directory to put them in [default: the root]
    #[arg(long, value_name = "DIR", default_value = "")]
    to: String,
    #[command(flatten)]
    common: TransferArgs,
}

#[derive(Args)]
#[command(
    about = "Download files or trees from the server's file root",
    after_help = "Examples:\n  sockit get web1 report.pdf                 # to ./report.pdf\n  sockit get web1 logs/a.log -o /tmp/a.log\n  sockit get -r web1 www -o ./site-copy\n\nAn interrupted download resumes from its partial file (.NAME.sockit-part) when run again."
)]
pub struct GetArgs {
    target: String,
    /// Remote files (directories with -r)
    #[arg(required = true)]
    remote: Vec<String>,
    /// Where to write: a file name for one file, else a directory [default: .]
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,
    #[command(flatten)]
    common: TransferArgs,
}

#[derive(Args)]
struct TransferArgs {
    /// Whole directory trees
    #[arg(short, long)]
    recursive: bool,
    /// Keep mode and modification time
    #[arg(short, long)]
    preserve: bool,
    /// Replace existing files
    #[arg(long)]
    force: bool,
    /// One JSON record per file, for scripts (no progress bar)
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    client: ClientArgs,
}

impl TransferArgs {
    fn options(&self) -> TransferOptions {
        TransferOptions {
            force: self.force,
            preserve: self.preserve,
        }
    }
}

/// One file to move: where from, where to, and its size.
struct Job {
    from: String,
    to: String,
    size: u64,
}

pub fn run_put(args: PutArgs) -> anyhow::Result<ExitCode> {
    let config = args.common.client.config()?;
    let (dirs, jobs) = plan_upload(&args.local, &args.to, args.common.recursive)?;
    client_runtime()?.block_on(async {
        let mut client = Client::connect(&args.target, &config).await?;
        for dir in dirs.iter().filter(|d| !d.is_empty()) {
            client.mkdir(dir, true).await?;
        }
        let bar = progress_bar(&jobs, args.common.json);
        let options = args.common.options();
        let (small, large): (Vec<&Job>, Vec<&Job>) = jobs.iter().partition(|job| job.size <= INLINE_MAX);
        let batch: Vec<(PathBuf, String)> = small
            .iter()
            .map(|j| (PathBuf::from(&j.from), j.to.clone()))
            .collect();
        let mut results = client
            .put_small_files(&batch, options, &mut |n| bar.inc(n))
            .await?;
        for job in &large {
            results.push(
                client
                    .put_file(Path::new(&job.from), &job.to, options, &mut |n| bar.inc(n))
                    .await,
            );
        }
        bar.finish_and_clear();
        let ordered = small.iter().chain(large.iter()).copied();
        Ok(report(ordered.zip(results), args.common.json))
    })
}

/// The remote directories to create and the files to send, for `put`.
fn plan_upload(locals: &[PathBuf], to: &str, recursive: bool) -> anyhow::Result<(Vec<String>, Vec<Job>)> {
    let mut dirs = vec![to.to_owned()];
    let mut jobs = Vec::new();
    for local in locals {
        let name = local
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| anyhow::anyhow!("{} has no file name", local.display()))?;
        let remote = join(to, &name);
        let meta = std::fs::metadata(local).map_err(|e| anyhow::anyhow!("{}: {e}", local.display()))?;
        if meta.is_dir() {
            anyhow::ensure!(recursive, "{} is a directory (use -r)", local.display());
            walk_local(local, &remote, &mut dirs, &mut jobs)?;
        } else {
            jobs.push(Job {
                from: local.to_string_lossy().into_owned(),
                to: remote,
                size: meta.len(),
            });
        }
    }
    Ok((dirs, jobs))
}

fn walk_local(dir: &Path, remote: &str, dirs: &mut Vec<String>, jobs: &mut Vec<Job>) -> anyhow::Result<()> {
    dirs.push(remote.to_owned());
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let meta = entry.metadata()?;
        if meta.is_dir() {
            walk_local(&entry.path(), &join(remote, &name), dirs, jobs)?;
        } else if meta.is_file() {
            jobs.push(Job {
                from: entry.path().to_string_lossy().into_owned(),
                to: join(remote, &name),
                size: meta.len(),
            });
        }
    }
    Ok(())
}

pub fn run_get(args: GetArgs) -> anyhow::Result<ExitCode> {
    let config = args.common.client.config()?;
    client_runtime()?.block_on(async {
        let mut client = Client::connect(&args.target, &config).await?;
        let single_file_name = args.remote.len() == 1 && !args.common.recursive;
        let output = args.output.clone().unwrap_or_else(|| PathBuf::from("."));
        let mut jobs = Vec::new();
        for remote in &args.remote {
            let entry = client.stat(remote).await?;
            if entry.kind == "dir" {
                anyhow::ensure!(args.common.recursive, "{remote} is a directory (use -r)");
                let local = output.join(safe_local_name(&entry.name)?);
                walk_remote(&mut client, remote, &local, &mut jobs).await?;
            } else {
                let local = if single_file_name && !output.is_dir() {
                    output.clone()
                } else {
                    output.join(safe_local_name(&entry.name)?)
                };
                jobs.push(Job {
                    from: remote.clone(),
                    to: local.to_string_lossy().into_owned(),
                    size: entry.size,
                });
            }
        }
        let bar = progress_bar(&jobs, args.common.json);
        let options = args.common.options();
        let mut results = Vec::new();
        for job in &jobs {
            let local = Path::new(&job.to);
            if let Some(parent) = local.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            results.push(
                client
                    .get_file(&job.from, local, options, &mut |n| bar.inc(n))
                    .await,
            );
        }
        bar.finish_and_clear();
        Ok(report(jobs.iter().zip(results), args.common.json))
    })
}

/// Lists a remote tree; every name is checked before it becomes part of a local path.
async fn walk_remote(
    client: &mut Client,
    remote: &str,
    local: &Path,
    jobs: &mut Vec<Job>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(local)?;
    for entry in client.list(remote).await? {
        let name = safe_local_name(&entry.name)?;
        let (remote_child, local_child) = (join(remote, name), local.join(name));
        match entry.kind.as_str() {
            "dir" => Box::pin(walk_remote(client, &remote_child, &local_child, jobs)).await?,
            "file" => jobs.push(Job {
                from: remote_child,
                to: local_child.to_string_lossy().into_owned(),
                size: entry.size,
            }),
            _ => {}
        }
    }
    Ok(())
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_owned()
    } else {
        format!("{}/{name}", dir.trim_end_matches('/'))
    }
}

/// Bytes, rate and ETA on stderr when it is a terminal; nothing for scripts.
fn progress_bar(jobs: &[Job], json: bool) -> ProgressBar {
    let total = jobs.iter().map(|job| job.size).sum();
    let target = if !json && std::io::stderr().is_terminal() {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(total), target);
    let style =
        ProgressStyle::with_template("{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}")
            .expect("valid template");
    bar.set_style(style);
    bar.set_message(format!("{} files", jobs.len()));
    bar
}

/// Prints what happened to each file; the status is 255 if any failed.
fn report<'a>(
    outcomes: impl Iterator<Item = (&'a Job, Result<Transferred, ClientError>)>,
    json: bool,
) -> ExitCode {
    let mut failed = 0;
    for (job, outcome) in outcomes {
        let shown = sockit::text::escape(&job.to);
        match (&outcome, json) {
            (Ok(done), true) => print_line(format_args!(
                "{}",
                json!({"from": job.from, "to": job.to, "size": done.size, "resumed_from": done.resumed_from, "blake3": done.blake3})
            )),
            (Err(error), true) => print_line(format_args!(
                "{}",
                json!({"from": job.from, "to": job.to, "error": describe(error)})
            )),
            (Ok(done), false) if done.resumed_from > 0 => {
                eprintln!(
                    "{shown}: {} bytes (resumed after {})",
                    done.size, done.resumed_from
                )
            }
            (Ok(_), false) => {}
            (Err(error), false) => {
                let error = sockit::text::escape(&describe(error));
                eprintln!("sockit: {}: {error}", sockit::text::escape(&job.from))
            }
        }
        failed += usize::from(outcome.is_err());
    }
    if failed > 0 {
        ExitCode::from(EXIT_FAILURE)
    } else {
        ExitCode::SUCCESS
    }
}
