//! Test harness: the real `sockit` binary as a server on an ephemeral loopback port, the real
//! CLI as a client, and helpers for talking raw bytes to it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use sockit::{Client, ClientConfig, Secret};
use tempfile::TempDir;

pub const SOCKIT: &str = env!("CARGO_BIN_EXE_sockit");

/// A `sockit serve` process with its own secret and config directory, killed on drop.
pub struct ServerProcess {
    child: Child,
    /// The first TCP address it reported with `listening on`.
    pub addr: String,
    pub dir: TempDir,
    pub secret_file: PathBuf,
    /// Started with `--plaintext`: clients must ask for plaintext sessions.
    pub plaintext: bool,
    log: Arc<Mutex<String>>,
}

impl ServerProcess {
    /// Starts `sockit serve --listen 127.0.0.1:0 --secret-file DIR/secret EXTRA...`.
    pub fn start(extra: &[&str]) -> ServerProcess {
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("secret");
        Secret::create(&secret_file, false).unwrap();
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

    /// Starts `sockit serve ARGS...` with `dir` as its config directory. The UDP time service
    /// is turned off unless ARGS set `--time-listen`, so that tests running in parallel do not
    /// fight over its default port.
    pub fn spawn(dir: TempDir, secret_file: PathBuf, args: &[&str]) -> ServerProcess {
        let mut args = args.to_vec();
        if args.first() == Some(&"serve") && !args.contains(&"--time-listen") {
            args.extend(["--time-listen", "off"]);
        }
        let mut child = sockit_command(dir.path())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (first_addr, addr_rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = listen_addr(&line) {
                    let _ = first_addr.send(addr);
                }
                sink.lock().unwrap().push_str(&line);
                sink.lock().unwrap().push('\n');
            }
        });
        let addr = match addr_rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start; log:\n{}", log.lock().unwrap());
            }
        };
        ServerProcess {
            child,
            addr,
            dir,
            secret_file,
            plaintext: args.contains(&"--plaintext"),
            log,
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits up to 10 s for `needle` to appear in the server's log.
    pub fn wait_for_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Where an unframed service (`time`, `daytime`, `rfc868`, `sntp`) was bound over
    /// `transport` (`udp` or `tcp`), from its `SERVICE service on TRANSPORT ADDR` log line.
    pub fn service_addr(&self, service: &str, transport: &str) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(addr) = self
                .log()
                .lines()
                .find_map(|line| service_addr(line, service, transport))
            {
                return addr;
            }
            assert!(
                Instant::now() < deadline,
                "no `{service} service on {transport}` in the log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        rustix_kill(self.child.id(), "TERM");
        wait_with_timeout(&mut self.child, Duration::from_secs(20))
    }

    /// Asserts the server still answers a fresh client correctly.
    pub async fn assert_serving(&self) {
        let mut client = Client::connect(&self.addr, &self.client_config())
            .await
            .expect("server still accepts sessions");
        assert_eq!(client.echo("still serving").await.unwrap(), "STILL SERVING");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The address in a `listening on ADDR` log line, text or JSON.
pub fn listen_addr(line: &str) -> Option<String> {
    let rest = line.split("listening on ").nth(1)?;
    Some(
        rest.split(|c: char| c.is_whitespace() || c == '"')
            .next()?
            .to_owned(),
    )
}

/// The address in a `SERVICE service on TRANSPORT ADDR` log line, text or JSON, for exactly
/// that service (`time` does not match `daytime`).
pub fn service_addr(line: &str, service: &str, transport: &str) -> Option<SocketAddr> {
    let needle = format!("{service} service on {transport} ");
    let (before, rest) = line.split_once(&needle)?;
    if before.ends_with(|c: char| c.is_alphanumeric()) {
        return None;
    }
    rest.split(|c: char| c.is_whitespace() || c == '"')
        .next()?
        .parse()
        .ok()
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
pub fn pty_drive(server: &ServerProcess, script: &serde_json::Value, args: &[&str]) -> Command {
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

/// Where `server` serves metrics, from its `metrics on http://ADDR/metrics` log line.
pub fn metrics_addr(server: &ServerProcess) -> SocketAddr {
    assert!(server.wait_for_log("metrics on http://"), "{}", server.log());
    server
        .log()
        .lines()
        .find_map(|line| {
            let rest = line.split("metrics on http://").nth(1)?;
            rest.split('/').next()?.parse().ok()
        })
        .expect("a metrics address in the log")
}

/// A server whose file root is `DIR/root`.
pub fn file_server(extra: &[&str]) -> (ServerProcess, PathBuf) {
    let dir = tempfile::tempdir().unwrap().keep();
    let root = dir.join("root");
    let mut args = vec!["--root", root.to_str().unwrap()];
    args.extend_from_slice(extra);
    (ServerProcess::start(&args), root)
}

/// The next thing a chat server sent, within 10 s.
pub async fn next_incoming(feed: &mut sockit::client::ChatFeed) -> sockit::client::ChatIncoming {
    tokio::time::timeout(Duration::from_secs(10), feed.next())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .expect("the connection is open")
}
