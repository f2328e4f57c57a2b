//! Classic mode end to end: `sockit serve --classic` on ephemeral ports, the course-style
//! Python clients of `examples/classic/` run against it, and raw sockets sending what no
//! client should (bad lengths, huge headers, garbage, traversal names, clients that vanish),
//! each followed by a good client that must still be served.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::ServerProcess;
use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;
use tempfile::TempDir;

/// Every classic service's `--classic-listen` name.
const CLASSIC: [&str; 7] = [
    "echo",
    "exec",
    "ftp",
    "hmac_echo",
    "greeting",
    "udp_echo",
    "udp_exec",
];
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/classic");

/// A `sockit serve --classic` with every classic service (and the time service) on a port
/// of its own, and its file root.
struct Classic {
    server: ServerProcess,
    root: TempDir,
}

impl Classic {
    /// With exec allowed.
    fn start() -> Classic {
        Classic::start_with(&["--allow-exec"])
    }

    fn start_with(extra: &[&str]) -> Classic {
        let root = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = ["--classic", "--time-listen", "127.0.0.1:0", "--root"]
            .map(String::from)
            .to_vec();
        args.push(root.path().to_str().unwrap().to_owned());
        for key in CLASSIC {
            args.push("--classic-listen".into());
            args.push(format!("{key}=127.0.0.1:0"));
        }
        args.extend(extra.iter().map(|arg| arg.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = ServerProcess::start(&args);
        Classic { server, root }
    }

    /// Where a classic service (by its `--classic-listen` name) or `time` listens.
    fn addr(&self, key: &str) -> SocketAddr {
        let (name, transport) = match key {
            "time" => ("time".to_owned(), "udp"),
            udp if udp.starts_with("udp_") => (log_name(udp), "udp"),
            tcp => (log_name(tcp), "tcp"),
        };
        self.server.service_addr(&name, transport)
    }

    fn port(&self, key: &str) -> String {
        self.addr(key).port().to_string()
    }

    fn connect(&self, key: &str) -> TcpStream {
        let stream = TcpStream::connect(self.addr(key)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        stream
    }

    /// Runs `examples/classic/CLIENT` against service `key` with `stdin` as its input (and
    /// `extra` arguments after host and port), in `cwd`.
    fn python(&self, client: &str, key: &str, extra: &[&str], stdin: &str, cwd: &Path) -> Output {
        let port = self.port(key);
        let mut args = vec!["127.0.0.1", port.as_str()];
        args.extend_from_slice(extra);
        run_python(client, &args, stdin, cwd)
    }

    /// Like [`Classic::python`], asserting it succeeded; its stdout.
    fn python_ok(&self, client: &str, key: &str, extra: &[&str], stdin: &str) -> String {
        let output = self.python(client, key, extra, stdin, self.root.path());
        assert!(
            output.status.success(),
            "{client} failed: {}\nstdout:\n{}\nserver log:\n{}",
            common::stderr(&output),
            common::stdout(&output),
            self.server.log()
        );
        common::stdout(&output)
    }
}

fn log_name(key: &str) -> String {
    format!("classic-{}", key.replace('_', "-"))
}

/// Runs a Python client with a watchdog: killed after a minute, so a hung client fails the
/// test instead of hanging it.
fn run_python(client: &str, args: &[&str], stdin: &str, cwd: &Path) -> Output {
    let mut child = Command::new("python3")
        .arg(Path::new(EXAMPLES).join(client))
        .args(args)
        .current_dir(cwd)
        .env("PYTHONIOENCODING", "utf-8")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is part of the supported machine");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let pid = child.id();
    let (done, finished) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if finished.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    });
    let output = child.wait_with_output().unwrap();
    let _ = done.send(());
    watchdog.join().unwrap();
    output
}

/// The course's header: `struct.pack('i', len)` and the JSON.
fn course_frame(json: &str) -> Vec<u8> {
    let mut frame = (json.len() as i32).to_le_bytes().to_vec();
    frame.extend_from_slice(json.as_bytes());
    frame
}

/// Reads one course-style reply: the header's raw JSON text, and `size_key`'s bytes after it.
fn read_course_reply(stream: &mut TcpStream, size_key: &str) -> (String, serde_json::Value, Vec<u8>) {
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).unwrap();
    let len = i32::from_le_bytes(prefix);
    assert!((1..=65536).contains(&len), "header length {len}");
    let mut json = vec![0; len as usize];
    stream.read_exact(&mut json).unwrap();
    let text = String::from_utf8(json).unwrap();
    let header: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut body = vec![0; header[size_key].as_u64().unwrap() as usize];
    stream.read_exact(&mut body).unwrap();
    (text, header, body)
}

/// Asserts the server closed `stream` (end of file, or a reset because bytes were unread).
fn assert_closed(stream: &mut TcpStream, what: &str) {
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut sink = [0u8; 4096];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("{what}: connection still open ({e})"),
        }
    }
}

/// Waits up to 10 s for `check`.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + common::PATIENCE;
    while !check() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `request` and returns the `count` datagrams that come back (each waited for up to
/// 10 s; UDP on loopback under load may drop one, so the request is sent again once).
fn ask_udp(server: SocketAddr, request: &[u8], count: usize) -> Vec<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    ask_udp_from(&socket, server, request, count).expect("the server answers")
}

fn ask_udp_from(
    socket: &UdpSocket,
    server: SocketAddr,
    request: &[u8],
    count: usize,
) -> Option<Vec<Vec<u8>>> {
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buffer = vec![0; 65536];
    for _ in 0..2 {
        socket.send_to(request, server).unwrap();
        let mut replies = Vec::new();
        while replies.len() < count {
            match socket.recv_from(&mut buffer) {
                Ok((len, from)) if from == server => replies.push(buffer[..len].to_vec()),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        if replies.len() == count {
            return Some(replies);
        }
    }
    None
}

/// Processes whose command line contains `marker`.
fn processes_matching(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(marker) {
                found.push(cmdline);
            }
        }
    }
    found
}

// ---- the course's clients, unchanged in protocol, against classic mode ----

#[test]
fn the_upper_echo_client_gets_its_lines_back_upper_cased() {
    let classic = Classic::start();
    let out = classic.python_ok(
        "upper_echo_client.py",
        "echo",
        &[],
        "hello\n\nstraße 1\nquit\nnot sent\n",
    );
    assert_eq!(out, ">>: HELLO\n>>: >>: STRASSE 1\n>>: ");
}

#[test]
fn the_exec_client_gets_stdout_then_stderr_whole_and_empty_output_as_nothing() {
    let classic = Classic::start();
    let input = "echo out; lllllll_no_such_command; echo more\ntrue\nseq 1 3000\necho after\n";
    let out = classic.python_ok("exec_client.py", "exec", &[], input);
    let numbers: String = (1..=3000).map(|n| format!("{n}\n")).collect();
    let expected_start = ">>: out\nmore\n";
    assert!(out.starts_with(expected_start), "{out}");
    assert!(
        out.contains("lllllll_no_such_command: not found\n"),
        "stderr after stdout: {out}"
    );
    // `true` prints nothing: data_size 0 and an empty line, as the course's client prints it.
    assert!(out.contains("\n\n>>: \n>>: "), "{out}");
    assert!(out.contains(&numbers), "an output over 1024 bytes arrives whole");
    assert!(
        out.ends_with(">>: after\n\n>>: "),
        "the next reply is not mixed up: {out}"
    );
}

#[test]
fn the_ftp_client_puts_several_files_on_one_connection_and_gets_them_back() {
    let classic = Classic::start();
    let local = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|n| (n.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(local.path().join("big.bin"), &big).unwrap();
    std::fs::write(local.path().join("note.txt"), "file one\n").unwrap();
    let downloads = tempfile::tempdir().unwrap();
    let input = format!(
        "put {0}/note.txt\nput {0}/big.bin\nget big.bin\nget missing.txt\nget note.txt\n",
        local.path().display()
    );
    let output = classic.python("ftp_client.py", "ftp", &[], &input, downloads.path());
    let out = common::stdout(&output);
    assert!(output.status.success(), "{}\n{out}", common::stderr(&output));
    assert_eq!(out.matches("upload successful").count(), 2, "{out}");
    assert_eq!(out.matches("download successful").count(), 2, "{out}");
    assert!(
        out.contains("{'cmd': 'get', 'filename': 'missing.txt', 'filesize': 0, 'error': "),
        "{out}"
    );
    assert_eq!(std::fs::read(classic.root.path().join("big.bin")).unwrap(), big);
    assert_eq!(std::fs::read(downloads.path().join("big.bin")).unwrap(), big);
    assert_eq!(
        std::fs::read_to_string(downloads.path().join("note.txt")).unwrap(),
        "file one\n"
    );
    let leftovers: Vec<_> = std::fs::read_dir(classic.root.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("sockit-part"))
        .collect();
    assert!(leftovers.is_empty(), "partial files left: {leftovers:?}");
}

#[test]
fn the_hmac_client_holding_the_secret_is_served_and_others_are_not() {
    let classic = Classic::start();
    let secret_file = classic.server.secret_file.to_str().unwrap().to_owned();
    let out = classic.python_ok(
        "hmac_echo_client.py",
        "hmac_echo",
        &[&secret_file],
        "hi there\n你好\n",
    );
    assert_eq!(out, ">>: HI THERE\n>>: 你好\n>>: ");

    let wrong = classic.root.path().join("wrong.key");
    std::fs::write(&wrong, "linhaifeng bang bang bang1111\n").unwrap();
    let output = classic.python(
        "hmac_echo_client.py",
        "hmac_echo",
        &[wrong.to_str().unwrap()],
        "hi there\n",
        classic.root.path(),
    );
    assert!(!common::stdout(&output).contains("HI THERE"));
    assert!(
        classic
            .server
            .wait_for_log("authentication refused: wrong answer")
    );
}

#[test]
fn the_greeting_client_is_welcomed_and_greeted_by_name() {
    let classic = Classic::start();
    let out = classic.python_ok("greeting_client.py", "greeting", &[], "");
    assert_eq!(out, "Welcome!\nHello, alice!\nHello, bob!\nHello, jack!\n");
    let out = classic.python_ok("greeting_client.py", "greeting", &["李雷"], "");
    assert_eq!(out, "Welcome!\nHello, 李雷!\n");
}

#[test]
fn the_time_client_gets_the_time_in_its_format() {
    let classic = Classic::start();
    let out = classic.python_ok("time_client.py", "time", &[], "%Y\n\n");
    let prompt = "请输入时间格式(例%Y %m %d)>>: ";
    let lines: Vec<&str> = out.split(prompt).collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(
        lines[1].trim().len() == 4 && lines[1].trim().parse::<u32>().is_ok(),
        "{out}"
    );
    assert!(
        chrono::NaiveDateTime::parse_from_str(lines[2].trim(), "%Y-%m-%d %H:%M:%S").is_ok(),
        "{out}"
    );
}

#[test]
fn the_udp_echo_client_gets_each_datagram_back_upper_cased() {
    let classic = Classic::start();
    let out = classic.python_ok("udp_echo_client.py", "udp_echo", &[], "hello udp\n\nagain\n");
    let port = classic.port("udp_echo");
    assert_eq!(
        out,
        format!(">>: HELLO UDP ('127.0.0.1', {port})\n>>: >>: AGAIN ('127.0.0.1', {port})\n>>: ")
    );
}

#[test]
fn the_udp_exec_client_gets_stderr_then_stdout() {
    let classic = Classic::start();
    let out = classic.python_ok(
        "udp_exec_client.py",
        "udp_exec",
        &[],
        "echo out; echo err >&2\npwd\n",
    );
    let home = classic.server.dir.path().display().to_string();
    assert_eq!(out, format!(">>: err\nout\n>>: {home}\n>>: "));
}

// ---- many clients at once ----

#[test]
fn a_client_that_holds_a_connection_does_not_block_the_next() {
    let classic = Classic::start();
    // Each course server serves one client at a time: any of these would stop the next.
    let mut held: Vec<TcpStream> = ["echo", "exec", "ftp", "hmac_echo", "greeting"]
        .iter()
        .map(|key| classic.connect(key))
        .collect();
    held[2].write_all(&[7, 0]).unwrap(); // half a length prefix, then silence
    let mut greeting = [0u8; 8];
    held[4].read_exact(&mut greeting).unwrap();
    assert_eq!(&greeting, b"Welcome!");

    let clients: Vec<_> = (0..8)
        .map(|n| {
            let port = classic.port("echo");
            let cwd = classic.root.path().to_owned();
            std::thread::spawn(move || {
                let output = run_python(
                    "upper_echo_client.py",
                    &["127.0.0.1", &port],
                    &format!("client {n}\n"),
                    &cwd,
                );
                common::stdout(&output)
            })
        })
        .collect();
    for (n, client) in clients.into_iter().enumerate() {
        assert_eq!(client.join().unwrap(), format!(">>: CLIENT {n}\n>>: "));
    }
    assert!(
        classic
            .python_ok("exec_client.py", "exec", &[], "echo ok\n")
            .contains("ok")
    );
    assert!(
        classic
            .python_ok("greeting_client.py", "greeting", &[], "")
            .contains("Hello, jack!")
    );
    let secret = classic.server.secret_file.to_str().unwrap().to_owned();
    assert!(
        classic
            .python_ok("hmac_echo_client.py", "hmac_echo", &[&secret], "x\n")
            .contains('X')
    );
    drop(held);
}

// ---- misbehaving clients; each is followed by a good one ----

#[test]
fn ftp_refuses_bad_lengths_huge_headers_and_garbage_and_goes_on() {
    let classic = Classic::start();
    let huge = format!(
        "{{\"cmd\":\"put\",\"filename\":\"{}\",\"filesize\":1}}",
        "x".repeat(70_000)
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("length -1", (-1i32).to_le_bytes().to_vec()),
        ("length 2^31-1", i32::MAX.to_le_bytes().to_vec()),
        ("length 0", 0i32.to_le_bytes().to_vec()),
        ("a header over 64 KiB", course_frame(&huge)),
        ("garbage", b"\x05\x00\x00\x00\xff\xfe{{{ garbage".to_vec()),
        ("not an object", course_frame("[1, 2, 3]")),
        ("no cmd", course_frame("{\"filename\": \"a\"}")),
        (
            "a negative size",
            course_frame("{\"cmd\": \"put\", \"filename\": \"neg.txt\", \"filesize\": -5}"),
        ),
        (
            "an absurd size",
            course_frame("{\"cmd\": \"put\", \"filename\": \"big.txt\", \"filesize\": 18446744073709551615}"),
        ),
        (
            "a fractional size",
            course_frame("{\"cmd\": \"put\", \"filename\": \"f.txt\", \"filesize\": 1.5}"),
        ),
    ];
    for (what, bytes) in cases {
        let mut stream = classic.connect("ftp");
        // The server may close before reading everything: a failed write is fine too.
        let _ = stream.write_all(&bytes);
        assert_closed(&mut stream, what);
    }
    // A refusal is logged once its connection has ended, which may be after the client saw
    // the close.
    for needle in [
        "header length -1 is not between 1 and 65536",
        "header length 2147483647",
        "header length 0",
        "header length 70",
        "header is not the expected JSON",
        "`filesize` -5 is not a whole number of bytes",
        "`filesize` 1.5 is not a whole number of bytes",
        "needs 18446744073709551615 bytes",
    ] {
        assert!(
            classic.server.wait_for_log(needle),
            "no `{needle}` in the log:\n{}",
            classic.server.log()
        );
    }
    assert_good_ftp(&classic);
}

/// A good put and get on a fresh connection.
fn assert_good_ftp(classic: &Classic) {
    let mut stream = classic.connect("ftp");
    let put = course_frame("{\"cmd\": \"put\", \"filename\": \"good.txt\", \"filesize\": 5}");
    stream.write_all(&[put, b"hello".to_vec()].concat()).unwrap();
    stream
        .write_all(&course_frame("{\"cmd\": \"get\", \"filename\": \"good.txt\"}"))
        .unwrap();
    let (text, _, body) = read_course_reply(&mut stream, "filesize");
    assert_eq!(text, r#"{"cmd": "get", "filename": "good.txt", "filesize": 5}"#);
    assert_eq!(body, b"hello");
}

#[test]
fn ftp_puts_keep_only_base_names_and_refuse_names_still_invalid() {
    let classic = Classic::start();
    let passwd_before = std::fs::read("/etc/passwd").ok();
    for (name, body) in [
        ("../../etc/passwd", "one"),
        ("/etc/passwd", "two"),
        ("a/b/c.txt", "three"),
    ] {
        let mut stream = classic.connect("ftp");
        let header = format!(
            "{{\"cmd\": \"put\", \"filename\": \"{name}\", \"filesize\": {}}}",
            body.len()
        );
        stream
            .write_all(&[course_frame(&header), body.as_bytes().to_vec()].concat())
            .unwrap();
        stream
            .write_all(&course_frame(
                "{\"cmd\": \"get\", \"filename\": \"no-such-file\"}",
            ))
            .unwrap();
        let (text, header, body) = read_course_reply(&mut stream, "filesize");
        assert!(header["error"].is_string() && body.is_empty(), "{text}");
        assert!(text.starts_with(r#"{"cmd": "get", "filename": "no-such-file", "filesize": 0, "error": "#));
    }
    assert_eq!(std::fs::read(classic.root.path().join("passwd")).unwrap(), b"two");
    assert_eq!(
        std::fs::read(classic.root.path().join("c.txt")).unwrap(),
        b"three"
    );
    assert_eq!(std::fs::read("/etc/passwd").ok(), passwd_before);

    for name in ["..", "a/..", "", "dir/", "new\nline", ".x.sockit-part"] {
        let mut stream = classic.connect("ftp");
        let header = serde_json::json!({"cmd": "put", "filename": name, "filesize": 3}).to_string();
        let _ = stream.write_all(&[course_frame(&header), b"abc".to_vec()].concat());
        assert_closed(&mut stream, name);
    }
    eventually("six refusals logged", || {
        classic.server.log().matches("refused put").count() >= 6
    });
    // A get outside the root is an error header, and the connection goes on.
    let mut stream = classic.connect("ftp");
    for name in ["../secret", "/etc/passwd"] {
        let get = serde_json::json!({"cmd": "get", "filename": name}).to_string();
        stream.write_all(&course_frame(&get)).unwrap();
        let (text, header, _) = read_course_reply(&mut stream, "filesize");
        assert_eq!(header["filesize"], 0, "{text}");
        assert!(header["error"].is_string(), "{text}");
    }
    assert_good_ftp(&classic);
}

#[test]
fn ftp_a_client_vanishing_mid_file_leaves_nothing_and_the_old_file_intact() {
    let classic = Classic::start();
    std::fs::write(classic.root.path().join("doc.txt"), "old version").unwrap();
    let mut stream = classic.connect("ftp");
    let header = course_frame("{\"cmd\": \"put\", \"filename\": \"doc.txt\", \"filesize\": 1000000}");
    stream.write_all(&[header, vec![b'n'; 300_000]].concat()).unwrap();
    drop(stream);
    eventually("the vanished upload is logged", || {
        classic.server.log().contains("the client left after")
    });
    assert_eq!(
        std::fs::read_to_string(classic.root.path().join("doc.txt")).unwrap(),
        "old version"
    );
    let names: Vec<_> = std::fs::read_dir(classic.root.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
    // An unknown command is skipped, as by the course's server.
    let mut stream = classic.connect("ftp");
    stream.write_all(&course_frame("{\"cmd\": \"ls\"}")).unwrap();
    stream
        .write_all(&course_frame("{\"cmd\": \"get\", \"filename\": \"doc.txt\"}"))
        .unwrap();
    let (_, _, body) = read_course_reply(&mut stream, "filesize");
    assert_eq!(body, b"old version");
    assert_good_ftp(&classic);
}

#[test]
fn exec_survives_garbage_and_stops_the_command_of_a_client_that_left() {
    let classic = Classic::start();
    let mut stream = classic.connect("exec");
    stream.write_all(b"\xff\xfe\x00garbage").unwrap();
    let (text, _, body) = read_course_reply(&mut stream, "data_size");
    assert!(
        text.starts_with(r#"{"data_size": "#) && text.contains(r#", "msg_length": "#),
        "{text}"
    );
    assert_eq!(
        String::from_utf8_lossy(&body),
        "sockit: the command is not UTF-8 text\n"
    );
    stream.write_all(b"true").unwrap();
    let (text, _, body) = read_course_reply(&mut stream, "data_size");
    assert_eq!(text, r#"{"data_size": 0, "msg_length": 0}"#);
    assert!(body.is_empty());

    let marker = "sleep 987654";
    stream.write_all(marker.as_bytes()).unwrap();
    eventually("the command runs", || !processes_matching(marker).is_empty());
    drop(stream);
    eventually("the command of a client that left is stopped", || {
        processes_matching(marker).is_empty()
    });
    assert!(
        classic
            .server
            .wait_for_log("client left; its command was stopped")
    );
    let out = classic.python_ok("exec_client.py", "exec", &[], "echo still here\n");
    assert_eq!(out, ">>: still here\n\n>>: ");
}

#[test]
fn exec_output_past_the_memory_threshold_comes_back_whole() {
    let classic = Classic::start();
    let mut stream = classic.connect("exec");
    // About 2.7 MB on stdout and 0.6 MB on stderr: both far past the 64 KiB kept in memory.
    stream.write_all(b"seq 1 400000; seq 1 100000 >&2").unwrap();
    let (_, header, body) = read_course_reply(&mut stream, "data_size");
    let mut expected: String = (1..=400_000).map(|n| format!("{n}\n")).collect();
    expected.extend((1..=100_000).map(|n| format!("{n}\n")));
    assert_eq!(header["msg_length"].as_u64(), Some(expected.len() as u64));
    assert!(body == expected.as_bytes(), "the output came back changed");
    stream.write_all(b"echo next").unwrap();
    let (_, _, body) = read_course_reply(&mut stream, "data_size");
    assert_eq!(body, b"next\n");
}

/// Temporary files the process `pid` holds open that no longer have a name.
fn anonymous_temp_files(pid: u32) -> usize {
    let temp = std::env::temp_dir();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|target| target.starts_with(&temp) && target.to_string_lossy().ends_with(" (deleted)"))
        .count()
}

#[test]
fn clients_that_never_read_their_output_cost_disk_not_memory() {
    const CLIENTS: usize = 8;
    let classic = Classic::start();
    let pid = classic.server.pid();
    let mut warm = classic.connect("exec");
    warm.write_all(b"echo warm").unwrap();
    read_course_reply(&mut warm, "data_size");
    let before = common::resident_mib(pid);
    // 8 MB each: 64 MB in the server's memory if replies were gathered there.
    let idle: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| {
            let mut stream = classic.connect("exec");
            stream.write_all(b"head -c 8000000 /dev/zero").unwrap();
            stream
        })
        .collect();
    eventually("every reply waits in a temporary file", || {
        anonymous_temp_files(pid) >= CLIENTS
    });
    let grown = common::resident_mib(pid).saturating_sub(before);
    assert!(grown < 32, "server memory grew by {grown} MiB");
    drop(idle);
    eventually("the files are gone with their clients", || {
        anonymous_temp_files(pid) == 0
    });
}

#[test]
fn udp_services_do_not_answer_the_servers_own_ports() {
    let classic = Classic::start();
    let (time, echo) = (classic.addr("time"), classic.addr("udp_echo"));
    // Same ports as the server's own services, on other addresses of this machine: what a
    // datagram forged to set the time service and the echo talking to each other looks like.
    let as_echo = UdpSocket::bind(("127.0.0.2", echo.port())).unwrap();
    let as_time = UdpSocket::bind(("127.0.0.3", time.port())).unwrap();
    as_echo.send_to(b"%Y", time).unwrap();
    as_time.send_to(b"hello", echo).unwrap();
    // Each service answers in order, so once a later request is answered, the forged one
    // would have been too.
    assert_eq!(ask_udp(echo, b"next", 1), [b"NEXT".to_vec()]);
    assert_eq!(ask_udp(time, b"%%%Y", 1)[0].len(), 5);
    for socket in [&as_echo, &as_time] {
        socket.set_nonblocking(true).unwrap();
        let mut buffer = [0u8; 64];
        let unanswered = socket
            .recv_from(&mut buffer)
            .map(|(len, _)| buffer[..len].to_vec());
        assert!(unanswered.is_err(), "answered: {unanswered:?}");
    }
}

#[test]
fn udp_replies_are_no_larger_than_their_requests_allow() {
    let classic = Classic::start();
    let (time, echo) = (classic.addr("time"), classic.addr("udp_echo"));
    // Characters whose upper case is two or three times as long, and ones that keep their size.
    for text in ["ΐ", "ȿ", "ﬗ", "ß", "ﬃ", "a"] {
        let request = text.repeat(20_000 / text.len());
        let reply = &ask_udp(echo, request.as_bytes(), 1)[0];
        assert!(
            reply.len() <= request.len(),
            "{text}: {} bytes for {}",
            reply.len(),
            request.len()
        );
    }
    for format in ["", "%c", "%c%c", "%A %B %d %c", "%c %c %c %c"] {
        let reply = &ask_udp(time, format.as_bytes(), 1)[0];
        assert!(
            reply.len() <= format.len() + 64,
            "{format:?}: {} bytes",
            reply.len()
        );
    }
    // A format that converts nothing would be the request itself: refused. Text with no `%`
    // at all is no format: not answered (the next request's answer comes first).
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.send_to(b"just text", time).unwrap();
    let refused = ask_udp_from(&socket, time, b"100%%", 1).unwrap();
    assert_eq!(refused, [b"error: format has no strftime conversion".to_vec()]);
}

#[test]
fn echo_and_greeting_take_binary_garbage_and_clients_that_vanish() {
    let classic = Classic::start();
    let mut stream = classic.connect("echo");
    stream.write_all(b"ab\xff\x00cd").unwrap();
    let mut reply = [0u8; 6];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"AB\xff\x00CD");
    stream.write_all(b"half a mess").unwrap();
    stream.shutdown(Shutdown::Both).unwrap();

    let mut stream = classic.connect("greeting");
    let mut welcome = [0u8; 8];
    stream.read_exact(&mut welcome).unwrap();
    stream.write_all(b"\xff\xfe\r\n").unwrap();
    let mut reply = [0u8; 12];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"Hello, \xff\xfe!\r\n");
    stream.write_all(b"exit").unwrap();
    assert_closed(&mut stream, "greeting after exit");

    let out = classic.python_ok("upper_echo_client.py", "echo", &[], "fine\n");
    assert_eq!(out, ">>: FINE\n>>: ");
    let out = classic.python_ok("greeting_client.py", "greeting", &["ok"], "");
    assert_eq!(out, "Welcome!\nHello, ok!\n");
}

#[test]
fn hmac_echo_closes_on_a_wrong_short_or_missing_answer() {
    // How each failure closes, one right after another: the back-off a wrong answer earns
    // (tests/hostile_auth.rs) would refuse the next ones at once, so it is off here.
    let classic = Classic::start_with(&["--handshake-timeout", "1s", "--auth-backoff", "0s"]);
    // The course's illegal client: no answer at all, just data.
    let mut stream = classic.connect("hmac_echo");
    let mut challenge = [0u8; 32];
    stream.read_exact(&mut challenge).unwrap();
    stream.write_all(b"hello, let me in").unwrap(); // 16 bytes that are not the digest
    assert_closed(&mut stream, "a wrong answer");
    // A short answer, then silence: closed at the handshake timeout.
    let mut stream = classic.connect("hmac_echo");
    stream.read_exact(&mut challenge).unwrap();
    stream.write_all(b"short").unwrap();
    assert_closed(&mut stream, "a short answer");
    // Nothing at all.
    let mut stream = classic.connect("hmac_echo");
    assert_closed(&mut stream, "no answer");

    // A client computing the course's HMAC-MD5 with the secret's text is served.
    let mut stream = classic.connect("hmac_echo");
    stream.read_exact(&mut challenge).unwrap();
    let key = std::fs::read_to_string(&classic.server.secret_file).unwrap();
    let mut mac = Hmac::<Md5>::new_from_slice(key.trim().as_bytes()).unwrap();
    mac.update(&challenge);
    stream.write_all(&mac.finalize().into_bytes()).unwrap();
    stream.write_all(b"authenticated").unwrap();
    let mut reply = [0u8; 13];
    stream.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"AUTHENTICATED");

    // The wrong answer is a warning; a stranger who connects and leaves, or says too little,
    // is not (connecting and closing in a loop must not flood the log). The log is in order,
    // so once the authentication is in it, every refusal before it is too.
    assert!(
        classic
            .server
            .wait_for_log("authentication refused: wrong answer")
    );
    assert!(classic.server.wait_for_log("client authenticated"));
    let log = classic.server.log();
    assert!(!log.contains("no answer within"), "{log}");
}

#[test]
fn udp_echo_and_exec_take_empty_huge_and_garbage_datagrams() {
    let classic = Classic::start();
    let echo = classic.addr("udp_echo");
    assert_eq!(ask_udp(echo, b"", 1), vec![Vec::<u8>::new()]);
    let big = vec![b'q'; 65_507];
    assert_eq!(ask_udp(echo, &big, 1), vec![vec![b'Q'; 65_507]]);
    assert_eq!(ask_udp(echo, b"\xff\xfeok", 1), vec![b"\xff\xfeOK".to_vec()]);

    let exec = classic.addr("udp_exec");
    let replies = ask_udp(exec, b"\xff\xfe", 2);
    assert_eq!(replies[0], b"sockit: the command is not UTF-8 text\n");
    assert!(replies[1].is_empty());
    let replies = ask_udp(exec, b"head -c 100000 /dev/zero | tr '\\0' a", 2);
    assert_eq!(replies[1], vec![b'a'; 65_507], "stdout cut to one datagram");
    assert!(String::from_utf8_lossy(&replies[0]).contains("its output cut"));
    let replies = ask_udp(exec, b"echo fine", 2);
    assert_eq!(replies, vec![Vec::new(), b"fine\n".to_vec()]);
}

#[test]
fn udp_exec_runs_commands_concurrently() {
    let classic = Classic::start();
    let exec = classic.addr("udp_exec");
    let slow = UdpSocket::bind("127.0.0.1:0").unwrap();
    slow.send_to(b"sleep 9.75", exec).unwrap();
    eventually("the slow command runs", || {
        !processes_matching("sleep 9.75").is_empty()
    });
    // The course's server would not read this until the sleep ended.
    assert_eq!(ask_udp(exec, b"echo quick", 2)[1], b"quick\n");
}

#[test]
fn a_silent_connection_is_closed_after_the_idle_timeout() {
    let classic = Classic::start_with(&["--idle-timeout", "1s"]);
    let mut stream = classic.connect("echo");
    stream.write_all(b"one").unwrap();
    let mut reply = [0u8; 3];
    stream.read_exact(&mut reply).unwrap();
    assert_closed(&mut stream, "an idle echo connection");
    let mut stream = classic.connect("ftp");
    stream.write_all(&[3, 0]).unwrap(); // half a prefix, then silence
    assert_closed(&mut stream, "an idle FTP connection");
    let out = classic.python_ok("upper_echo_client.py", "echo", &[], "next\n");
    assert_eq!(out, ">>: NEXT\n>>: ");
}

// ---- configuration, warnings, shutdown ----

#[test]
fn every_open_service_is_warned_about_and_exec_needs_allow_exec() {
    let classic = Classic::start_with(&[]);
    assert!(
        classic.server.wait_for_log("classic-udp-echo on udp"),
        "the last one bound"
    );
    let log = classic.server.log();
    for name in [
        "classic-echo",
        "classic-ftp",
        "classic-greeting",
        "classic-udp-echo",
        "time",
    ] {
        assert!(
            log.lines().any(|line| line.contains("WARN")
                && line.contains(&format!("{name} on "))
                && line.contains("no authentication")),
            "no warning for {name}:\n{log}"
        );
    }
    assert!(
        !log.contains("classic-hmac-echo on tcp"),
        "9999 authenticates:\n{log}"
    );
    for name in ["classic-exec", "classic-udp-exec"] {
        assert!(log.contains(&format!("{name} (on ")), "{log}");
        assert!(!log.contains(&format!("{name} service on")), "{log}");
    }
    assert!(
        log.contains("it runs commands, so it needs --allow-exec as well"),
        "{log}"
    );
    let out = classic.python_ok("upper_echo_client.py", "echo", &[], "up\n");
    assert_eq!(out, ">>: UP\n>>: ");

    let classic = Classic::start();
    assert!(classic.server.wait_for_log("classic-udp-exec on udp"));
    let log = classic.server.log();
    assert!(
        log.contains("classic-exec on tcp") && log.contains("runs any command it is sent"),
        "{log}"
    );
}

#[test]
fn a_config_file_moves_each_service_or_turns_it_off() {
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("sockit.toml");
    std::fs::write(
        &config,
        "classic = true\ntime_listen = \"off\"\n[classic_listen]\necho = \"127.0.0.1:0\"\nexec = \"off\"\n\
         ftp = \"off\"\nhmac_echo = \"off\"\ngreeting = \"[::1]:0\"\nudp_echo = \"off\"\nudp_exec = \"off\"\n",
    )
    .unwrap();
    let server = ServerProcess::start(&[
        "--config",
        config.to_str().unwrap(),
        "--root",
        root.path().to_str().unwrap(),
    ]);
    let greeting = server.service_addr("classic-greeting", "tcp");
    assert!(greeting.is_ipv6());
    let echo = server.service_addr("classic-echo", "tcp");
    assert_eq!(
        server.services().len(),
        2,
        "only echo and greeting: {:?}",
        server.services()
    );
    for (name, addr) in [("classic-greeting", greeting), ("classic-echo", echo)] {
        assert!(server.wait_for_log(&format!("{name} service on tcp {addr}")));
    }
    let log = server.log();
    assert_eq!(
        log.matches(" service on ").count(),
        2,
        "only echo and greeting:\n{log}"
    );
    let mut stream = TcpStream::connect(greeting).unwrap();
    stream.write_all(b"").unwrap();
    let mut welcome = [0u8; 8];
    stream.read_exact(&mut welcome).unwrap();
    assert_eq!(&welcome, b"Welcome!");
    let out = run_python(
        "upper_echo_client.py",
        &["127.0.0.1", &echo.port().to_string()],
        "moved\n",
        root.path(),
    );
    assert_eq!(common::stdout(&out), ">>: MOVED\n>>: ");
}

#[test]
fn udp_exec_refuses_other_machines_unless_allowed() {
    let Some(local_ip) = non_loopback_ip() else {
        eprintln!("SKIPPED: this machine has no address but loopback");
        return;
    };
    for any_source in [false, true] {
        let mut extra = vec!["--allow-exec", "--classic-listen", "udp_exec=0.0.0.0:0"];
        if any_source {
            extra.push("--classic-exec-any-source");
        }
        let classic = Classic::start_with(&extra);
        let port = classic.addr("udp_exec").port();
        let server = SocketAddr::new(local_ip, port);
        let socket = UdpSocket::bind((local_ip, 0)).unwrap();
        let replies = ask_udp_from(&socket, server, b"echo remote", 2);
        if any_source {
            assert_eq!(replies.unwrap()[1], b"remote\n");
        } else {
            assert!(replies.is_none(), "answered {local_ip}");
            assert!(
                classic
                    .server
                    .wait_for_log("refused a command from beyond this machine")
            );
            let loopback = SocketAddr::from(([127, 0, 0, 1], port));
            assert_eq!(ask_udp(loopback, b"echo local", 2)[1], b"local\n");
        }
    }
}

/// This machine's address on its default route, if it has one.
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    let probe = UdpSocket::bind("0.0.0.0:0").ok()?;
    probe.connect("192.0.2.1:9").ok()?; // no packet is sent
    let ip = probe.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[test]
fn shutdown_does_not_wait_for_idle_classic_connections() {
    let classic = Classic::start_with(&["--shutdown-timeout", "60s"]);
    let mut echo = classic.connect("echo");
    echo.write_all(b"x").unwrap();
    let mut reply = [0u8; 1];
    echo.read_exact(&mut reply).unwrap();
    let mut greeting = classic.connect("greeting");
    greeting.read_exact(&mut [0u8; 8]).unwrap();
    let _ftp = classic.connect("ftp");
    // terminate() allows 20 s: far less than the 60 s an idle connection could hold it.
    let status = classic.server.terminate();
    assert!(status.success(), "{status:?}");
    assert_closed(&mut echo, "echo at shutdown");
}

#[test]
fn unknown_classic_services_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let output = common::run_cli(dir.path(), &["serve", "--classic-listen", "ehco=127.0.0.1:0"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(common::stderr(&output).contains("no classic service `ehco`"));
}
