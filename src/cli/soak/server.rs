//! The server under test: the real `sockit serve` as a child process, and what /proc says
//! about it (memory, descriptors, the processes it left behind).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};

use super::super::bench::resident_kib;

/// A `sockit serve` child with exec allowed, a file root and the UDP time service, killed on drop.
pub struct ServerUnderTest {
    child: Child,
    pub addr: SocketAddr,
    pub time_addr: SocketAddr,
    pub secret_file: PathBuf,
    pub root: PathBuf,
}

/// What /proc says about the server at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Footprint {
    pub rss_kib: u64,
    pub fds: u64,
}

impl ServerUnderTest {
    pub fn start(sockit: &Path, dir: &Path) -> anyhow::Result<ServerUnderTest> {
        let secret_file = dir.join("secret");
        sockit::Secret::create(&secret_file, false)?;
        let root = dir.join("root");
        std::fs::create_dir_all(&root)?;
        let mut child = Command::new(sockit)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--time-listen", "127.0.0.1:0"])
            .arg("--secret-file")
            .arg(&secret_file)
            .arg("--root")
            .arg(&root)
            .args(["--allow-exec", "--exec-max-total", "512"])
            .env_remove("SOCKIT_SECRET")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", sockit.display()))?;
        let stderr = child.stderr.take().context("no server stderr")?;
        let (found, addrs) = mpsc::channel();
        // Drains the log for the whole run: a server blocked on a full stderr pipe is not one
        // under test.
        std::thread::spawn(move || {
            let (mut listen, mut time) = (None, None);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                listen = listen.or_else(|| address_after(&line, "listening on "));
                time = time.or_else(|| address_after(&line, "time service on udp "));
                if let (Some(listen), Some(time)) = (listen, time.take()) {
                    let _ = found.send((listen, time));
                }
            }
        });
        let Ok((addr, time_addr)) = addrs.recv_timeout(Duration::from_secs(20)) else {
            let _ = child.kill();
            bail!("the server did not report its addresses within 20 s");
        };
        Ok(ServerUnderTest {
            child,
            addr,
            time_addr,
            secret_file,
            root,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the server process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub fn footprint(&self) -> Footprint {
        let fds = std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|entries| entries.count() as u64)
            .unwrap_or(0);
        Footprint {
            rss_kib: resident_kib(self.pid()).unwrap_or(0),
            fds,
        }
    }

    /// Processes still running that the server started for exec: its children, and anything
    /// carrying `token` in its environment (a command's own children, in their process group).
    pub fn leftover_processes(&self, token: &str) -> Vec<String> {
        let needle = format!("SOAK_TOKEN={token}");
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| {
                let child = parent_of(pid) == Some(self.pid());
                let tagged = std::fs::read(format!("/proc/{pid}/environ"))
                    .map(|env| env.split(|&b| b == 0).any(|var| var == needle.as_bytes()))
                    .unwrap_or(false);
                child || tagged
            })
            .map(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                format!("{pid}: {}", String::from_utf8_lossy(&cmdline).replace('\0', " "))
            })
            .collect()
    }
}

impl Drop for ServerUnderTest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address following `marker` in a log line, text or JSON.
fn address_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let rest = line.split(marker).nth(1)?;
    rest.split(|c: char| c.is_whitespace() || c == '"')
        .next()?
        .parse()
        .ok()
}

/// The parent pid from /proc/PID/stat (the field after the parenthesised command name).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after_name) = stat.rsplit_once(')')?;
    after_name.split_whitespace().nth(1)?.parse().ok()
}
