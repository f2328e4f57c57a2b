//! The chat service end to end: the real server, the client library, the real CLI (also in a
//! pseudo-terminal) and the UDP console driven over raw sockets.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::UdpSocket;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{InProcessServer, next_incoming, sockit_command};
use sockit::Client;
use sockit::client::{ChatFeed, ChatIncoming, ChatSession};
use sockit::proto::chat::{ChatEvent, RoomInfo};
use sockit::wire::ErrorCode;
use tokio::time::timeout;

async fn login(server: &InProcessServer, name: &str) -> ChatSession {
    let client = Client::connect(&server.addr, &server.client_config())
        .await
        .unwrap();
    client.chat_login(name).await.unwrap()
}

async fn next_event(feed: &mut ChatFeed) -> ChatEvent {
    match next_incoming(feed).await {
        ChatIncoming::Event { event, .. } => event,
        ChatIncoming::Refused { error, .. } => panic!("unexpected refusal: {error}"),
    }
}

/// Asks for `room`'s members and returns everything that arrived before the answer: the
/// feed is ordered, so this is exactly what the server sent this client so far.
async fn drain(session: &mut ChatSession, room: &str) -> Vec<ChatEvent> {
    let id = session.sender.who(room).await.unwrap();
    let mut before = Vec::new();
    loop {
        match next_incoming(&mut session.feed).await {
            ChatIncoming::Event { id: Some(answer), .. } if answer == id => return before,
            ChatIncoming::Event { event, .. } => before.push(event),
            ChatIncoming::Refused { error, .. } => panic!("unexpected refusal: {error}"),
        }
    }
}

fn texts(events: &[ChatEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|event| match event {
            ChatEvent::Message { from, text, .. } => Some(format!("{from}: {text}")),
            ChatEvent::Direct { from, to, text, .. } => Some(format!("{from}->{to}: {text}")),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn three_clients_two_rooms_direct_messages_history_and_presence() {
    let server = InProcessServer::start("");
    let mut alice = login(&server, "alice").await;
    alice.sender.join("lobby").await.unwrap();
    assert_eq!(
        next_event(&mut alice.feed).await,
        ChatEvent::Members {
            room: "lobby".into(),
            members: vec!["alice".into()],
            total: 1,
            next: None,
        }
    );
    for n in 1..=3 {
        alice.sender.say("lobby", &format!("m{n}")).await.unwrap();
    }

    // Bob joins later: the history is replayed with its timestamps, then who is there.
    let mut bob = login(&server, "bob").await;
    bob.sender.join("lobby").await.unwrap();
    for n in 1..=3 {
        match next_event(&mut bob.feed).await {
            ChatEvent::Message {
                room,
                from,
                text,
                time,
                replay,
            } => {
                assert_eq!((room.as_str(), from.as_str(), replay), ("lobby", "alice", true));
                assert_eq!(text, format!("m{n}"));
                assert!(chrono::DateTime::parse_from_rfc3339(&time).is_ok(), "{time}");
            }
            other => panic!("expected history, got {other:?}"),
        }
    }
    assert_eq!(
        next_event(&mut bob.feed).await,
        ChatEvent::Members {
            room: "lobby".into(),
            members: vec!["alice".into(), "bob".into()],
            total: 2,
            next: None,
        }
    );

    let mut carol = login(&server, "carol").await;
    carol.sender.join("dev").await.unwrap();
    // Carol is in `dev` before Bob joins it, so she sees him arrive.
    drain(&mut carol, "dev").await;
    bob.sender.join("dev").await.unwrap();
    alice.sender.say("lobby", "hello lobby").await.unwrap();
    carol.sender.say("dev", "hello dev").await.unwrap();
    alice.sender.direct("carol", "psst").await.unwrap();

    // Each drain also proves its client's own requests were carried out (one connection is
    // ordered); different connections are not, so Bob drains last, once Alice's and Carol's
    // messages have surely reached the hub.
    let alice_saw = drain(&mut alice, "lobby").await;
    let carol_saw = drain(&mut carol, "dev").await;
    let bob_saw = drain(&mut bob, "lobby").await;
    assert_eq!(
        texts(&alice_saw),
        [
            "alice: m1",
            "alice: m2",
            "alice: m3",
            "alice: hello lobby",
            "alice->carol: psst"
        ]
    );
    // Two senders on two connections: no order between them, only within each.
    let mut bob_texts = texts(&bob_saw);
    bob_texts.sort();
    assert_eq!(bob_texts, ["alice: hello lobby", "carol: hello dev"]);
    let mut carol_texts = texts(&carol_saw);
    carol_texts.sort();
    assert_eq!(carol_texts, ["alice->carol: psst", "carol: hello dev"]);
    assert!(
        alice_saw
            .iter()
            .any(|e| matches!(e, ChatEvent::Join { name, room, .. } if name == "bob" && room == "lobby"))
    );
    assert!(
        carol_saw
            .iter()
            .any(|e| matches!(e, ChatEvent::Join { name, room, .. } if name == "bob" && room == "dev"))
    );

    // A taken nickname is refused, with a code a program can test.
    let clash = Client::connect(&server.addr, &server.client_config())
        .await
        .unwrap();
    let refused = clash.chat_login("alice").await.err().expect("alice is taken");
    assert!(
        refused.to_string().contains("nickname `alice` is taken"),
        "{refused}"
    );

    // Nobody called dave: refused, and the session goes on.
    alice.sender.direct("dave", "hi").await.unwrap();
    match next_incoming(&mut alice.feed).await {
        ChatIncoming::Refused { error, .. } => assert_eq!(error.code, ErrorCode::NotFound),
        other => panic!("expected a refusal, got {other:?}"),
    }
    alice.sender.say("dev", "not a member").await.unwrap();
    match next_incoming(&mut alice.feed).await {
        ChatIncoming::Refused { error, .. } => assert_eq!(error.code, ErrorCode::NotInRoom),
        other => panic!("expected a refusal, got {other:?}"),
    }

    // Bob leaves the server: both of his rooms are told.
    bob.sender.quit().await;
    drop(bob.feed);
    let left = |events: &[ChatEvent], in_room: &str| {
        events
            .iter()
            .any(|e| matches!(e, ChatEvent::Leave { name, room, .. } if name == "bob" && room == in_room))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut alice_knows, mut carol_knows) = (false, false);
    while !(alice_knows && carol_knows) && Instant::now() < deadline {
        alice_knows |= left(&drain(&mut alice, "lobby").await, "lobby");
        carol_knows |= left(&drain(&mut carol, "dev").await, "dev");
    }
    assert!(
        alice_knows && carol_knows,
        "bob's departure was announced in both rooms"
    );
    alice.sender.rooms().await.unwrap();
    assert_eq!(
        next_event(&mut alice.feed).await,
        ChatEvent::Rooms {
            rooms: vec![
                RoomInfo {
                    name: "dev".into(),
                    members: 1
                },
                RoomInfo {
                    name: "lobby".into(),
                    members: 1
                },
            ],
            total: 2,
            next: None,
        }
    );
}

#[tokio::test]
async fn history_keeps_the_last_fifty_and_bad_input_is_refused() {
    let server = InProcessServer::start("");
    let mut alice = login(&server, "alice").await;
    alice.sender.join("lobby").await.unwrap();
    for n in 0..60 {
        alice.sender.say("lobby", &format!("n{n}")).await.unwrap();
    }
    drain(&mut alice, "lobby").await;
    let mut bob = login(&server, "bob").await;
    bob.sender.join("lobby").await.unwrap();
    let replayed = drain(&mut bob, "lobby").await;
    let expected: Vec<String> = (10..60).map(|n| format!("alice: n{n}")).collect();
    assert_eq!(texts(&replayed), expected);
    drain(&mut alice, "lobby").await;

    for bad in ["\x1b[2Jcleared", "", &"x".repeat(5000)] {
        alice.sender.say("lobby", bad).await.unwrap();
        match next_incoming(&mut alice.feed).await {
            ChatIncoming::Refused { error, .. } => assert_eq!(error.code, ErrorCode::BadRequest),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    for bad_name in ["", "two words", "/quit", "tab\tname"] {
        let client = Client::connect(&server.addr, &server.client_config())
            .await
            .unwrap();
        assert!(client.chat_login(bad_name).await.is_err(), "{bad_name:?} refused");
    }
    server.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_dropped_and_slows_nobody() {
    let server = InProcessServer::start("");
    let mut alice = login(&server, "alice").await;
    let mut carol = login(&server, "carol").await;
    let mut stuck = login(&server, "stuck").await;
    for session in [&mut alice, &mut carol, &mut stuck] {
        session.sender.join("lobby").await.unwrap();
    }
    drain(&mut alice, "lobby").await;
    drain(&mut carol, "lobby").await;
    // From here on `stuck` reads nothing.

    // Alice reads her own copies, and keeps at most 16 messages in flight: a well-behaved
    // client that paces itself by what it has received.
    let mut alice_feed = alice.feed;
    let (echoed_tx, mut echoed) = tokio::sync::watch::channel(0usize);
    tokio::spawn(async move {
        let mut count = 0;
        while let Ok(Some(incoming)) = alice_feed.next().await {
            if let ChatIncoming::Event {
                event: ChatEvent::Message { .. },
                ..
            } = incoming
            {
                count += 1;
                let _ = echoed_tx.send(count);
            }
        }
    });
    let watcher = tokio::spawn(async move {
        let mut received = Vec::new();
        loop {
            match timeout(Duration::from_secs(60), carol.feed.next()).await {
                Ok(Ok(Some(ChatIncoming::Event { event, .. }))) => {
                    if let ChatEvent::Leave { name, reason, .. } = &event
                        && name == "stuck"
                    {
                        return (received, reason.clone());
                    }
                    if let ChatEvent::Message { text, .. } = event {
                        received.push(text);
                    }
                }
                other => panic!("carol's feed ended: {other:?} after {}", received.len()),
            }
        }
    });

    let padding = "x".repeat(4000);
    let started = Instant::now();
    let mut sent = 0;
    while !watcher.is_finished() {
        assert!(
            sent < 50_000 && started.elapsed() < Duration::from_secs(60),
            "stuck client never dropped"
        );
        if let Err(e) = alice.sender.say("lobby", &format!("{sent:06} {padding}")).await {
            panic!("alice's session failed after {sent} messages: {e}");
        }
        sent += 1;
        let window = timeout(
            Duration::from_secs(10),
            echoed.wait_for(|echoed| sent - echoed <= 16),
        );
        window.await.expect("alice's own messages come back").unwrap();
    }
    let (received, reason) = watcher.await.unwrap();
    assert_eq!(reason.as_deref(), Some("dropped: too slow"));
    // Carol got every message that was sent before the drop, in order, while `stuck` hung.
    for (n, text) in received.iter().enumerate() {
        assert!(text.starts_with(&format!("{n:06} ")), "message {n} out of order");
    }
    assert!(
        received.len() > 256,
        "carol kept receiving while stuck's queue filled"
    );

    // The stuck client finds its connection closed once it reads what was queued.
    let ended = timeout(Duration::from_secs(30), async {
        loop {
            match stuck.feed.next().await {
                Ok(Some(ChatIncoming::Event {
                    event: ChatEvent::Dropped { .. },
                    ..
                }))
                | Ok(None)
                | Err(_) => {
                    return;
                }
                Ok(Some(_)) => {}
            }
        }
    });
    ended.await.expect("the stuck client's connection ends");
    server.assert_serving().await;
}

#[test]
fn send_posts_one_message_and_a_taken_name_fails_clearly() {
    let server = InProcessServer::start("");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut watcher = runtime.block_on(async {
        let mut watcher = login(&server, "watcher").await;
        watcher.sender.join("ops").await.unwrap();
        drain(&mut watcher, "ops").await;
        watcher
    });
    let output = server.cli(&[
        "chat",
        &server.addr,
        "--name",
        "bot",
        "--room",
        "ops",
        "--send",
        "deploy done",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = server.cli(&[
        "chat",
        &server.addr,
        "--name",
        "bot",
        "--to",
        "watcher",
        "--send",
        "psst",
    ]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen = runtime.block_on(drain(&mut watcher, "ops"));
    let said = texts(&seen);
    assert_eq!(said, ["bot: deploy done", "bot->watcher: psst"]);

    let output = server.cli(&["chat", &server.addr, "--name", "watcher", "--send", "hi"]);
    assert_eq!(output.status.code(), Some(255));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("nickname `watcher` is taken"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

/// The interactive client in a pseudo-terminal: an incoming message is printed above a
/// half-typed line, which is then redrawn and can be finished.
#[test]
fn interactive_client_in_a_terminal() {
    let server = InProcessServer::start("");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut bob = runtime.block_on(async {
        let mut bob = login(&server, "bob").await;
        bob.sender.join("lobby").await.unwrap();
        drain(&mut bob, "lobby").await;
        bob
    });
    let script = serde_json::json!([
        {"expect": "#lobby> "},
        {"send": "hel"},
        {"expect": "ping from bob"},
        {"expect": "hel"},
        {"send": "lo there\r"},
        {"expect": "alice"},
        {"send": "/who\r"},
        {"expect": "2 online: alice, bob"},
        {"send": "/quit\r"},
    ]);
    let mut command = common::pty_drive(&server, &script, &["chat", &server.addr, "--name", "alice"]);
    command.env("TERM", "xterm").env_remove("NO_COLOR");
    let driving = std::thread::spawn(move || command.output().expect("python3 runs the pty driver"));

    runtime.block_on(async {
        // Wait for alice, then speak while her line is half typed.
        loop {
            if let ChatEvent::Join { name, .. } = next_event(&mut bob.feed).await
                && name == "alice"
            {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        bob.sender.say("lobby", "ping from bob").await.unwrap();
        loop {
            if let ChatEvent::Message { from, text, .. } = next_event(&mut bob.feed).await
                && from == "alice"
            {
                assert_eq!(text, "hello there");
                break;
            }
        }
    });
    let output = driving.join().unwrap();
    let shown = String::from_utf8_lossy(&output.stdout);
    assert!(shown.contains("EXIT 0"), "{shown}");
    assert!(
        shown.contains("\x1b[1;44mbob\x1b[0m: ping from bob"),
        "sender tag in colour: {shown}"
    );
}

/// The course's UDP chat console: a datagram is shown with its sender, the typed reply goes
/// back to that sender.
#[test]
fn udp_console_shows_messages_and_sends_replies() {
    for (lang, shown) in [("zh", "的一条消息:你好"), ("en", "]: 你好")] {
        let dir = tempfile::tempdir().unwrap();
        let mut console = sockit_command(dir.path())
            .args(["chat", "--serve-udp", "127.0.0.1:0", "--lang", lang])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut banner = String::new();
        BufReader::new(console.stderr.take().unwrap())
            .read_line(&mut banner)
            .unwrap();
        let addr = banner
            .split("udp ")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();

        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        peer.send_to("你好".as_bytes(), &addr).unwrap();
        let mut lines = BufReader::new(console.stdout.take().unwrap());
        let mut line = String::new();
        lines.read_line(&mut line).unwrap();
        let port = peer.local_addr().unwrap().port();
        assert!(line.contains(&format!("[127.0.0.1:{port}]")), "{line}");
        assert!(line.contains(shown), "{line}");

        console
            .stdin
            .as_mut()
            .unwrap()
            .write_all("收到\n".as_bytes())
            .unwrap();
        let mut reply = [0; 100];
        let (len, _) = peer.recv_from(&mut reply).unwrap();
        assert_eq!(std::str::from_utf8(&reply[..len]).unwrap(), "收到");
        // Like the course's server, it now waits for the next datagram until killed.
        console.kill().unwrap();
        console.wait().unwrap();
    }
}

/// Fuzzing found that a refusal quoted the whole offending name: a nickname of 10,000 DEL
/// characters (10 KB in the request) made a refusal of about 80 KB once escaped, larger than
/// any header may be, so the server closed the connection instead of answering.
#[tokio::test]
async fn a_huge_bad_name_is_refused_with_a_short_answer() {
    let server = InProcessServer::start("");
    let huge = "\u{7f}".repeat(10_000);
    let client = Client::connect(&server.addr, &server.client_config())
        .await
        .unwrap();
    match client.chat_login(&huge).await {
        Err(sockit::client::ClientError::Remote(error)) => {
            assert_eq!(error.code, ErrorCode::BadRequest);
            assert!(error.message.len() < 512, "{}", error.message);
        }
        Err(other) => panic!("expected a bad_request answer, got {other}"),
        Ok(_) => panic!("a 10,000-character nickname was accepted"),
    }
    let mut alice = login(&server, "alice").await;
    alice.sender.join("lobby").await.unwrap();
    drain(&mut alice, "lobby").await;
    for (to, text) in [(huge.as_str(), "hi"), ("bob", "ok")] {
        alice.sender.direct(to, text).await.unwrap();
        match next_incoming(&mut alice.feed).await {
            ChatIncoming::Refused { error, .. } => assert!(error.message.len() < 512, "{}", error.message),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
