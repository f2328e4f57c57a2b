//! The `sockit` binary end to end: serve, echo, keygen, exit codes and messages.

mod common;

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{ServerProcess, run_cli, stderr, stdout};

#[test]
fn echo_round_trip_prints_the_upper_cased_text() {
    let server = ServerProcess::start(&[]);
    let output = server.cli(&["echo", &server.addr, "hello", "world", "straße"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "HELLO WORLD STRASSE\n");
}

#[test]
fn serves_ipv6_and_unix_sockets_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("sockit.sock");
    let server = ServerProcess::start(&["--listen", "[::1]:0", "--listen", socket.to_str().unwrap()]);
    assert!(server.wait_for_log(&format!("listening on unix:{}", socket.display())));
    let v6 = server
        .listen_addrs()
        .iter()
        .find(|addr| addr.starts_with('['))
        .expect("an IPv6 listener")
        .clone();
    assert!(server.wait_for_log(&format!("listening on {v6}")));
    for target in [v6.as_str(), socket.to_str().unwrap()] {
        let output = server.cli(&["echo", target, "over", "here"]);
        assert_eq!(stdout(&output), "OVER HERE\n", "{target}: {}", stderr(&output));
    }
}

#[test]
fn wrong_secret_exits_255_with_one_line_and_the_server_logs_the_peer_not_the_secret() {
    let server = ServerProcess::start(&[]);
    let wrong = server.dir.path().join("wrong");
    std::fs::write(&wrong, "not-the-secret-value\n").unwrap();
    for mode in [&[][..], &["--plaintext"][..]] {
        let server = if mode.is_empty() {
            &server
        } else {
            &ServerProcess::start(&["--plaintext"])
        };
        let mut args = vec![
            "echo",
            &server.addr,
            "hi",
            "--secret-file",
            wrong.to_str().unwrap(),
        ];
        args.extend_from_slice(mode);
        let output = run_cli(server.dir.path(), &args);
        assert_eq!(output.status.code(), Some(255));
        let message = stderr(&output);
        assert_eq!(message.lines().count(), 1, "{message}");
        assert!(message.contains("authentication failed"), "{message}");
        assert!(server.wait_for_log("authentication failed"));
        let log = server.log();
        assert!(log.contains("peer=127.0.0.1:"), "{log}");
        assert!(!log.contains("not-the-secret-value"));
        assert!(!log.contains(&read(&server.secret_file)));
    }
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_owned()
}

#[test]
fn plaintext_and_encrypted_mismatches_are_explained() {
    let encrypted = ServerProcess::start(&[]);
    let output = encrypted.cli(&["echo", &encrypted.addr, "hi", "--plaintext"]);
    assert_eq!(output.status.code(), Some(255));
    assert!(
        stderr(&output).contains("requires encrypted sessions"),
        "{}",
        stderr(&output)
    );
    assert!(stderr(&output).contains("drop --plaintext"));

    let plaintext = ServerProcess::start(&["--plaintext"]);
    let output = plaintext.cli(&["echo", &plaintext.addr, "hi"]);
    assert_eq!(output.status.code(), Some(255));
    assert!(
        stderr(&output).contains("runs with --plaintext"),
        "{}",
        stderr(&output)
    );
    let output = plaintext.cli(&["echo", &plaintext.addr, "hi", "--plaintext"]);
    assert_eq!(stdout(&output), "HI\n");
}

#[test]
fn unreachable_server_exits_255_naming_the_cause_and_a_hint() {
    // Bind then drop a listener: the port is free and nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "x".repeat(32)).unwrap();
    let secret = dir.path().join("secret");
    let target = format!("127.0.0.1:{port}");
    let output = run_cli(
        dir.path(),
        &["echo", &target, "hi", "--secret-file", secret.to_str().unwrap()],
    );
    assert_eq!(output.status.code(), Some(255));
    let message = stderr(&output);
    assert!(
        message.starts_with("sockit: connection refused by 127.0.0.1:"),
        "{message}"
    );
    assert!(message.contains("hint:"), "{message}");
}

#[test]
fn a_client_with_no_secret_anywhere_is_told_how_to_get_one() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_cli(dir.path(), &["echo", "127.0.0.1:1", "hi"]);
    assert_eq!(output.status.code(), Some(255));
    assert!(stderr(&output).contains("no secret"), "{}", stderr(&output));
    assert!(stderr(&output).contains("sockit keygen"));
}

#[test]
fn serve_with_no_secret_creates_the_default_file_and_local_clients_need_no_flags() {
    let dir = tempfile::tempdir().unwrap();
    let default = dir.path().join("sockit").join("secret");
    let server = ServerProcess::spawn(dir, default.clone(), &["serve", "--listen", "127.0.0.1:0"]);
    assert!(server.wait_for_log("created a new secret at"));
    assert_eq!(
        std::fs::metadata(&default).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let output = run_cli(server.dir.path(), &["echo", &server.addr, "no", "flags"]);
    assert_eq!(stdout(&output), "NO FLAGS\n", "{}", stderr(&output));
    assert!(
        !server.log().contains(&read(&default)),
        "the secret is never logged"
    );
}

#[test]
fn secret_from_the_environment_is_used() {
    let server = ServerProcess::start(&[]);
    let output = common::sockit_command(server.dir.path())
        .args(["echo", &server.addr, "env"])
        .env("SOCKIT_SECRET", read(&server.secret_file))
        .output()
        .unwrap();
    assert_eq!(stdout(&output), "ENV\n", "{}", stderr(&output));
}

#[test]
fn keygen_writes_a_private_secret_and_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("team.key");
    let file = path.to_str().unwrap();
    let output = run_cli(dir.path(), &["keygen", "--secret-file", file]);
    assert!(output.status.success(), "{}", stderr(&output));
    let first = read(&path);
    assert_eq!(first.len(), 64);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let again = run_cli(dir.path(), &["keygen", "--secret-file", file]);
    assert_eq!(again.status.code(), Some(255));
    assert!(stderr(&again).contains("--force"));
    assert!(
        run_cli(dir.path(), &["keygen", "--secret-file", file, "--force"])
            .status
            .success()
    );
    assert_ne!(read(&path), first);
}

#[test]
fn help_has_examples_everywhere_and_version_is_printed() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["echo", "--help"],
        &["keygen", "--help"],
        &["bench", "--help"],
    ] {
        let output = run_cli(dir.path(), args);
        assert!(output.status.success());
        assert!(stdout(&output).contains("Examples:"), "{args:?}");
    }
    let output = run_cli(dir.path(), &["--version"]);
    assert_eq!(stdout(&output), format!("sockit {}\n", env!("CARGO_PKG_VERSION")));
}

#[test]
fn sigterm_shuts_down_gracefully() {
    let server = ServerProcess::start(&[]);
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
}

#[test]
fn the_ready_file_names_every_address_bound_and_goes_at_shutdown() {
    let elsewhere = tempfile::tempdir().unwrap();
    let ready = elsewhere.path().join("sockit.json");
    let server = ServerProcess::start(&[
        "--daytime-listen",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        "--ready-file",
        ready.to_str().unwrap(),
    ]);
    // The harness has read it: every address it names is served.
    assert!(ready.exists());
    let output = server.cli(&["echo", &server.addr, "ready"]);
    assert_eq!(stdout(&output), "READY\n", "{}", stderr(&output));
    let daytime = server.service_addr("daytime", "tcp");
    assert_eq!(daytime.port(), server.service_addr("daytime", "udp").port());
    let mut line = String::new();
    std::io::Read::read_to_string(&mut TcpStream::connect(daytime).unwrap(), &mut line).unwrap();
    assert!(line.ends_with("\r\n"), "{line:?}");
    let metrics = server.metrics_addr().expect("metrics");
    let mut scrape = TcpStream::connect(metrics).unwrap();
    std::io::Write::write_all(&mut scrape, b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut scrape, &mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    assert!(!ready.exists(), "a server that stopped announces nothing");
}

#[test]
fn restart_on_the_same_port_never_fails_with_address_in_use() {
    let server = ServerProcess::start(&[]);
    let addr = server.addr.clone();
    // Leave a connection behind so the old server's side lingers in TIME_WAIT.
    assert_eq!(stdout(&server.cli(&["echo", &addr, "x"])), "X\n");
    let _held = TcpStream::connect(&addr).unwrap();
    let (dir, secret_file) = (tempfile::tempdir().unwrap(), server.secret_file.clone());
    let secret_copy = dir.path().join("secret");
    std::fs::copy(&secret_file, &secret_copy).unwrap();
    drop(server);
    let args = [
        "serve",
        "--listen",
        &addr,
        "--secret-file",
        secret_copy.to_str().unwrap(),
    ];
    let restarted = ServerProcess::spawn(dir, secret_copy.clone(), &args);
    assert_eq!(restarted.addr, addr);
    assert_eq!(stdout(&restarted.cli(&["echo", &addr, "again"])), "AGAIN\n");
}

#[test]
fn config_file_sets_options_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    sockit::Secret::create(&secret, false).unwrap();
    let config = dir.path().join("sockit.toml");
    std::fs::write(
        &config,
        format!(
            "listen = [\"127.0.0.1:0\"]\nplaintext = true\nsecret_file = \"{}\"\nlog_format = \"json\"\n",
            secret.display()
        ),
    )
    .unwrap();
    let server = ServerProcess::spawn(dir, secret, &["serve", "--config", config.to_str().unwrap()]);
    assert!(
        server.wait_for_log("\"level\":\"INFO\""),
        "json logs: {}",
        server.log()
    );
    let output = server.cli(&["echo", &server.addr, "from", "toml", "--plaintext"]);
    assert_eq!(stdout(&output), "FROM TOML\n", "{}", stderr(&output));

    let bad = server.dir.path().join("bad.toml");
    std::fs::write(&bad, "listne = []\n").unwrap();
    let output = run_cli(server.dir.path(), &["serve", "--config", bad.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(255));
    assert!(
        stderr(&output).contains("unknown field `listne`"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_bad_listen_address_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_cli(dir.path(), &["serve", "--listen", "localhost"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("is not IP:PORT"), "{}", stderr(&output));
    let started = Instant::now();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = run_cli(dir.path(), &["serve", "--listen", &addr]);
    assert_eq!(output.status.code(), Some(255));
    assert!(
        stderr(&output).contains(&format!("cannot listen on {addr}")),
        "{}",
        stderr(&output)
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn a_python_client_written_the_course_way_talks_to_a_plaintext_server() {
    let server = ServerProcess::start(&["--plaintext"]);
    let port = server.addr.rsplit(':').next().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/python/echo_client.py");
    let output = std::process::Command::new("python3")
        .args([
            script,
            "127.0.0.1",
            port,
            server.secret_file.to_str().unwrap(),
            "from",
            "python",
        ])
        .output()
        .expect("python3 is part of the supported machine");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "FROM PYTHON\n");
}
