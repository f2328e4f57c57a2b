//! Bad input, dead peers and load against a real server: every abuse gets a clear error or a
//! close, never a panic, and the server keeps serving everyone else.

mod common;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::ServerProcess;
use sockit::auth::{self, AuthMode, SessionKeys};
use sockit::wire::{Connection, ErrorCode, Header, Limits, Message, RemoteError};
use sockit::{Client, ClientError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// A frame connection on a fresh socket, before any handshake.
async fn raw(server: &ServerProcess) -> Connection {
    let stream = TcpStream::connect(&server.addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    Connection::tcp(stream, Limits::default())
}

/// A connection past the handshake, for sending hand-made frames inside a session.
async fn session(server: &ServerProcess, mode: AuthMode) -> Connection {
    let mut conn = raw(server).await;
    auth::connect(&mut conn, &SessionKeys::new(server.secret(), mode))
        .await
        .unwrap();
    conn
}

/// Reads the server's parting error frame and then EOF.
async fn expect_error_then_close(conn: &mut Connection, code: ErrorCode) {
    let message = tokio::time::timeout(Duration::from_secs(10), conn.read_message())
        .await
        .expect("server answers within 10 s")
        .expect("a whole frame")
        .expect("an error frame before the close");
    let error = RemoteError::from_header(&message.header).expect("an error frame");
    assert_eq!(error.code, code, "{error}");
    assert!(
        matches!(conn.read_frame().await, Ok(None) | Err(_)),
        "then the server closes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_clients_each_get_their_own_answers() {
    let server = ServerProcess::start(&[]);
    let mut clients = tokio::task::JoinSet::new();
    for n in 0..200 {
        let (addr, config) = (server.addr.clone(), server.client_config());
        clients.spawn(async move {
            let mut client = Client::connect(&addr, &config).await.unwrap();
            for round in 0..10 {
                let text = format!("client {n} round {round}");
                assert_eq!(client.echo(&text).await.unwrap(), text.to_uppercase());
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    server.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_vanishing_mid_frame_disturb_no_one() {
    let server = ServerProcess::start(&[]);
    let mut bystander = Client::connect(&server.addr, &server.client_config())
        .await
        .unwrap();

    // Half a length prefix, then gone.
    let mut conn = raw(&server).await;
    conn.writer.send_body(&[7, 0]).await.unwrap();
    conn.writer.flush().await.unwrap();
    drop(conn);
    // Half a hello header, then gone.
    let mut conn = raw(&server).await;
    conn.writer
        .send_body(b"\x40\x00\x00\x00{\"cmd\":\"hel")
        .await
        .unwrap();
    conn.writer.flush().await.unwrap();
    drop(conn);
    // Inside a session: a header promising 100 body bytes, 10 sent, then gone.
    let mut conn = session(&server, AuthMode::Noise).await;
    conn.writer
        .queue_header(&Header::new("echo").with_body_len(100))
        .unwrap();
    conn.writer.send_body(&[b'x'; 10]).await.unwrap();
    conn.writer.flush().await.unwrap();
    drop(conn);
    // A real client process killed with SIGKILL in the middle of its load.
    let mut load = common::sockit_command(server.dir.path())
        .args(["bench", "echo", &server.addr, "-c", "4", "--duration", "30s"])
        .args(["--secret-file", server.secret_file.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    load.kill().unwrap();
    load.wait().unwrap();

    assert_eq!(bystander.echo("unbothered").await.unwrap(), "UNBOTHERED");
    server.assert_serving().await;
    let log = tokio::task::spawn_blocking(move || server.terminate_for_log())
        .await
        .unwrap();
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_an_error_frame_and_a_close() {
    let server = ServerProcess::start(&[]);
    // Before authentication the limit is small; a 2 GiB claim is refused at once.
    let mut conn = raw(&server).await;
    conn.writer
        .send_body(&0x7fff_ffffu32.to_le_bytes())
        .await
        .unwrap();
    conn.writer.flush().await.unwrap();
    expect_error_then_close(&mut conn, ErrorCode::HeaderTooLarge).await;
    // Inside a session the limit is 64 KiB.
    let mut conn = session(&server, AuthMode::Noise).await;
    conn.writer
        .send_body(&(64 * 1024 + 1u32).to_le_bytes())
        .await
        .unwrap();
    conn.writer.flush().await.unwrap();
    expect_error_then_close(&mut conn, ErrorCode::HeaderTooLarge).await;
    server.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused_from_the_header_alone() {
    let server = ServerProcess::start(&[]);
    let mut conn = session(&server, AuthMode::Noise).await;
    conn.writer
        .queue_header(&Header::new("echo").with_body_len(1 << 40))
        .unwrap();
    conn.writer.flush().await.unwrap();
    expect_error_then_close(&mut conn, ErrorCode::BodyTooLarge).await;
    server.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_garbage_is_refused_before_and_after_authentication() {
    let server = ServerProcess::start(&["--plaintext", "--handshake-timeout", "2s"]);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..40 {
        let len = [1, 3, 4, 5, 64, 1000, 70_000][round % 7];
        let garbage: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let mut conn = if round % 2 == 0 {
            raw(&server).await
        } else {
            session(&server, AuthMode::Hmac).await
        };
        let _ = conn.writer.send_body(&garbage).await;
        let _ = conn.writer.flush().await;
        let _ = conn.writer.shutdown().await;
        let outcome = tokio::time::timeout(Duration::from_secs(10), async {
            while let Ok(Some(_)) = conn.read_frame().await {}
        });
        outcome.await.expect("the server closes garbage connections");
    }
    server.assert_serving().await;
    let log = tokio::task::spawn_blocking(move || server.terminate_for_log())
        .await
        .unwrap();
    assert!(!log.contains("panicked"), "{log}");
}

/// Writes at most one byte per call: with TCP_NODELAY each byte leaves as its own segment.
struct OneByteAtATime(TcpStream);

impl AsyncRead for OneByteAtATime {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for OneByteAtATime {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let one = &buf[..buf.len().min(1)];
        Pin::new(&mut self.0).poll_write(cx, one)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_one_byte_at_a_time_is_understood() {
    for (flags, mode) in [(&[][..], AuthMode::Noise), (&["--plaintext"][..], AuthMode::Hmac)] {
        let server = ServerProcess::start(flags);
        let stream = TcpStream::connect(&server.addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let mut conn = Connection::from_io(OneByteAtATime(stream), Limits::default());
        auth::connect(&mut conn, &SessionKeys::new(server.secret(), mode))
            .await
            .unwrap();
        for text in ["byte", "by byte"] {
            conn.send(Header::new("echo").with_id(Some(1)), text.as_bytes())
                .await
                .unwrap();
            let reply = conn.read_message().await.unwrap().unwrap();
            assert_eq!(reply.body, text.to_uppercase());
        }
        server.assert_serving().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_reaped_by_the_handshake_deadline() {
    let server = ServerProcess::start(&["--handshake-timeout", "300ms"]);
    let begin = Instant::now();
    let mut silent = raw(&server).await;
    expect_error_then_close(&mut silent, ErrorCode::Timeout).await;
    assert!(begin.elapsed() >= Duration::from_millis(300));
    server.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_are_closed_after_the_idle_timeout() {
    let server = ServerProcess::start(&["--idle-timeout", "300ms"]);
    // The idle timeout starts once the session is authenticated: at its first request.
    let mut idle = session(&server, AuthMode::Noise).await;
    idle.send(Header::new("echo").with_id(Some(1)), b"first")
        .await
        .unwrap();
    let reply = idle.read_message().await.unwrap().unwrap();
    assert_eq!(reply.body, "FIRST");
    expect_error_then_close(&mut idle, ErrorCode::Timeout).await;
    server.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_commands_are_answered_and_the_session_goes_on() {
    let server = ServerProcess::start(&[]);
    let mut client = Client::connect(&server.addr, &server.client_config())
        .await
        .unwrap();
    match client.call(Header::new("frobnicate").with("x", 1), b"body").await {
        Err(ClientError::Remote(error)) => {
            assert_eq!(error.code, ErrorCode::UnknownCmd);
            assert!(error.message.contains("frobnicate") && error.message.contains("echo"));
        }
        other => panic!("expected unknown_cmd, got {:?}", other.map(|m| m.header)),
    }
    assert_eq!(client.echo("next").await.unwrap(), "NEXT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_mismatch_and_missing_hello_are_clear_errors() {
    let server = ServerProcess::start(&[]);
    let mut conn = raw(&server).await;
    let hello = Header::new("hello").with("version", 99).with("auth", "noise");
    conn.send(hello, b"").await.unwrap();
    expect_error_then_close(&mut conn, ErrorCode::VersionMismatch).await;

    let mut conn = raw(&server).await;
    conn.send(Header::new("echo"), b"skip the handshake")
        .await
        .unwrap();
    expect_error_then_close(&mut conn, ErrorCode::BadFrame).await;
    server.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_in_one_write_get_their_replies_in_order() {
    let server = ServerProcess::start(&[]);
    let mut conn = session(&server, AuthMode::Noise).await;
    for id in 0..100u64 {
        conn.writer
            .queue(Header::new("echo").with_id(Some(id)), format!("m{id}").as_bytes())
            .unwrap();
    }
    conn.writer.flush().await.unwrap();
    for id in 0..100u64 {
        let Message { header, body } = conn.read_message().await.unwrap().unwrap();
        assert_eq!((header.id(), body), (Some(id), format!("M{id}").into()));
    }
}

/// Relays one connection to the server, letting `tamper` see and change server-to-client bytes
/// and recording client-to-server bytes.
async fn relay(
    server: &str,
    tamper: impl Fn(usize, &mut [u8]) + Send + Sync + 'static,
) -> (String, tokio::task::JoinHandle<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = server.to_owned();
    let task = tokio::spawn(async move {
        let (mut client, _) = listener.accept().await.unwrap();
        let mut upstream = TcpStream::connect(server).await.unwrap();
        let (mut from_client, mut to_client) = client.split();
        let (mut from_server, mut to_server) = upstream.split();
        let mut seen = Vec::new();
        let upward = async {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = from_client.read(&mut buf).await {
                seen.extend_from_slice(&buf[..n]);
                if to_server.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        };
        let downward = async {
            let (mut buf, mut offset) = ([0u8; 4096], 0);
            while let Ok(n @ 1..) = from_server.read(&mut buf).await {
                tamper(offset, &mut buf[..n]);
                offset += n;
                if to_client.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        };
        tokio::select! { () = upward => {}, () = downward => {} }
        seen
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_man_in_the_middle_can_neither_read_nor_alter_encrypted_sessions() {
    let server = ServerProcess::start(&[]);
    let (addr, seen) = relay(&server.addr, |_, _| {}).await;
    let mut client = Client::connect(&addr, &server.client_config()).await.unwrap();
    assert_eq!(
        client.echo("the eavesdropper sees nothing").await.unwrap(),
        "THE EAVESDROPPER SEES NOTHING"
    );
    drop(client);
    let seen = seen.await.unwrap();
    assert!(
        !seen.windows(12).any(|w| w == b"eavesdropper"),
        "payload visible on the wire"
    );

    // Flip one bit far past the handshake: the client must fail, not accept altered data.
    let (addr, _) = relay(&server.addr, |offset, bytes| {
        for (i, byte) in bytes.iter_mut().enumerate() {
            if offset + i == 400 {
                *byte ^= 1;
            }
        }
    })
    .await;
    let mut client = Client::connect(&addr, &server.client_config()).await.unwrap();
    let mut outcome = Ok(bytes::Bytes::new());
    for _ in 0..20 {
        outcome = client.echo("x".repeat(40)).await;
        if outcome.is_err() {
            break;
        }
        assert_eq!(outcome.as_ref().unwrap(), &"X".repeat(40));
    }
    let error = outcome.expect_err("tampering is detected");
    assert!(error.to_string().contains("failed authentication"), "{error}");
    server.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_sessions_are_readable_on_the_wire_as_documented() {
    let server = ServerProcess::start(&["--plaintext"]);
    let (addr, seen) = relay(&server.addr, |_, _| {}).await;
    let mut client = Client::connect(&addr, &server.client_config()).await.unwrap();
    assert_eq!(client.echo("visible").await.unwrap(), "VISIBLE");
    drop(client);
    let seen = seen.await.unwrap();
    assert!(seen.windows(7).any(|w| w == b"visible"));
    assert!(
        !seen.windows(32).any(|w| w == &server.secret().as_bytes()[..32]),
        "the secret never crosses"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_until_a_slot_frees() {
    let server = ServerProcess::start(&["--max-connections", "1"]);
    let mut first = Client::connect(&server.addr, &server.client_config())
        .await
        .unwrap();
    let mut impatient = server.client_config();
    impatient.connect_timeout = Duration::from_millis(500);
    let waited = Client::connect(&server.addr, &impatient)
        .await
        .err()
        .expect("no slot free");
    assert!(matches!(waited, ClientError::Timeout(_)), "{waited}");
    assert_eq!(first.echo("still mine").await.unwrap(), "STILL MINE");
    drop(first);
    server.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_are_capped_separately() {
    let server = ServerProcess::start(&["--max-handshakes", "1", "--handshake-timeout", "1s"]);
    let _silent = raw(&server).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut impatient = server.client_config();
    impatient.connect_timeout = Duration::from_millis(300);
    assert!(
        Client::connect(&server.addr, &impatient).await.is_err(),
        "the one handshake slot is taken"
    );
    // Once the silent connection is reaped by the handshake deadline, clients get in again.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    server.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_idle_sessions_and_refuses_new_ones() {
    let server = ServerProcess::start(&[]);
    let mut idle = session(&server, AuthMode::Noise).await;
    let addr = server.addr.clone();
    let begin = Instant::now();
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        begin.elapsed() < Duration::from_secs(5),
        "idle sessions do not hold up shutdown"
    );
    assert!(
        matches!(idle.read_frame().await, Ok(None) | Err(_)),
        "the idle session is closed"
    );
    assert!(
        TcpStream::connect(&addr).await.is_err(),
        "nothing listens any more"
    );
}

/// An unknown command is quoted in its refusal only in part: escaping could make a long one
/// larger than any header may be, and the refusal must still go out.
#[tokio::test]
async fn a_huge_unknown_command_is_refused_and_the_session_goes_on() {
    let server = ServerProcess::start(&[]);
    let mut client = Client::connect(&server.addr, &server.client_config())
        .await
        .unwrap();
    let huge = "\u{7f}".repeat(30_000);
    match client.call(Header::new(huge), b"").await {
        Err(ClientError::Remote(error)) => {
            assert_eq!(error.code, ErrorCode::UnknownCmd);
            assert!(error.message.len() < 1024, "{} bytes", error.message.len());
        }
        other => panic!("expected an unknown_cmd refusal, got {other:?}"),
    }
    assert_eq!(client.echo("still here").await.unwrap(), "STILL HERE");
}

/// An error whose message quotes a huge bad value (serde quotes it escaped, six bytes a
/// character) is sent shortened, with the request's id; the session goes on.
#[tokio::test]
async fn an_error_too_large_to_send_goes_out_shortened_and_the_session_goes_on() {
    let server = ServerProcess::start(&[]);
    let mut client = Client::connect(&server.addr, &server.client_config())
        .await
        .unwrap();
    let bad = Header::new("ls")
        .with("path", "")
        .with("limit", "\u{85}".repeat(20_000));
    match client.call(bad, b"").await {
        Err(ClientError::Remote(error)) => {
            assert_eq!(error.code, ErrorCode::BadRequest);
            assert!(error.message.ends_with("[...]"), "{}", error.message);
        }
        other => panic!("expected a bad_request refusal, got {other:?}"),
    }
    assert_eq!(client.echo("still here").await.unwrap(), "STILL HERE");
}

/// A request whose body stops halfway is not a way around the idle timeout: the session is
/// closed with `timeout` once nothing more has come for that long.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_left_half_sent_is_closed_at_the_idle_timeout() {
    let server = ServerProcess::start(&["--idle-timeout", "300ms"]);
    let mut stalled = session(&server, AuthMode::Noise).await;
    stalled
        .send(Header::new("echo").with_id(Some(1)), b"first")
        .await
        .unwrap();
    assert_eq!(stalled.read_message().await.unwrap().unwrap().body, "FIRST");
    let half = Header::new("echo").with_id(Some(2)).with_body_len(1000);
    stalled.writer.queue_header(&half).unwrap();
    stalled.writer.send_body(b"only ten b").await.unwrap();
    stalled.writer.flush().await.unwrap();
    expect_error_then_close(&mut stalled, ErrorCode::Timeout).await;
    server.assert_serving().await;
}
