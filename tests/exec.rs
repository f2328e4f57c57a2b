//! Remote execution end to end: the real `sockit exec` and `sockit shell` against a real
//! server, checked against the process table.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{ServerProcess, run_cli, rustix_kill, stderr, stdout};
use sockit::auth::{self, AuthMode, SessionKeys};
use sockit::client::{ExecEvent, RemoteCommand};
use sockit::proto::exec::ExecRequest;
use sockit::wire::{Connection, ErrorCode, Header, Limits, RemoteError};
use sockit::{Client, ClientError};

fn exec_server() -> ServerProcess {
    ServerProcess::start(&["--allow-exec"])
}

fn shell(line: &str) -> ExecRequest {
    ExecRequest {
        command: Some(line.to_owned()),
        ..ExecRequest::default()
    }
}

/// Processes whose command line contains `marker` (other than this test's own tools).
fn processes_matching(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(marker) && !cmdline.contains("sockit") {
                found.push(format!("{}: {cmdline}", entry.file_name().to_string_lossy()));
            }
        }
    }
    found
}

/// The children of `pid`, live or zombie, as their `/proc/PID/stat` lines.
fn children_of(pid: u32) -> Vec<String> {
    children_in_state(pid, |_| true)
}

/// Zombie children of `pid`.
fn zombies_of(pid: u32) -> Vec<String> {
    children_in_state(pid, |state| state == "Z")
}

fn children_in_state(pid: u32, wanted: impl Fn(&str) -> bool) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) {
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map_or("", |(_, rest)| rest)
                .split_whitespace()
                .collect();
            let state = fields.first().copied().unwrap_or_default();
            if wanted(state) && fields.get(1) == Some(&pid.to_string().as_str()) {
                found.push(stat);
            }
        }
    }
    found
}

fn wait_until_gone(marker: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !processes_matching(marker).is_empty() {
        assert!(
            Instant::now() < deadline,
            "left behind: {:?}",
            processes_matching(marker)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn both_streams_and_the_exit_status_come_back() {
    let server = exec_server();
    let output = server.cli(&["exec", &server.addr, "ls -l /; lllllll; pwd"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "sh reports the last command's status"
    );
    let out = stdout(&output);
    assert!(out.contains("root") && out.contains("usr"), "ls output: {out}");
    // Commands start in the home directory, as with ssh (the harness's HOME is its temp dir).
    let home = server.dir.path().canonicalize().unwrap();
    assert!(
        out.ends_with(&format!("{}\n", home.display())),
        "pwd output: {out}"
    );
    assert!(
        stderr(&output).contains("lllllll: not found"),
        "{}",
        stderr(&output)
    );
    let output = server.cli(&["exec", &server.addr, "lllllll"]);
    assert_eq!(output.status.code(), Some(127));
}

#[test]
fn exit_codes_and_deaths_by_signal_become_our_status() {
    let server = exec_server();
    for (command, status) in [
        ("true", 0),
        ("false", 1),
        ("exit 42", 42),
        ("kill -9 $$", 137),
        ("kill -TERM $$", 143),
    ] {
        let output = server.cli(&["exec", &server.addr, command]);
        assert_eq!(
            output.status.code(),
            Some(status),
            "{command}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn ten_megabytes_of_binary_output_arrive_byte_exact() {
    let server = exec_server();
    let file = server.dir.path().join("blob");
    let data: Vec<u8> = (0..10_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&file, &data).unwrap();
    let output = server.cli(&["exec", &server.addr, "cat", file.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        output.stdout == data,
        "{} bytes came back, differently",
        output.stdout.len()
    );
}

#[test]
fn gbk_and_binary_bytes_are_never_decoded() {
    let server = exec_server();
    // 你好 in GBK, then bytes that are not text in any encoding.
    let output = server.cli(&[
        "exec",
        &server.addr,
        r"printf '\304\343\272\303'; printf '\000\377\200' >&2",
    ]);
    assert_eq!(output.stdout, b"\xc4\xe3\xba\xc3");
    assert_eq!(output.stderr, b"\x00\xff\x80");
}

#[test]
fn stdin_is_forwarded_with_its_end() {
    let server = exec_server();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut child = common::sockit_command(server.dir.path())
        .args(server.cli_args(&["exec", &server.addr, "cat; echo done >&2"]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&data).map(|()| data));
    let output = child.wait_with_output().unwrap();
    let data = writer.join().unwrap().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        output.stdout == data,
        "cat returned {} of {} bytes",
        output.stdout.len(),
        data.len()
    );
    assert_eq!(stderr(&output), "done\n", "cat saw end-of-file");
}

#[test]
fn options_set_the_directory_environment_and_timeout() {
    let server = exec_server();
    let output = server.cli(&[
        "exec",
        "--cwd",
        "/tmp",
        "--env",
        "GREETING=ni hao",
        &server.addr,
        "pwd; echo $GREETING",
    ]);
    assert_eq!(stdout(&output), "/tmp\nni hao\n", "{}", stderr(&output));
    let output = server.cli(&["exec", "--cwd", "/no/such/dir", &server.addr, "pwd"]);
    assert_eq!(output.status.code(), Some(255));
    assert!(stderr(&output).contains("/no/such/dir"), "{}", stderr(&output));
}

#[test]
fn a_timeout_stops_the_command_and_all_its_children() {
    let server = exec_server();
    let begin = Instant::now();
    let output = server.cli(&[
        "exec",
        "--timeout",
        "500ms",
        &server.addr,
        "sleep 1001.5 & sleep 1002.5; echo never",
    ]);
    assert_eq!(
        output.status.code(),
        Some(143),
        "killed by SIGTERM: {}",
        stderr(&output)
    );
    assert!(stderr(&output).contains("timed out"));
    assert!(!stdout(&output).contains("never"));
    assert!(begin.elapsed() < Duration::from_secs(10));
    wait_until_gone("sleep 100");
    assert_eq!(zombies_of(server.pid()), Vec::<String>::new());
}

#[test]
fn a_client_killed_mid_command_leaves_no_process_behind() {
    let server = exec_server();
    let mut client = common::sockit_command(server.dir.path())
        .args(server.cli_args(&["exec", "-n", &server.addr, "sleep 1003.5 & sleep 1004.5 & wait"]))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_matching("sleep 1004.5").is_empty() {
        assert!(Instant::now() < deadline, "the command never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    client.kill().unwrap();
    client.wait().unwrap();
    wait_until_gone("sleep 100");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(zombies_of(server.pid()), Vec::<String>::new());
}

#[test]
fn processes_that_leave_their_group_are_stopped_and_every_orphan_is_reaped() {
    let server = exec_server();
    // Each escapes the group kill its own way, with its output detached so the command ends at
    // once: `setsid` in the background, a double fork through a subshell, `setsid` from a
    // child shell, and one that exits by itself soon after (a zombie, unless it is reaped).
    // Each marks a file once it is in its own session, and the command ends only when all
    // four are: otherwise, on a loaded machine, the group kill at the command's end could
    // catch one still in the group, and nothing would be left for the reaper to find.
    let escaped = tempfile::tempdir().unwrap();
    let d = escaped.path().display();
    let line = format!(
        "setsid sh -c 'touch {d}/1; exec sleep 2001.5' </dev/null >/dev/null 2>&1 & \
         (setsid sh -c 'touch {d}/2; sleep 2002.5; true' </dev/null >/dev/null 2>&1 &); \
         sh -c 'setsid sh -c \"touch {d}/3; exec sleep 2003.5\" </dev/null >/dev/null 2>&1 &'; \
         setsid sh -c 'touch {d}/4; sleep 0.2; exit 3' </dev/null >/dev/null 2>&1 & \
         while [ ! -e {d}/1 ] || [ ! -e {d}/2 ] || [ ! -e {d}/3 ] || [ ! -e {d}/4 ]; do sleep 0.01; done; \
         echo started"
    );
    let output = server.cli(&["exec", "-n", &server.addr, &line]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "started\n");
    // This test's own sleeps only: another "sleep 200..." on the machine is not ours to wait for.
    for marker in ["sleep 2001.5", "sleep 2002.5", "sleep 2003.5"] {
        wait_until_gone(marker);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while !children_of(server.pid()).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the server still has children: {:?}",
            children_of(server.pid())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(server.wait_for_log("stopping a process that left its command's group"));
    // And exec goes on as before.
    let output = server.cli(&["exec", "-n", &server.addr, "echo still"]);
    assert_eq!(stdout(&output), "still\n");
}

#[test]
fn exec_is_refused_unless_the_server_allows_it() {
    let server = ServerProcess::start(&[]);
    let output = server.cli(&["exec", &server.addr, "true"]);
    assert_eq!(output.status.code(), Some(255));
    assert!(stderr(&output).contains("--allow-exec"), "{}", stderr(&output));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_streams_as_it_is_produced_and_commands_follow_each_other() {
    let server = exec_server();
    let mut client = Client::connect(&server.addr, &server.client_config())
        .await
        .unwrap();
    let begin = Instant::now();
    let mut command = client
        .exec(&shell("echo first; sleep 2; echo second"))
        .await
        .unwrap();
    assert_eq!(
        command.output.next_event().await.unwrap(),
        ExecEvent::Stdout("first\n".into())
    );
    assert!(
        begin.elapsed() < Duration::from_millis(1500),
        "first line after {:?}",
        begin.elapsed()
    );
    // Several commands, one after another, on the same session.
    for n in 0..3 {
        let (out, _, report) = client.exec_output(&shell(&format!("echo {n}"))).await.unwrap();
        assert_eq!((out, report.status()), (format!("{n}\n").into_bytes(), 0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limits_answer_busy() {
    let server = ServerProcess::start(&["--allow-exec", "--exec-max-per-connection", "1"]);
    let stream = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    let mut conn = Connection::tcp(stream, Limits::default());
    auth::connect(&mut conn, &SessionKeys::new(server.secret(), AuthMode::Noise))
        .await
        .unwrap();
    for id in [1, 2] {
        let request = Header::from_message("exec", &shell("sleep 5")).with_id(Some(id));
        conn.send(request, b"").await.unwrap();
    }
    let started = conn.read_message().await.unwrap().unwrap();
    assert_eq!((started.header.cmd(), started.header.id()), ("started", Some(1)));
    let refused = conn.read_message().await.unwrap().unwrap();
    let error = RemoteError::from_header(&refused.header).expect("an error for the second");
    assert_eq!((error.code, refused.header.id()), (ErrorCode::Busy, Some(2)));
    let signal = Header::new("signal").with_id(Some(1)).with("signal", "KILL");
    conn.send(signal, b"").await.unwrap();
    let exit = conn.read_message().await.unwrap().unwrap();
    assert_eq!((exit.header.cmd(), exit.header.u64("signal")), ("exit", Some(9)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_slows_the_command_and_server_memory_stays_bounded() {
    let server = exec_server();
    let rss = || common::resident_mib(server.pid());
    let before = rss();
    let mut client = Client::connect(&server.addr, &server.client_config())
        .await
        .unwrap();
    let mut command = client.exec(&shell("yes sockit-backpressure")).await.unwrap();
    // Read slowly for a second: the command must wait for us, not fill the server's memory.
    for _ in 0..50 {
        assert!(matches!(
            command.output.next_event().await.unwrap(),
            ExecEvent::Stdout(_)
        ));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let during = rss();
    assert!(
        during < before + 32,
        "server RSS grew from {before} to {during} MiB"
    );
    drop(command);
    drop(client);
    wait_until_gone("yes sockit-backpressure");
}

#[test]
fn a_gigabyte_of_output_passes_in_bounded_server_memory() {
    let server = exec_server();
    let before = common::resident_mib(server.pid());
    let mut client = common::sockit_command(server.dir.path())
        .args(server.cli_args(&["exec", &server.addr, "head -c 1073741824 /dev/zero"]))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pipe = client.stdout.take().unwrap();
    let counted = Command::new("wc").arg("-c").stdin(pipe).output().unwrap();
    assert!(client.wait().unwrap().success());
    assert_eq!(String::from_utf8_lossy(&counted.stdout).trim(), "1073741824");
    let after = common::resident_mib(server.pid());
    assert!(
        after < before + 32,
        "server RSS grew from {before} to {after} MiB"
    );
}

#[test]
fn fan_out_reports_each_host_and_a_down_host_does_not_stop_the_others() {
    let one = exec_server();
    let two = ServerProcess::start_sharing_secret(&one, &["--allow-exec"]);
    let down = format!(
        "127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    );
    let args = [
        "exec",
        "-H",
        &one.addr,
        "-H",
        &two.addr,
        "-H",
        &down,
        "echo out; echo err >&2; exit 3",
    ];
    let output = one.cli(&args);
    assert_eq!(
        output.status.code(),
        Some(255),
        "the largest status: the down host's"
    );
    let (out, err) = (stdout(&output), stderr(&output));
    for host in [&one.addr, &two.addr] {
        assert!(out.contains(&format!("{host}: out\n")), "{out}");
        assert!(err.contains(&format!("{host}: err\n")), "{err}");
        assert!(err.contains(&format!("{host}  exit 3")), "{err}");
    }
    assert!(
        err.contains(&format!("{down}  failed: connection refused")),
        "{err}"
    );
    assert!(err.contains("3 hosts: 0 ok, 3 failed"), "{err}");

    // The same hosts from a file (with a comment and a blank line), JSON records out.
    let hosts_file = one.dir.path().join("hosts.txt");
    std::fs::write(
        &hosts_file,
        format!("# fleet\n{}\n\n{}  # second\n{down}\n", one.addr, two.addr),
    )
    .unwrap();
    let file = hosts_file.to_str().unwrap();
    let output = one.cli(&[
        "exec",
        "--json",
        "--hosts-file",
        file,
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(output.status.code(), Some(255));
    let records: Vec<serde_json::Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        records
            .iter()
            .filter(|r| r["stream"] == "stdout" && r["data"] == "out")
            .count(),
        2
    );
    assert_eq!(records.iter().filter(|r| r["exit"] == 3).count(), 2);
    assert!(
        records
            .iter()
            .any(|r| r["host"] == down.as_str() && r["exit"] == 255 && r["error"].is_string())
    );
}

#[test]
fn the_shell_runs_lines_remotely_and_ctrl_c_interrupts_only_the_command() {
    let server = exec_server();
    let script = serde_json::json!([
        {"expect": ">>: "},
        {"send": "echo hello from $((6*7))\r"},
        {"expect": "hello from 42"},
        {"expect": ">>: "},
        {"send": "exit 3\r"},
        {"expect": "[exit 3]"},
        {"expect": ">>: "},
        {"send": "sleep 30; echo not-$((1+1))-interrupted\r"},
        {"sleep": 0.5},
        {"send": "\u{3}"},
        {"expect": "[exit 130]"},
        {"expect": ">>: "},
        {"send": "quit\r"},
    ]);
    let output = common::pty_drive(&server, &script, &["shell", &server.addr])
        .output()
        .expect("python3 runs the pty driver");
    let shown = stdout(&output);
    assert!(output.status.success(), "{shown}\n{}", stderr(&output));
    assert!(shown.contains("EXIT 0"), "{shown}");
    assert!(!shown.contains("not-2-interrupted"), "{shown}");
}

#[test]
fn exec_needs_a_command() {
    let dir = tempfile::tempdir().unwrap();
    let output = run_cli(dir.path(), &["exec", "127.0.0.1:1"]);
    assert_ne!(output.status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argv_runs_without_a_shell_and_spawn_failures_are_clear() {
    let server = exec_server();
    let mut client = Client::connect(&server.addr, &server.client_config())
        .await
        .unwrap();
    let request = ExecRequest {
        argv: Some(vec!["echo".into(), "$HOME; not expanded".into()]),
        ..ExecRequest::default()
    };
    let (out, _, _) = client.exec_output(&request).await.unwrap();
    assert_eq!(out, b"$HOME; not expanded\n");
    let request = ExecRequest {
        argv: Some(vec!["/no/such/program".into()]),
        ..ExecRequest::default()
    };
    match client.exec(&request).await {
        Err(ClientError::Remote(error)) => {
            assert_eq!(error.code, ErrorCode::ExecFailed, "{error}");
            assert!(error.message.contains("/no/such/program"), "{error}");
        }
        Err(other) => panic!("expected a remote error, got {other}"),
        Ok(_) => panic!("a missing program cannot start"),
    }
}

/// Found by the soak suite: a writer waiting for the stdin window used to wait forever once
/// the connection died, since no acknowledgement could come any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_waiting_for_the_stdin_window_fails_when_the_connection_dies() {
    let server = exec_server();
    let mut client = Client::connect(&server.addr, &server.client_config())
        .await
        .unwrap();
    // The command never reads its stdin, so the window fills and stays shut.
    let mut request = shell("sleep 2");
    request.stdin = true;
    let RemoteCommand {
        mut output,
        mut input,
    } = client.exec(&request).await.unwrap();
    let unread = vec![b'x'; 64 * 1024 * 1024];
    let writer = input.write_stdin(&unread);
    let reader = async {
        loop {
            if let Err(error) = output.next_event().await {
                return error;
            }
        }
    };
    let killer = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        rustix_kill(server.pid(), "KILL");
    };
    let (written, _, ()) = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::join!(writer, reader, killer)
    })
    .await
    .expect("the writer gives up once the connection is gone");
    assert!(
        written.is_err(),
        "64 MiB cannot have gone into a command that reads nothing"
    );
}
