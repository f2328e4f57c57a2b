//! Test harness: a sockit server on an ephemeral loopback port, run in this process
//! ([`InProcessServer`], for tests that only speak the protocol, as mini-redis's tests do) or
//! as the real `sockit serve` binary ([`ServerProcess`], for the CLI, exec's process groups and
//! reaper, robustness and operations); the real CLI as a client; helpers for raw bytes.
//!
//! Neither kind is found by reading its log: the in-process server is asked where it bound,
//! and the process announces every address in its `--ready-file` once all are bound. A test
//! that checks a log line waits for it ([`ServerProcess::wait_for_log`]): the server may write
//! it after the client has seen the effect, and the log is read on a thread of its own.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sockit::{Client, ClientConfig, Secret};
use tempfile::TempDir;

mod in_process;

pub use in_process::InProcessServer;

pub const SOCKIT: &str = env!("CARGO_BIN_EXE_sockit");

/// How long a server may take to start, stop, or write a log line a test waits for: far more
/// than any of them takes, so that only a real failure reaches it, even on a loaded machine.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// What a client needs to reach a test server, in-process or not: its addresses, its secret,
/// and a config directory of its own for the CLI.
pub struct ServerAccess {
    /// The first native address: `IP:PORT`, or `unix:PATH`.
    pub addr: String,
    pub dir: TempDir,
    pub secret_file: PathBuf,
    /// Started with `--plaintext`: clients must ask for plaintext sessions.
    pub plaintext: bool,
    bound: Bound,
}

/// Every address a server bound, with the ports chosen for port 0.
#[derive(Clone, Debug)]
pub struct Bound {
    /// The native listeners, as `--listen` takes them (`IP:PORT`, `unix:PATH`).
    pub listen: Vec<String>,
    pub services: Vec<ServiceBound>,
    pub metrics: Option<SocketAddr>,
}

/// Where one unframed service (`time`, `daytime`, `classic-echo`, ...) was bound.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceBound {
    pub service: String,
    /// `tcp` or `udp`.
    pub transport: String,
    pub addr: SocketAddr,
}

impl Bound {
    /// What `sockit serve --ready-file` wrote.
    fn from_ready_file(text: &str) -> Bound {
        let ready: serde_json::Value =
            serde_json::from_str(text).unwrap_or_else(|e| panic!("a bad ready file ({e}): {text}"));
        let addr = |value: &serde_json::Value| -> SocketAddr {
            value
                .as_str()
                .and_then(|addr| addr.parse().ok())
                .expect("an IP:PORT")
        };
        let services = ready["services"].as_array().expect("a list of services");
        Bound {
            listen: ready["listen"]
                .as_array()
                .expect("a list of listen addresses")
                .iter()
                .map(|addr| addr.as_str().expect("an address").to_owned())
                .collect(),
            services: services
                .iter()
                .map(|service| ServiceBound {
                    service: service["service"].as_str().expect("a name").to_owned(),
                    transport: service["transport"].as_str().expect("tcp or udp").to_owned(),
                    addr: addr(&service["addr"]),
                })
                .collect(),
            metrics: (!ready["metrics"].is_null()).then(|| addr(&ready["metrics"])),
        }
    }
}

impl ServerAccess {
    pub(crate) fn new(dir: TempDir, secret_file: PathBuf, plaintext: bool, bound: Bound) -> ServerAccess {
        let addr = bound.listen.first().expect("a native listener").clone();
        ServerAccess {
            addr,
            dir,
            secret_file,
            plaintext,
            bound,
        }
    }

    /// Every native address, in `--listen` order.
    pub fn listen_addrs(&self) -> &[String] {
        &self.bound.listen
    }

    /// Every unframed service bound, in the order the server bound them.
    pub fn services(&self) -> &[ServiceBound] {
        &self.bound.services
    }

    /// Where the unframed service `service` (`time`, `daytime`, `classic-echo`, ...) was bound
    /// over `transport` (`udp` or `tcp`).
    pub fn service_addr(&self, service: &str, transport: &str) -> SocketAddr {
        self.services()
            .iter()
            .find(|bound| bound.service == service && bound.transport == transport)
            .unwrap_or_else(|| panic!("no {service} service on {transport}: {:?}", self.services()))
            .addr
    }

    /// Where `/metrics` is served, if anywhere.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.bound.metrics
    }

    pub fn secret(&self) -> Secret {
        Secret::load(&self.secret_file).unwrap()
    }

    /// A client configuration that matches the server's session mode.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new(self.secret());
        config.plaintext = self.plaintext;
        config
    }

    /// Runs `sockit SUBCOMMAND --secret-file FILE ARGS...` with this server's config directory
    /// (options first: `exec` takes everything after its command as words).
    pub fn cli(&self, args: &[&str]) -> Output {
        run_cli(self.dir.path(), &self.cli_args(args))
    }

    pub fn cli_args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all = vec![args[0], "--secret-file", self.secret_file.to_str().unwrap()];
        all.extend_from_slice(&args[1..]);
        all
    }

    /// Asserts the server still answers a fresh client correctly.
    pub async fn assert_serving(&self) {
        let mut client = Client::connect(&self.addr, &self.client_config())
            .await
            .expect("server still accepts sessions");
        assert_eq!(client.echo("still serving").await.unwrap(), "STILL SERVING");
    }
}

/// A new secret in a new config directory.
pub(crate) fn new_secret() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("secret");
    Secret::create(&secret_file, false).unwrap();
    (dir, secret_file)
}

/// A `sockit serve` process with its own secret and config directory, killed on drop.
pub struct ServerProcess {
    child: Child,
    access: ServerAccess,
    log: Arc<Mutex<String>>,
    /// Reads its stderr into `log` until the process ends.
    reader: Option<JoinHandle<()>>,
}

impl ServerProcess {
    /// Starts `sockit serve --listen 127.0.0.1:0 --secret-file DIR/secret EXTRA...`.
    pub fn start(extra: &[&str]) -> ServerProcess {
        let (dir, secret_file) = new_secret();
        ServerProcess::start_in(dir, secret_file, extra)
    }

    /// Like [`ServerProcess::start`], with the same secret as `other`.
    pub fn start_sharing_secret(other: &ServerProcess, extra: &[&str]) -> ServerProcess {
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("secret");
        std::fs::copy(&other.secret_file, &secret_file).unwrap();
        ServerProcess::start_in(dir, secret_file, extra)
    }

    fn start_in(dir: TempDir, secret_file: PathBuf, extra: &[&str]) -> ServerProcess {
        let secret_arg = secret_file.to_str().unwrap().to_owned();
        let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--secret-file", &secret_arg];
        args.extend_from_slice(extra);
        ServerProcess::spawn(dir, secret_file.clone(), &args)
    }

    /// Starts `sockit serve ARGS...` with `dir` as its config directory, and returns once it
    /// has announced every address it bound in its `--ready-file` (DIR/ready.json unless ARGS
    /// name one). The UDP time service is turned off unless ARGS set `--time-listen`, so that
    /// tests running in parallel do not fight over its default port.
    pub fn spawn(dir: TempDir, secret_file: PathBuf, args: &[&str]) -> ServerProcess {
        assert_eq!(args.first(), Some(&"serve"), "the harness starts servers");
        let default_ready_file = dir.path().join("ready.json");
        let mut args = args.to_vec();
        if !args.contains(&"--time-listen") {
            args.extend(["--time-listen", "off"]);
        }
        if !args.contains(&"--ready-file") {
            args.extend(["--ready-file", default_ready_file.to_str().unwrap()]);
        }
        let ready_file = args
            .iter()
            .position(|arg| *arg == "--ready-file")
            .map(|at| PathBuf::from(args[at + 1]))
            .unwrap();
        // A restart in the same directory must not read the last server's addresses.
        let _ = std::fs::remove_file(&ready_file);
        let mut child = sockit_command(dir.path())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        let mut reader = Some(std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        }));
        let bound = wait_until_ready(&mut child, &mut reader, &ready_file, &log);
        ServerProcess {
            child,
            access: ServerAccess::new(dir, secret_file, args.contains(&"--plaintext"), bound),
            log,
            reader,
        }
    }

    /// What the server has logged so far (read on a thread of its own: a line just written
    /// may not be in yet, so wait for one with [`ServerProcess::wait_for_log`]).
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits up to [`PATIENCE`] for `needle` to appear in the server's log.
    pub fn wait_for_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        rustix_kill(self.child.id(), "TERM");
        wait_with_timeout(&mut self.child, PATIENCE)
    }

    /// Stops the server gracefully (SIGTERM, asserting it exits cleanly) and returns its whole
    /// log: what a server never logged can only be checked once it has stopped logging.
    pub fn terminate_for_log(mut self) -> String {
        rustix_kill(self.child.id(), "TERM");
        let status = wait_with_timeout(&mut self.child, PATIENCE);
        assert!(status.success(), "{status:?}; log:\n{}", self.log());
        // Its stderr is closed now: the log is whole once the reader is done.
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.log()
    }
}

impl Deref for ServerProcess {
    type Target = ServerAccess;

    fn deref(&self) -> &ServerAccess {
        &self.access
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `child` to write `ready_file`, within [`PATIENCE`]; fails with its whole log if it
/// exits or takes longer.
fn wait_until_ready(
    child: &mut Child,
    reader: &mut Option<JoinHandle<()>>,
    ready_file: &Path,
    log: &Mutex<String>,
) -> Bound {
    let deadline = Instant::now() + PATIENCE;
    loop {
        // Renamed into place once written: if it is there, it is whole.
        if let Ok(text) = std::fs::read_to_string(ready_file) {
            return Bound::from_ready_file(&text);
        }
        let exited = child.try_wait().unwrap().is_some();
        let late = Instant::now() >= deadline;
        if late && !exited {
            let _ = child.kill();
        }
        if exited || late {
            let status = child.wait().unwrap();
            // Its stderr is closed now: the log is whole once the reader is done.
            if let Some(reader) = reader.take() {
                let _ = reader.join();
            }
            panic!(
                "the server was not ready ({status}); log:\n{}",
                log.lock().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `sockit` command with `config_dir` as its config directory and no secret in the
/// environment, so tests never touch the user's own secret.
pub fn sockit_command(config_dir: &Path) -> Command {
    let mut command = Command::new(SOCKIT);
    command
        .env("XDG_CONFIG_HOME", config_dir)
        .env("HOME", config_dir)
        .env_remove("SOCKIT_SECRET")
        .env_remove("RUST_LOG");
    command
}

/// Runs `sockit ARGS...` (with `server`'s secret) in a pseudo-terminal driven by
/// `tests/support/pty_drive.py` through `script` (its steps: expect, send, sleep).
pub fn pty_drive(server: &ServerAccess, script: &serde_json::Value, args: &[&str]) -> Command {
    let driver = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/pty_drive.py");
    let mut command = Command::new("python3");
    command
        .arg(driver)
        .arg(script.to_string())
        .arg("--")
        .arg(SOCKIT)
        .args(server.cli_args(args))
        .env("XDG_CONFIG_HOME", server.dir.path())
        .env("HOME", server.dir.path());
    command
}

pub fn run_cli(config_dir: &Path, args: &[&str]) -> Output {
    sockit_command(config_dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

pub fn rustix_kill(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status();
    assert!(status.unwrap().success());
}

pub fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "process did not exit within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Resident memory of a local process in MiB.
pub fn resident_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024
}

/// Where `server` serves metrics; it must have been started with them.
pub fn metrics_addr(server: &ServerAccess) -> SocketAddr {
    server.metrics_addr().expect("the server serves metrics")
}

/// An in-process server with `settings` (see [`InProcessServer::start`]), and its file root.
pub fn file_server(settings: &str) -> (InProcessServer, PathBuf) {
    let server = InProcessServer::start(settings);
    let root = server.root.clone();
    (server, root)
}

/// The next thing a chat server sent, within 10 s.
pub async fn next_incoming(feed: &mut sockit::client::ChatFeed) -> sockit::client::ChatIncoming {
    tokio::time::timeout(Duration::from_secs(10), feed.next())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .expect("the connection is open")
}
