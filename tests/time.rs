//! The time services end to end: the course's UDP time service over raw sockets and through
//! `sockit time`, the native `time` command, RFC 867 daytime and RFC 868 time over TCP and
//! UDP, and the SNTP server, checked with clients nobody here wrote (rdate, Python's ntplib).

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{Local, NaiveDateTime};
use common::{InProcessServer, stderr, stdout};
use sockit::services::time::{ERROR_PREFIX, MAX_ERROR_REPLY_LEN, MAX_FORMAT_LEN};
use sockit::wire::ErrorCode;
use sockit::{Client, ClientError};

const SECONDS_1900_TO_1970: i64 = 2_208_988_800;

fn time_server() -> (InProcessServer, SocketAddr) {
    let server = InProcessServer::start("time_listen = \"127.0.0.1:0\"");
    let addr = server.service_addr("time", "udp");
    (server, addr)
}

fn clock_server() -> InProcessServer {
    InProcessServer::start(
        "daytime_listen = \"127.0.0.1:0\"\nrfc868_listen = \"127.0.0.1:0\"\nsntp_listen = \"127.0.0.1:0\"",
    )
}

/// Sends `request` from `local_ip` and returns the reply, sending again up to 3 times (UDP
/// may lose datagrams, even on loopback under load).
fn ask_from(local_ip: &str, server: SocketAddr, request: &[u8]) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind((local_ip, 0)).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buffer = [0; 2048];
    for _ in 0..3 {
        socket.send_to(request, server).unwrap();
        if let Ok((len, from)) = socket.recv_from(&mut buffer) {
            assert_eq!(from, server);
            return Some(buffer[..len].to_vec());
        }
    }
    None
}

fn ask(server: SocketAddr, request: &[u8]) -> Vec<u8> {
    ask_from("127.0.0.1", server, request).expect("the server answers")
}

fn ask_text(server: SocketAddr, request: &[u8]) -> String {
    String::from_utf8(ask(server, request)).expect("replies are UTF-8")
}

/// `text` parsed with `format` lies within a minute of this machine's local time.
fn assert_near_local_now(text: &str, format: &str) {
    let parsed = NaiveDateTime::parse_from_str(text, format)
        .unwrap_or_else(|e| panic!("`{text}` does not match `{format}`: {e}"));
    let drift = (Local::now().naive_local() - parsed).num_seconds().abs();
    assert!(drift < 60, "`{text}` is {drift} s from the local time");
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

#[test]
fn an_empty_datagram_gets_the_course_default_and_a_format_gets_that_format() {
    let (_server, addr) = time_server();
    assert_near_local_now(&ask_text(addr, b""), "%Y-%m-%d %H:%M:%S");
    let before = Local::now().format("%Y %m %d").to_string();
    let custom = ask_text(addr, b"%Y %m %d");
    let after = Local::now().format("%Y %m %d").to_string();
    assert!(custom == before || custom == after, "{custom}");
    let text = ask_text(addr, "时间 %H:%M:%S, 100%%".as_bytes());
    let clock = text.strip_prefix("时间 ").and_then(|t| t.strip_suffix(", 100%"));
    assert_eq!(clock.map(str::len), Some(8), "{text}");
}

#[test]
fn bad_formats_get_short_error_replies_and_the_server_keeps_answering() {
    let (server, addr) = time_server();
    let oversize = "%Y".repeat(MAX_FORMAT_LEN / 2 + 1);
    let overflowing = "%c".repeat(MAX_FORMAT_LEN / 2);
    let huge = [b'%'; 60_000];
    let cases: [(&[u8], &str); 8] = [
        (b"%Q", "invalid strftime format"),
        (b"%", "invalid strftime format"),
        (b"%999999999Y", "invalid strftime format"),
        (oversize.as_bytes(), "format longer than 256 bytes"),
        (&huge, "format longer than 256 bytes"),
        (overflowing.as_bytes(), "time text longer than 1024 bytes"),
        (b"\xff\xfe%Y", "format is not UTF-8"),
        (b"error: %Y", "time text would begin with `error: `"),
    ];
    for (request, message) in cases {
        let reply = ask_text(addr, request);
        assert_eq!(reply, format!("{ERROR_PREFIX}{message}"));
        assert!(reply.len() <= MAX_ERROR_REPLY_LEN);
        let year = ask_text(addr, b"%Y");
        assert!(
            year.len() == 4 && year.parse::<u32>().is_ok(),
            "after {message}: {year}"
        );
    }
    server.assert_no_panics();
}

#[test]
fn a_flood_from_one_source_is_cut_to_the_rate_limit_while_another_source_is_answered() {
    let (_server, addr) = time_server();
    let flood = UdpSocket::bind("127.0.0.1:0").unwrap();
    flood.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let sent = 200;
    let started = Instant::now();
    for _ in 0..sent {
        flood.send_to(b"%Y", addr).unwrap();
    }
    let mut answered = 0;
    let mut buffer = [0; 64];
    while answered < sent && flood.recv(&mut buffer).is_ok() {
        answered += 1;
    }
    // The server cannot have spent more tokens than 40 plus 20 a second since the flood began.
    let elapsed = started.elapsed().as_secs_f64();
    let allowed = 40 + (20.0 * elapsed).ceil() as usize;
    assert!(answered >= 1, "the burst is answered");
    assert!(answered <= allowed, "{answered} replies in {elapsed:.2}s");
    assert!(answered < sent, "{answered} of {sent} answered");
    let other = ask_from("127.0.0.2", addr, b"%Y").expect("another source is still answered");
    assert_eq!(other.len(), 4);
    // The flooding source itself is answered again once its bucket refills.
    assert!(ask_from("127.0.0.1", addr, b"%Y").is_some());
}

#[tokio::test]
async fn the_native_time_command_answers_through_the_client_library() {
    let server = InProcessServer::start("");
    let mut client = Client::connect(&server.addr, &server.client_config())
        .await
        .unwrap();
    let reply = client.time(None).await.unwrap();
    assert_near_local_now(&reply.time, "%Y-%m-%d %H:%M:%S");
    assert!((reply.unix_ms / 1000 - unix_now()).abs() < 60, "{reply:?}");
    let seconds = client.time(Some("%s")).await.unwrap();
    assert!((seconds.time.parse::<i64>().unwrap() - unix_now()).abs() < 60);
    match client.time(Some("%Q")).await {
        Err(ClientError::Remote(error)) => {
            assert_eq!(error.code, ErrorCode::BadRequest);
            assert!(error.message.contains("invalid strftime format"), "{error}");
        }
        other => panic!("expected bad_request, got {other:?}"),
    }
    let oversize = "x".repeat(MAX_FORMAT_LEN + 1);
    assert!(matches!(
        client.time(Some(&oversize)).await,
        Err(ClientError::Remote(_))
    ));
    let year = client.time(Some("%Y")).await.unwrap().time;
    assert_eq!(year.len(), 4, "the session goes on after errors");
}

#[test]
fn sockit_time_prints_the_reply_and_exits_255_when_refused_or_unanswered() {
    let (server, addr) = time_server();
    let addr = addr.to_string();
    let output = server.cli(&["time", &addr]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_near_local_now(stdout(&output).trim_end(), "%Y-%m-%d %H:%M:%S");
    let output = server.cli(&["time", &addr, "%d/%m/%Y %H.%M.%S"]);
    assert_near_local_now(stdout(&output).trim_end(), "%d/%m/%Y %H.%M.%S");
    let output = server.cli(&["time", &addr, "%Q"]);
    assert_eq!(output.status.code(), Some(255));
    assert_eq!(stderr(&output), "sockit: server error: invalid strftime format\n");
    let output = server.cli(&["time", &addr, "100%%"]);
    assert_eq!(
        stderr(&output),
        "sockit: server error: format has no strftime conversion\n"
    );
    // Text with no `%` is refused before it is sent: the service would not answer it.
    let output = server.cli(&["time", &addr, "hello", "--retries", "0"]);
    assert_eq!(output.status.code(), Some(255));
    assert!(
        stderr(&output).contains("not a strftime format"),
        "{}",
        stderr(&output)
    );

    let native = server.cli(&["time", "--native", &server.addr, "%Y"]);
    assert!(native.status.success(), "{}", stderr(&native));
    assert_eq!(stdout(&native).trim_end().len(), 4);
    let native = server.cli(&["time", "--native", &server.addr, "just text"]);
    assert!(
        stderr(&native).contains("format has no strftime conversion"),
        "{}",
        stderr(&native)
    );

    let closed = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let output = server.cli(&["time", &closed, "--timeout", "300ms", "--retries", "1"]);
    assert_eq!(output.status.code(), Some(255));
    let message = stderr(&output);
    assert!(
        message.contains(&format!("no answer from {closed} after 2 tries")),
        "{message}"
    );
    assert_eq!(message.lines().count(), 1, "{message}");

    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let output = server.cli(&["time", &silent_addr, "--timeout", "200ms", "--retries", "2"]);
    assert_eq!(output.status.code(), Some(255));
    assert!(
        stderr(&output).contains(&format!(
            "no answer from {silent_addr} after 3 tries (waited 200ms each)"
        )),
        "{}",
        stderr(&output)
    );
    let mut buffer = [0; 16];
    silent.set_nonblocking(true).unwrap();
    let requests = std::iter::from_fn(|| silent.recv(&mut buffer).ok()).count();
    assert_eq!(requests, 3, "one request per try");
}

#[test]
fn daytime_and_rfc868_answer_over_tcp_and_udp_and_the_server_stops_cleanly() {
    let server = clock_server();
    for transport in ["tcp", "udp"] {
        let daytime = match transport {
            "tcp" => read_tcp(server.service_addr("daytime", "tcp")),
            _ => ask(server.service_addr("daytime", "udp"), b""),
        };
        let daytime = String::from_utf8(daytime).unwrap();
        let line = daytime.strip_suffix("\r\n").expect("a CRLF-terminated line");
        assert_near_local_now(line, "%a %b %e %H:%M:%S %Y");

        let time = match transport {
            "tcp" => read_tcp(server.service_addr("rfc868", "tcp")),
            _ => ask(server.service_addr("rfc868", "udp"), b"any datagram"),
        };
        let since_1900 = u32::from_be_bytes(time.try_into().expect("exactly four bytes"));
        let unix = i64::from(since_1900) - SECONDS_1900_TO_1970;
        assert!((unix - unix_now()).abs() < 60, "{transport}: {unix}");
    }
    assert_eq!(
        server.service_addr("daytime", "tcp").port(),
        server.service_addr("daytime", "udp").port(),
        "one port for both transports"
    );
    server.stop();
}

fn read_tcp(addr: SocketAddr) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut bytes = Vec::new();
    stream
        .read_to_end(&mut bytes)
        .expect("the server sends and closes");
    bytes
}

#[test]
fn sntp_answers_client_requests_and_ignores_other_packets() {
    let server = clock_server();
    let addr = server.service_addr("sntp", "udp");
    let mut request = [0u8; 48];
    request[0] = (3 << 3) | 3; // version 3, client
    request[40..48].copy_from_slice(b"ORIGINAL");
    let reply = ask(addr, &request);
    assert_eq!(reply.len(), 48);
    assert_eq!(reply[0], (3 << 3) | 4, "version copied, server mode");
    assert_eq!(reply[1], 10);
    assert_eq!(&reply[12..16], b"LOCL");
    assert_eq!(&reply[24..32], b"ORIGINAL");
    let transmit = u32::from_be_bytes(reply[40..44].try_into().unwrap());
    assert!((i64::from(transmit) - SECONDS_1900_TO_1970 - unix_now()).abs() < 60);

    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut server_packet = request;
    server_packet[0] = (3 << 3) | 4;
    for packet in [&server_packet[..], &request[..47], b""] {
        socket.send_to(packet, addr).unwrap();
        assert!(socket.recv(&mut [0; 64]).is_err(), "no reply to {packet:?}");
    }
    assert_eq!(ask(addr, &request).len(), 48, "still serving");
}

#[test]
fn rdate_reads_rfc868_over_tcp_and_udp_and_sntp() {
    let Some(rdate) = rdate() else {
        return;
    };
    let server = clock_server();
    let rfc868 = server.service_addr("rfc868", "tcp").port().to_string();
    let sntp = server.service_addr("sntp", "udp").port().to_string();
    let year = Local::now().format("%Y").to_string();
    // -p: print the remote time, never set the clock.
    for args in [
        vec!["-p", "-o", &rfc868],
        vec!["-p", "-u", "-o", &rfc868],
        vec!["-p", "-n", "-o", &sntp],
    ] {
        let output = Command::new(&rdate)
            .args(&args)
            .arg("127.0.0.1")
            .output()
            .unwrap();
        assert!(output.status.success(), "rdate {args:?}: {}", stderr(&output));
        assert!(
            stdout(&output).contains(&year),
            "rdate {args:?}: {}",
            stdout(&output)
        );
    }
}

#[test]
fn ntplib_queries_the_sntp_server() {
    if !ntplib() {
        return;
    }
    let server = clock_server();
    let port = server.service_addr("sntp", "udp").port().to_string();
    let script = r#"
import sys, time, ntplib
client = ntplib.NTPClient()
for attempt in range(3):
    try:
        reply = client.request('127.0.0.1', port=int(sys.argv[1]), version=3, timeout=2)
        break
    except ntplib.NTPException:
        if attempt == 2:
            raise
print(reply.mode, reply.version, reply.stratum, reply.ref_id.to_bytes(4, 'big').decode(),
      abs(reply.offset) < 5, abs(reply.tx_time - time.time()) < 60)
"#;
    let output = Command::new("python3")
        .args(["-c", script, &port])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "4 3 10 LOCL True True\n");
}

#[test]
fn a_taken_time_port_is_a_clear_error() {
    let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let output = common::run_cli(
        dir.path(),
        &["serve", "--listen", "127.0.0.1:0", "--time-listen", &addr],
    );
    assert_eq!(output.status.code(), Some(255));
    assert_eq!(
        stderr(&output).lines().last().unwrap(),
        format!(
            "sockit: time service: cannot listen on udp {addr}: address in use (use --time-listen ADDR or --time-listen off)"
        )
    );
}

/// rdate's path, installing it once per test run if it is missing.
fn rdate() -> Option<PathBuf> {
    static RDATE: OnceLock<Option<PathBuf>> = OnceLock::new();
    RDATE
        .get_or_init(install_rdate)
        .clone()
        .or_else(|| skipped("rdate"))
}

/// Whether Python's ntplib can be imported, installing it once per test run if it is missing.
fn ntplib() -> bool {
    static NTPLIB: OnceLock<bool> = OnceLock::new();
    *NTPLIB.get_or_init(install_ntplib) || skipped::<()>("ntplib").is_some()
}

fn skipped<T>(name: &str) -> Option<T> {
    eprintln!(
        "\n!!! SKIPPED: {name} is missing and could not be installed; this test proves nothing here !!!\n"
    );
    None
}

fn install_rdate() -> Option<PathBuf> {
    let find = || {
        let path = std::env::var("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .map(|dir| dir.join("rdate"))
            .find(|candidate| candidate.is_file())
    };
    if let Some(found) = find() {
        return Some(found);
    }
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .is_ok_and(|output| output.status.success())
    };
    if !apt(&["install", "-y", "-qq", "rdate"]) {
        apt(&["update", "-qq"]);
        apt(&["install", "-y", "-qq", "rdate"]);
    }
    find()
}

fn install_ntplib() -> bool {
    let importable = || {
        Command::new("python3")
            .args(["-c", "import ntplib"])
            .output()
            .is_ok_and(|output| output.status.success())
    };
    if !importable() {
        let _ = Command::new("python3")
            .args(["-m", "pip", "install", "-q", "ntplib"])
            .output();
    }
    importable()
}
