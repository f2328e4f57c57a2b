//! The servers under test: the real `sockit serve` as child processes, and what /proc says
//! about it (memory, descriptors, the processes it left behind).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::cli::bench::measure::resident_kib;

/// A `sockit serve` child, killed on drop.
pub struct ServerUnderTest {
    child: Child,
    pub addr: SocketAddr,
    pub time_addr: SocketAddr,
    /// The metrics endpoint, when the role has one.
    pub metrics_addr: Option<SocketAddr>,
    /// The classic UDP echo, when the role has one.
    pub udp_echo_addr: Option<SocketAddr>,
    pub secret_file: PathBuf,
    pub root: PathBuf,
}

/// What a server under test runs.
#[derive(Clone, Copy)]
pub enum Role {
    /// The server the load aims at: exec allowed, a file root, the UDP time service; with
    /// `exposed`, also metrics and the classic UDP echo for the hostile phase to aim at.
    Main { exposed: bool },
    /// A bare server whose file root has this quota, for the quota attack alone.
    Quota(u64),
}

impl Role {
    fn args(self) -> Vec<String> {
        let mut args: Vec<String> = ["--listen", "127.0.0.1:0"].map(String::from).to_vec();
        match self {
            Role::Main { exposed } => {
                args.extend(
                    [
                        "--time-listen",
                        "127.0.0.1:0",
                        "--allow-exec",
                        "--exec-max-total",
                        "512",
                    ]
                    .map(String::from),
                );
                if exposed {
                    args.extend(["--metrics", "127.0.0.1:0", "--classic"].map(String::from));
                    for service in ["echo", "exec", "ftp", "hmac_echo", "greeting", "udp_exec"] {
                        args.extend(["--classic-listen".to_owned(), format!("{service}=off")]);
                    }
                    args.extend(["--classic-listen", "udp_echo=127.0.0.1:0"].map(String::from));
                }
            }
            Role::Quota(bytes) => {
                args.extend([
                    "--time-listen".to_owned(),
                    "off".to_owned(),
                    "--quota".to_owned(),
                    bytes.to_string(),
                ]);
            }
        }
        args
    }
}

/// The addresses a server is bound to, from the file `sockit serve --ready-file` writes once
/// every listener is bound.
#[derive(Default)]
struct Addresses {
    listen: Option<SocketAddr>,
    time: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
    udp_echo: Option<SocketAddr>,
}

impl Addresses {
    /// Reads a ready file; `None` until the server has written it.
    fn read(path: &Path) -> Option<Addresses> {
        let ready: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        let addr = |value: &serde_json::Value| value.as_str()?.parse().ok();
        let service = |name: &str| {
            ready["services"].as_array()?.iter().find_map(|bound| {
                (bound["service"] == name && bound["transport"] == "udp")
                    .then(|| addr(&bound["addr"]))
                    .flatten()
            })
        };
        Some(Addresses {
            listen: ready["listen"].as_array()?.iter().find_map(addr),
            time: service("time"),
            metrics: addr(&ready["metrics"]),
            udp_echo: service("classic-udp-echo"),
        })
    }

    /// Waits (up to `patience`) for the ready file, or for the server to end.
    fn wait(path: &Path, child: &mut Child, patience: Duration) -> anyhow::Result<Addresses> {
        let deadline = std::time::Instant::now() + patience;
        loop {
            if let Some(addresses) = Addresses::read(path) {
                return Ok(addresses);
            }
            if let Ok(Some(status)) = child.try_wait() {
                bail!("the server ended before it was ready ({status})");
            }
            if std::time::Instant::now() > deadline {
                bail!("the server did not write its ready file within {patience:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What /proc says about the server at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Footprint {
    pub rss_kib: u64,
    pub fds: u64,
}

impl ServerUnderTest {
    /// Starts a server in `role` with the secret in `secret_file` and the file root `root`.
    pub fn start(
        sockit: &Path,
        secret_file: &Path,
        root: &Path,
        role: Role,
    ) -> anyhow::Result<ServerUnderTest> {
        std::fs::create_dir_all(root)?;
        let ready_file = root.with_extension("ready.json");
        let mut child = Command::new(sockit)
            .arg("serve")
            .args(role.args())
            .arg("--secret-file")
            .arg(secret_file)
            .arg("--root")
            .arg(root)
            .arg("--ready-file")
            .arg(&ready_file)
            .env_remove("SOCKIT_SECRET")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", sockit.display()))?;
        let stderr = child.stderr.take().context("no server stderr")?;
        // Drains the log for the whole run: a server blocked on a full stderr pipe is not one
        // under test.
        std::thread::spawn(move || {
            BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
                .for_each(drop)
        });
        let addresses = match Addresses::wait(&ready_file, &mut child, Duration::from_secs(20)) {
            Ok(addresses) => addresses,
            Err(error) => {
                let _ = child.kill();
                return Err(error);
            }
        };
        Ok(ServerUnderTest {
            child,
            addr: addresses.listen.context("no address")?,
            time_addr: addresses
                .time
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            metrics_addr: addresses.metrics,
            udp_echo_addr: addresses.udp_echo,
            secret_file: secret_file.to_owned(),
            root: root.to_owned(),
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

/// The parent pid from /proc/PID/stat (the field after the parenthesised command name).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, after_name) = stat.rsplit_once(')')?;
    after_name.split_whitespace().nth(1)?.parse().ok()
}
