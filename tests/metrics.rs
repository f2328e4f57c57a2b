//! `sockit serve --metrics`: real traffic from the real client moves the counters it should, by
//! the amounts it should, and the endpoint shrugs off bad requests.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use common::{ServerProcess, metrics_addr, stderr, stdout};
use sockit::Secret;

/// Sends `request` as is and returns the whole response (the server closes after answering).
fn http(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    String::from_utf8(response).unwrap()
}

/// A parsed scrape: each sample line as `name{labels}` and its value.
struct Scrape(Vec<(String, f64)>);

impl Scrape {
    fn take(addr: SocketAddr) -> Scrape {
        let response = http(addr, b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n");
        let (head, body) = response.split_once("\r\n\r\n").expect("a complete response");
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
        let samples = body
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("`series value`");
                (series.to_owned(), value.parse().expect("a number"))
            })
            .collect();
        Scrape(samples)
    }

    /// The value of one series (0 for a series not yet created).
    fn get(&self, series: &str) -> f64 {
        self.0
            .iter()
            .find(|(name, _)| name == series)
            .map_or(0.0, |(_, value)| *value)
    }
}

/// How much each series grew between two scrapes.
fn grew(before: &Scrape, after: &Scrape, series: &str) -> f64 {
    after.get(series) - before.get(series)
}

/// Scrapes until `series` reads `value` (gauges settle once the server has seen clients go).
fn settles_at(addr: SocketAddr, series: &str, value: f64) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scrape = Scrape::take(addr);
        if scrape.get(series) == value || Instant::now() > deadline {
            assert_eq!(scrape.get(series), value, "{series}");
            return scrape;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn traffic_moves_the_counters_by_the_right_amounts() {
    let server = ServerProcess::start(&[
        "--metrics",
        "127.0.0.1:0",
        "--allow-exec",
        "--time-listen",
        "127.0.0.1:0",
    ]);
    let metrics = metrics_addr(&server);
    let addr = server.addr.as_str();
    let before = Scrape::take(metrics);
    assert_eq!(before.get("sockit_connections_limit"), 16_384.0);

    let output = server.cli(&["echo", addr, "hello"]);
    assert_eq!(stdout(&output), "HELLO\n", "{}", stderr(&output));

    assert!(server.cli(&["exec", addr, "true"]).status.success());
    assert_eq!(server.cli(&["exec", addr, "exit 3"]).status.code(), Some(3));

    let data: Vec<u8> = (0..300_000u32).map(|n| (n % 251) as u8).collect();
    let local = server.dir.path().join("blob");
    std::fs::write(&local, &data).unwrap();
    let output = server.cli(&["put", addr, local.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let back = server.dir.path().join("back");
    std::fs::create_dir(&back).unwrap();
    let output = server.cli(&["get", addr, "blob", "-o", back.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(std::fs::read(back.join("blob")).unwrap(), data);

    let output = server.cli(&["chat", addr, "--name", "bot", "--send", "deploy done"]);
    assert!(output.status.success(), "{}", stderr(&output));

    // Last: a wrong secret puts this address under back-off, refusing its next attempts.
    let wrong = server.dir.path().join("wrong-secret");
    Secret::create(&wrong, false).unwrap();
    let output = common::run_cli(
        server.dir.path(),
        &["echo", "--secret-file", wrong.to_str().unwrap(), addr, "x"],
    );
    assert!(!output.status.success());

    let time = server.service_addr("time", "udp");
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    socket.send_to(b"%Y", time).unwrap();
    let mut reply = [0u8; 512];
    assert!(socket.recv(&mut reply).is_ok());

    settles_at(metrics, "sockit_chat_members_online", 0.0);
    settles_at(metrics, "sockit_exec_processes_running", 0.0);
    let after = settles_at(metrics, "sockit_connections_open", 0.0);
    let moved = |series: &str| grew(&before, &after, series);

    // echo, wrong secret, 2 exec, put, get, chat: seven native connections.
    assert_eq!(moved("sockit_connections_accepted_total"), 7.0);
    assert_eq!(moved("sockit_handshakes_total{outcome=\"ok\"}"), 6.0);
    assert_eq!(moved("sockit_handshakes_total{outcome=\"auth_failed\"}"), 1.0);
    assert_eq!(moved("sockit_errors_sent_total{code=\"auth_failed\"}"), 1.0);
    assert_eq!(
        moved("sockit_requests_total{service=\"echo\",command=\"echo\"}"),
        1.0
    );
    assert_eq!(
        moved("sockit_requests_total{service=\"exec\",command=\"exec\"}"),
        2.0
    );
    assert_eq!(moved("sockit_exec_commands_total{outcome=\"success\"}"), 1.0);
    assert_eq!(moved("sockit_exec_commands_total{outcome=\"failure\"}"), 1.0);
    let size = data.len() as f64;
    assert_eq!(moved("sockit_transfer_bytes_total{direction=\"upload\"}"), size);
    assert_eq!(moved("sockit_transfer_bytes_total{direction=\"download\"}"), size);
    for direction in ["upload", "download"] {
        let series = format!("sockit_transfers_completed_total{{direction=\"{direction}\"}}");
        assert_eq!(moved(&series), 1.0, "{series}");
    }
    // The file crossed the sockets both ways, with encryption and framing on top.
    assert!(moved("sockit_socket_bytes_total{direction=\"in\"}") > size);
    assert!(moved("sockit_socket_bytes_total{direction=\"out\"}") > size);
    assert_eq!(moved("sockit_chat_messages_total{kind=\"room\"}"), 1.0);
    assert_eq!(
        moved("sockit_datagrams_total{service=\"time\",outcome=\"answered\"}"),
        1.0
    );
}

#[test]
fn bad_requests_to_the_metrics_port_get_4xx_and_the_server_keeps_serving() {
    let server = ServerProcess::start(&["--metrics", "127.0.0.1:0"]);
    let metrics = metrics_addr(&server);
    let cases: [(&[u8], &str); 5] = [
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", "400"),
        (b"GET\r\n\r\n", "400"),
        (b"GET /nope HTTP/1.1\r\n\r\n", "404"),
        (b"DELETE /metrics HTTP/1.1\r\n\r\n", "405"),
        (&[b'a'; 20_000], "431"),
    ];
    for (request, status) in cases {
        let response = http(metrics, request);
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status} ")),
            "{request:?}: {response}"
        );
    }
    // A client that connects and says nothing does not hold up the next scrape.
    let _silent = TcpStream::connect(metrics).unwrap();
    let head = http(metrics, b"HEAD /metrics HTTP/1.0\r\n\r\n");
    assert!(
        head.starts_with("HTTP/1.1 200 OK") && head.ends_with("\r\n\r\n"),
        "{head}"
    );
    let scrape = Scrape::take(metrics);
    assert_eq!(scrape.get("sockit_connections_open"), 0.0);
    let output = server.cli(&["echo", &server.addr, "still", "here"]);
    assert_eq!(stdout(&output), "STILL HERE\n", "{}", stderr(&output));
}

#[test]
fn metrics_are_off_unless_asked_for_and_bad_addresses_are_refused() {
    let server = ServerProcess::start(&[]);
    assert_eq!(server.metrics_addr(), None);
    assert!(!server.log().contains("metrics on"), "{}", server.log());
    let output = server.cli(&["serve", "--metrics", "nowhere:x"]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("is not PORT, IP:PORT"),
        "{}",
        stderr(&output)
    );
}
