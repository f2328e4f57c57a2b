//! `sockit fetch`: an HTTP(S) GET to stdout or a file, with curl's habits where scripts rely
//! on them (`-i`, `-o`, `--fail` and its exit status 22).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sockit::fetch::{Download, FetchOptions, Fetcher, ResponseHead};
use sockit::server::parse_duration;

use super::shared::EXIT_FAILURE;

/// Exit status for an HTTP error status with `--fail`: curl's, so scripts can share checks.
pub const EXIT_HTTP_ERROR: u8 = 22;

/// Bodies at least this large (or of unknown length) get a progress bar.
const LARGE_BODY: u64 = 1024 * 1024;

#[derive(Args)]
#[command(
    about = "Download a URL over HTTP or HTTPS",
    after_help = "Examples:\n  sockit fetch https://example.com/                # the page on stdout\n  sockit fetch -o site.tar.gz https://host/site.tar.gz\n  sockit fetch -i http://localhost:8000/           # status lines and headers first\n  sockit fetch --fail https://host/file || echo \"missing (22) or network error (255)\"\n  sockit fetch --cacert ca.pem https://internal.test/  # a private or self-signed CA\n\nRedirects are followed (at most --max-redirs). Exit status: 0 on success, 22 with --fail\nfor a final status of 400 or more, 255 when the network, TLS or the response fails\n(including a body cut short)."
)]
pub struct FetchArgs {
    /// http:// or https:// URL
    url: String,
    /// Write the body to FILE instead of stdout; it appears only when complete
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Print each response's status line and headers (redirects too) on stdout before the body
    #[arg(short = 'i', long)]
    include: bool,
    /// For a final status of 400 or more: print it, write no body, and exit 22
    #[arg(short, long)]
    fail: bool,
    /// Follow at most N redirects
    #[arg(long, value_name = "N", default_value_t = 5)]
    max_redirs: u32,
    /// Trust only the CA certificates in this PEM file instead of the built-in roots
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// Give up if resolving, connecting and the TLS handshake take longer than this
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Give up when the server sends nothing for this long
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    read_timeout: Duration,
}

pub fn run(args: FetchArgs) -> anyhow::Result<ExitCode> {
    let output = args.output.as_deref().filter(|path| *path != Path::new("-"));
    if let Some(path) = output {
        anyhow::ensure!(!path.is_dir(), "{} is a directory", path.display());
    }
    let fetcher = Fetcher::new(FetchOptions {
        max_redirects: args.max_redirs,
        connect_timeout: args.connect_timeout,
        read_timeout: args.read_timeout,
        ca_file: args.cacert.clone(),
    })?;
    let mut download = fetcher.get(&args.url, |head| {
        if args.include {
            write_stdout(head_text(head).as_bytes());
        }
    })?;
    if args.fail && download.head.status.as_u16() >= 400 {
        eprintln!("sockit: HTTP {}", status_text(&download.head));
        return Ok(ExitCode::from(EXIT_HTTP_ERROR));
    }
    let bar = progress_bar(download.head.content_length(), output.is_some());
    match output {
        Some(path) => save(&mut download, path, &bar)?,
        None => copy_body(&mut download, &bar, |bytes| {
            write_stdout(bytes);
            Ok(())
        })?,
    }
    bar.finish_and_clear();
    Ok(ExitCode::SUCCESS)
}

/// The head as it came over the wire (CRLF lines, a blank line after), as `curl -i` shows it.
fn head_text(head: &ResponseHead) -> String {
    let mut text = format!("{}\r\n", head.status_line());
    for (name, value) in &head.headers {
        text.push_str(&format!("{name}: {}\r\n", String::from_utf8_lossy(value)));
    }
    text.push_str("\r\n");
    text
}

/// `404 Not Found`: the status line without its version.
fn status_text(head: &ResponseHead) -> String {
    let line = head.status_line();
    line.split_once(' ')
        .map_or(line.clone(), |(_, rest)| rest.to_owned())
}

/// Writes the body to a hidden temporary file beside `path`, synced, then renamed over it:
/// `path` never holds a partial download, and a failed one leaves nothing behind.
fn save(download: &mut Download, path: &Path, bar: &ProgressBar) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let prefix = format!(".{name}.");
    let mut part = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".sockit-fetch")
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    let written = |error| format!("cannot write {}: {error}", path.display());
    copy_body(download, bar, |bytes| {
        part.write_all(bytes).map_err(|e| anyhow::anyhow!(written(e)))
    })?;
    part.as_file()
        .sync_all()
        .map_err(|e| anyhow::anyhow!(written(e)))?;
    part.persist(path)
        .map_err(|e| anyhow::anyhow!(written(e.error)))?;
    Ok(())
}

/// Reads the whole body into `write`, counting it on the progress bar.
fn copy_body(
    download: &mut Download,
    bar: &ProgressBar,
    mut write: impl FnMut(&[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = download.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        write(&buf[..n])?;
        bar.inc(n as u64);
    }
}

/// Writes raw bytes to stdout; if the reader has gone (`| head`), stops quietly as
/// [`super::print_line`] does. Any other failure to write is reported.
fn write_stdout(bytes: &[u8]) {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(error) => {
            eprintln!("sockit: cannot write to stdout: {error}");
            std::process::exit(i32::from(EXIT_FAILURE));
        }
    }
}

/// Bytes, rate and ETA on stderr, only for a person watching a large or open-ended download:
/// stderr must be a terminal, and the body must not be going to that same terminal.
fn progress_bar(length: Option<u64>, to_file: bool) -> ProgressBar {
    let watched = std::io::stderr().is_terminal() && (to_file || !std::io::stdout().is_terminal());
    let large = length.is_none_or(|n| n >= LARGE_BODY);
    let target = if watched && large {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let template = match length {
        Some(_) => "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
        None => "{spinner} {bytes} {binary_bytes_per_sec}",
    };
    let bar = ProgressBar::with_draw_target(length, target);
    bar.set_style(ProgressStyle::with_template(template).expect("valid template"));
    bar
}
