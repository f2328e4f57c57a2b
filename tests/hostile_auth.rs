//! Strangers against authentication: what a client that does not hold the secret (or only
//! replays someone else's bytes) can make the server do, echo, count or hold. Attackers connect
//! from their own loopback addresses (127.0.0.2, ...), so the per-source limits meet them and
//! not the legitimate clients on 127.0.0.1 beside them.

mod common;

use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::{ServerProcess, metrics_addr};
use hmac::{Hmac, KeyInit, Mac};
use md5::Md5;
use sockit::auth::{self, AuthMode, HandshakeError, ServerInfo, SessionKeys};
use sockit::wire::{Connection, ErrorCode, Header, Limits, RemoteError};
use sockit::{Client, Secret};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;

const LEGITIMATE: [u8; 4] = [127, 0, 0, 1];
const ATTACKER: [u8; 4] = [127, 0, 0, 2];
const ANOTHER_ATTACKER: [u8; 4] = [127, 0, 0, 3];
/// The bound on anything the server should do "at once", generous for a loaded CI machine.
const PROMPTLY: Duration = Duration::from_secs(3);

/// A TCP connection to `addr` from the loopback address `source`.
async fn connect_from(source: [u8; 4], addr: impl Into<SocketAddr>) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    let stream = socket.connect(addr.into()).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

fn native(server: &ServerProcess) -> SocketAddr {
    server.addr.parse().unwrap()
}

/// A handshake from `source` with `secret`; the connection and how the handshake ended.
async fn handshake_from(
    source: [u8; 4],
    server: &ServerProcess,
    secret: &Secret,
) -> (Connection, Result<ServerInfo, HandshakeError>) {
    let stream = connect_from(source, native(server)).await;
    let mut conn = Connection::tcp(stream, Limits::default());
    let keys = SessionKeys::new(secret.clone(), AuthMode::Noise);
    let outcome = timeout(PROMPTLY, auth::connect(&mut conn, &keys))
        .await
        .expect("every attempt is answered at once, never held back");
    (conn, outcome)
}

/// One echo on a session past its handshake.
async fn echo(conn: &mut Connection, text: &str) -> String {
    conn.send(Header::new("echo").with_id(Some(1)), text.as_bytes())
        .await
        .unwrap();
    let reply = timeout(PROMPTLY, conn.read_message())
        .await
        .expect("an answer")
        .unwrap()
        .expect("a reply, not a close");
    String::from_utf8(reply.body.to_vec()).unwrap()
}

/// `GET /metrics` from 127.0.0.1: the whole response.
async fn scrape(metrics: SocketAddr) -> String {
    let mut stream = connect_from(LEGITIMATE, metrics).await;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    timeout(PROMPTLY, stream.read_to_end(&mut response))
        .await
        .expect("a scrape is answered")
        .unwrap();
    String::from_utf8(response).unwrap()
}

/// The value of one sample line of a scrape (0 for a series not yet created).
fn sample(scrape: &str, series: &str) -> f64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_frames_before_authentication_are_neither_echoed_nor_counted() {
    let server = ServerProcess::start(&["--metrics", "127.0.0.1:0"]);
    let metrics = metrics_addr(&server);
    let padding = "x".repeat(3000);
    for n in 0..40 {
        let mut conn = Connection::tcp(connect_from(ATTACKER, native(&server)).await, Limits::default());
        let code = format!("hostile-{n}-{padding}");
        let frame = Header::new("error")
            .with("code", code.as_str())
            .with("message", "hostile text");
        conn.send(frame, b"").await.unwrap();
        let reply = timeout(PROMPTLY, conn.read_message())
            .await
            .expect("answered at once")
            .unwrap()
            .expect("an error frame before the close");
        let error = RemoteError::from_header(&reply.header).expect("an error frame");
        let shown: String = error.to_string().chars().take(80).collect();
        assert_eq!(error.code, ErrorCode::BadFrame, "{shown}");
        assert!(!error.message.contains("hostile"), "{shown}");
    }
    let text = scrape(metrics).await;
    assert!(!text.contains("hostile"), "{text}");
    assert_eq!(
        sample(&text, "sockit_errors_sent_total{code=\"bad_frame\"}"),
        40.0,
        "{text}"
    );
    server.assert_serving().await;
}

/// A byte stream that keeps a copy of everything written to it: an eavesdropper's capture.
struct Recorded {
    stream: TcpStream,
    sent: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Recorded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Recorded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            self.sent.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        written
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_hello_is_no_session_and_is_closed_at_the_handshake_deadline() {
    let server = ServerProcess::start(&["--metrics", "127.0.0.1:0", "--handshake-timeout", "500ms"]);
    let metrics = metrics_addr(&server);
    // A real session, its client's bytes captured: up to `ready`, the client sent its hello.
    let sent = Arc::new(Mutex::new(Vec::new()));
    let stream = TcpStream::connect(&server.addr).await.unwrap();
    let recorded = Recorded {
        stream,
        sent: sent.clone(),
    };
    let mut conn = Connection::from_io(recorded, Limits::default());
    let keys = SessionKeys::new(server.secret(), AuthMode::Noise);
    auth::connect(&mut conn, &keys).await.unwrap();
    let hello = sent.lock().unwrap().clone();
    assert_eq!(echo(&mut conn, "genuine").await, "GENUINE");

    // The replay is answered (uselessly: the answer needs the client's ephemeral key), then
    // closed at the handshake deadline rather than held for the 5-minute idle timeout.
    let mut replay = connect_from(ATTACKER, native(&server)).await;
    replay.write_all(&hello).await.unwrap();
    let mut sink = Vec::new();
    timeout(PROMPTLY, replay.read_to_end(&mut sink))
        .await
        .expect("the replay is closed at the handshake deadline")
        .unwrap();
    let text = scrape(metrics).await;
    assert_eq!(
        sample(&text, "sockit_handshakes_total{outcome=\"ok\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "sockit_handshakes_total{outcome=\"timeout\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(echo(&mut conn, "still mine").await, "STILL MINE");
}

/// The library confirms every session it opens with a `ping` (without an id, so nobody waits
/// for an answer), so one opened to be used later outlives the handshake deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_session_is_confirmed_at_once_and_outlives_the_handshake_deadline() {
    let server = ServerProcess::start(&["--handshake-timeout", "500ms", "--metrics", "127.0.0.1:0"]);
    let metrics = metrics_addr(&server);
    let mut client = Client::connect(&server.addr, &server.client_config())
        .await
        .unwrap();
    let confirmed = "sockit_handshakes_total{outcome=\"ok\"}";
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut text = scrape(metrics).await;
    while sample(&text, confirmed) < 1.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        text = scrape(metrics).await;
    }
    assert_eq!(
        sample(&text, "sockit_handshakes_total{outcome=\"ok\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "sockit_requests_total{service=\"session\",command=\"ping\"}"
        ),
        1.0,
        "{text}"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(client.echo("alive").await.unwrap(), "ALIVE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_guesses_are_refused_at_once_and_held_to_ten_a_second() {
    let server = ServerProcess::start(&[]);
    let wrong = Secret::generate();
    let begin = Instant::now();
    let (mut checked, mut refused) = (0u32, 0u32);
    // At least 1.5 s, and on until something was refused (the back-off grows, so it will be),
    // within 10 s and 5000 attempts.
    while (begin.elapsed() < Duration::from_millis(1500) || refused == 0)
        && begin.elapsed() < Duration::from_secs(10)
        && checked + refused < 5000
    {
        match handshake_from(ATTACKER, &server, &wrong).await.1 {
            Err(HandshakeError::AuthFailed(_)) => checked += 1,
            Err(HandshakeError::Refused(error)) if error.code == ErrorCode::AuthThrottled => {
                assert!(error.message.contains("try again in"), "{error}");
                refused += 1;
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    let seconds = begin.elapsed().as_secs_f64();
    assert!(refused > 0, "{checked} checked, none refused");
    assert!(
        f64::from(checked) <= 10.0 * seconds + 1.0,
        "{checked} guesses checked in {seconds:.2} s"
    );
    // A client holding the secret, from another address, is not affected.
    let (mut conn, outcome) = handshake_from(LEGITIMATE, &server, &server.secret()).await;
    outcome.unwrap();
    assert_eq!(echo(&mut conn, "unaffected").await, "UNAFFECTED");
}

/// `--classic` with only the HMAC echo (9999), on a free port.
fn hmac_echo_server() -> (ServerProcess, SocketAddr) {
    let others = ["echo", "exec", "ftp", "greeting", "udp_echo", "udp_exec"].map(|key| format!("{key}=off"));
    let mut args = vec!["--classic", "--auth-backoff", "60s"];
    for off in &others {
        args.extend(["--classic-listen", off.as_str()]);
    }
    args.extend(["--classic-listen", "hmac_echo=127.0.0.1:0"]);
    let server = ServerProcess::start(&args);
    let addr = server.service_addr("classic-hmac-echo", "tcp");
    (server, addr)
}

/// What 9999 does for `source` answering its challenge with `answer` (the right HMAC if
/// `None`): `None` if it closed without a challenge, else what came back for `hi`.
async fn hmac_echo_from(
    source: [u8; 4],
    addr: SocketAddr,
    secret: &Secret,
    answer: Option<[u8; 16]>,
) -> Option<Vec<u8>> {
    let mut stream = connect_from(source, addr).await;
    let mut challenge = [0u8; 32];
    let read = timeout(PROMPTLY, stream.read_exact(&mut challenge))
        .await
        .expect("9999 answers at once");
    if read.is_err() {
        return None;
    }
    let digest = answer.unwrap_or_else(|| {
        let mut mac = Hmac::<Md5>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(&challenge);
        mac.finalize().into_bytes().into()
    });
    stream.write_all(&digest).await.unwrap();
    let _ = stream.write_all(b"hi").await;
    let mut back = Vec::new();
    let mut buf = [0u8; 64];
    while back.len() < 2 {
        match timeout(PROMPTLY, stream.read(&mut buf))
            .await
            .expect("9999 answers at once")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => back.extend_from_slice(&buf[..n]),
        }
    }
    Some(back)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_classic_hmac_echo_shares_the_backoff() {
    let (server, addr) = hmac_echo_server();
    let secret = server.secret();
    // A wrong answer on 9999 puts its address under back-off, on 9999 and the native port.
    let wrong = hmac_echo_from(ATTACKER, addr, &secret, Some([0; 16])).await;
    assert_eq!(wrong, Some(Vec::new()), "a wrong answer is closed");
    assert_eq!(
        hmac_echo_from(ATTACKER, addr, &secret, None).await,
        None,
        "no second challenge"
    );
    let refused = handshake_from(ATTACKER, &server, &secret).await.1;
    assert!(
        matches!(&refused, Err(HandshakeError::Refused(e)) if e.code == ErrorCode::AuthThrottled),
        "{refused:?}"
    );
    // A wrong secret on the native port closes 9999 to that address too.
    let guess = handshake_from(ANOTHER_ATTACKER, &server, &Secret::generate())
        .await
        .1;
    assert!(matches!(guess, Err(HandshakeError::AuthFailed(_))), "{guess:?}");
    assert_eq!(hmac_echo_from(ANOTHER_ATTACKER, addr, &secret, None).await, None);
    // Another address holding the secret is served.
    assert_eq!(
        hmac_echo_from(LEGITIMATE, addr, &secret, None).await,
        Some(b"HI".to_vec())
    );
}

/// `sockit serve` with `args` (and `env`), which must refuse to start: its output.
fn serve_refusing(dir: &std::path::Path, args: &[&str], env: Option<&str>) -> Output {
    let mut command = common::sockit_command(dir);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--time-listen", "off"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(secret) = env {
        command.env("SOCKIT_SECRET", secret);
    }
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("serve started with args {args:?}: {:?}", child.wait_with_output());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    assert!(!output.status.success());
    output
}

#[test]
fn serve_refuses_short_secrets_and_secret_files_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short");
    std::fs::write(&short, "tooshort\n").unwrap();
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
    let output = serve_refusing(dir.path(), &["--secret-file", short.to_str().unwrap()], None);
    let message = common::stderr(&output);
    assert!(
        message.contains("is 8 bytes; a server needs at least 16"),
        "{message}"
    );
    assert!(message.contains("sockit keygen"), "{message}");

    let output = serve_refusing(dir.path(), &[], Some("tooshort"));
    let message = common::stderr(&output);
    assert!(message.contains("$SOCKIT_SECRET is 8 bytes"), "{message}");

    let exposed = dir.path().join("exposed");
    Secret::create(&exposed, false).unwrap();
    std::fs::set_permissions(&exposed, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = serve_refusing(dir.path(), &["--secret-file", exposed.to_str().unwrap()], None);
    let message = common::stderr(&output);
    assert!(
        message.contains(&format!("run `chmod 600 {}`", exposed.display())),
        "{message}"
    );
}

/// Reads each connection's first message (or its close) in the background: `(index, code)`,
/// with `None` for a close without an error frame.
fn watch(conns: Vec<TcpStream>) -> mpsc::UnboundedReceiver<Option<ErrorCode>> {
    let (tx, rx) = mpsc::unbounded_channel();
    for stream in conns {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut conn = Connection::tcp(stream, Limits::default());
            let code = match conn.read_message().await {
                Ok(Some(message)) => RemoteError::from_header(&message.header).map(|e| e.code),
                _ => None,
            };
            let _ = tx.send(code);
        });
    }
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_the_handshake_slots_of_others() {
    let server = ServerProcess::start(&[
        "--max-handshakes",
        "8",
        "--max-handshakes-per-source",
        "4",
        "--handshake-timeout",
        "30s",
    ]);
    let mut idle = Vec::new();
    for _ in 0..16 {
        idle.push(connect_from(ATTACKER, native(&server)).await);
    }
    // Past its 4, the address's connections are refused at once with `busy`.
    let mut answers = watch(idle);
    for _ in 0..12 {
        let code = timeout(PROMPTLY, answers.recv()).await.expect("refused at once");
        assert_eq!(code.flatten(), Some(ErrorCode::Busy));
    }
    // Its 4 hold their slots; a client elsewhere still gets one of the other 4 at once.
    let mut config = server.client_config();
    config.connect_timeout = PROMPTLY;
    let mut client = Client::connect(&server.addr, &config)
        .await
        .expect("a handshake from another address completes during the flood");
    assert_eq!(client.echo("through").await.unwrap(), "THROUGH");
    assert!(
        answers.try_recv().is_err(),
        "the attacker's first 4 were held, not refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_do_not_lock_scrapers_out_of_metrics() {
    let server = ServerProcess::start(&["--metrics", "127.0.0.1:0"]);
    let metrics = metrics_addr(&server);
    let (tx, mut closed) = mpsc::unbounded_channel();
    for _ in 0..40 {
        let mut stream = connect_from(ATTACKER, metrics).await;
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut response = Vec::new();
            let _ = timeout(Duration::from_secs(30), stream.read_to_end(&mut response)).await;
            let _ = tx.send(String::from_utf8_lossy(&response).into_owned());
        });
    }
    // Past its 4, the address's connections are closed at once, unanswered.
    for _ in 0..36 {
        let response = timeout(PROMPTLY, closed.recv()).await.expect("closed at once");
        assert_eq!(response.as_deref(), Some(""));
    }
    let text = scrape(metrics).await;
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    // The 4 it holds are answered 408 once the head timeout passes.
    for _ in 0..4 {
        let response = timeout(Duration::from_secs(10), closed.recv())
            .await
            .expect("timed out by the server");
        assert!(response.unwrap().starts_with("HTTP/1.1 408"));
    }
}

/// Idle connections from many addresses, a few each, do not lock scrapers out either: the
/// endpoint's cap in all is far above what a handful of addresses can hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_from_many_addresses_do_not_lock_scrapers_out() {
    let server = ServerProcess::start(&["--metrics", "127.0.0.1:0"]);
    let metrics = metrics_addr(&server);
    let mut idle = Vec::new();
    for host in 1..=64 {
        for _ in 0..4 {
            idle.push(connect_from([127, 0, 9, host], metrics).await);
        }
    }
    let text = timeout(PROMPTLY, scrape(metrics))
        .await
        .expect("a scrape answered at once");
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    drop(idle);
}

/// Sessions, not only handshakes, are bounded per address: one address past its share is
/// refused at once with `busy`, and a client from elsewhere is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection() {
    let server = ServerProcess::start(&["--max-connections-per-source", "8"]);
    let secret = server.secret();
    let mut sessions = Vec::new();
    for n in 0..8 {
        let (mut conn, outcome) = handshake_from(ATTACKER, &server, &secret).await;
        outcome.expect("within the address's share");
        assert_eq!(echo(&mut conn, &format!("s{n}")).await, format!("S{n}"));
        sessions.push(conn);
    }
    let (_conn, outcome) = handshake_from(ATTACKER, &server, &secret).await;
    match outcome {
        Err(HandshakeError::Refused(error)) => assert_eq!(error.code, ErrorCode::Busy),
        other => panic!("expected `busy` past the share, got {other:?}"),
    }
    let (mut conn, outcome) = handshake_from(LEGITIMATE, &server, &secret).await;
    outcome.expect("another address is served");
    assert_eq!(echo(&mut conn, "elsewhere").await, "ELSEWHERE");
    drop(sessions);
}
