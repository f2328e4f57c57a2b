//! The file service against hostile clients: every resource an upload or a listing makes the
//! server hold is bounded, partial uploads count and expire, and no file, name or tree shape
//! can freeze the server or make a directory impossible to remove.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{InProcessServer, file_server};
use sockit::auth::{self, AuthMode, SessionKeys};
use sockit::client::TransferOptions;
use sockit::services::files::MAX_DOWNLOADS_PER_SOURCE;
use sockit::wire::{Connection, ErrorCode, Frame, Header, Limits, Message, RemoteError};
use sockit::{Client, ClientError};
use tokio::time::timeout;

const PATIENCE: Duration = Duration::from_secs(20);

/// An authenticated connection speaking frames directly.
async fn raw(server: &InProcessServer) -> Connection {
    raw_from(server, "127.0.0.1").await
}

/// [`raw`] from another loopback address.
async fn raw_from(server: &InProcessServer, local: &str) -> Connection {
    session_from(server, local, None).await
}

/// [`raw_from`], with a receive buffer of `recv_buffer` bytes if given: a reader that never
/// reads then backs the server up at once.
async fn session_from(server: &InProcessServer, local: &str, recv_buffer: Option<u32>) -> Connection {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{local}:0").parse().unwrap()).unwrap();
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let stream = socket.connect(server.addr.parse().unwrap()).await.unwrap();
    // Downloads arrive as one body of the file's size.
    let limits = Limits::default().with_body_limit("get_data", u64::MAX);
    let mut conn = Connection::tcp(stream, limits);
    auth::connect(&mut conn, &SessionKeys::new(server.secret(), AuthMode::Noise))
        .await
        .unwrap();
    conn
}

async fn client(server: &InProcessServer) -> Client {
    Client::connect(&server.addr, &server.client_config())
        .await
        .unwrap()
}

async fn answer(conn: &mut Connection) -> Message {
    timeout(PATIENCE, conn.read_message())
        .await
        .expect("an answer in time")
        .unwrap()
        .expect("the connection stays open")
}

/// Sends `data` at `offset` of upload `id`, ends it with the hash of `whole` (the file as it
/// should land), and returns how the server answered.
async fn finish_upload(conn: &mut Connection, id: u64, offset: u64, data: &[u8], whole: &[u8]) -> String {
    let chunk = Header::new("put_data").with_id(Some(id)).with("offset", offset);
    conn.send(chunk, data).await.unwrap();
    let end = Header::new("put_end")
        .with_id(Some(id))
        .with("blake3", blake3::hash(whole).to_hex().as_str());
    conn.send(end, b"").await.unwrap();
    outcome(&answer(conn).await)
}

/// The error code of an answer, or its `cmd` when it is not an error.
fn outcome(message: &Message) -> String {
    match RemoteError::from_header(&message.header) {
        Some(error) => error.code.as_str().to_owned(),
        None => message.header.cmd().to_owned(),
    }
}

fn streamed_put(id: u64, path: &str, size: u64) -> Header {
    Header::new("put")
        .with_id(Some(id))
        .with("path", path)
        .with("size", size)
}

/// Starts a streamed upload of `size` bytes and sends `sent` of them; returns once the server
/// has written them (a later request on the connection has been answered).
async fn partial_upload(conn: &mut Connection, id: u64, path: &str, size: u64, sent: usize) {
    conn.send(streamed_put(id, path, size), b"").await.unwrap();
    assert_eq!(outcome(&answer(conn).await), "put_ready");
    if sent > 0 {
        let data = Header::new("put_data").with_id(Some(id)).with("offset", 0);
        conn.send(data, &vec![7u8; sent]).await.unwrap();
    }
    conn.send(Header::new("echo").with_id(Some(id + 1000)), b"sync")
        .await
        .unwrap();
    assert_eq!(outcome(&answer(conn).await), "echo");
}

fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asks for `count` uploads, one at a time; the outcome of each.
async fn ask_uploads(conn: &mut Connection, prefix: &str, count: u64) -> Vec<String> {
    let mut outcomes = Vec::new();
    for id in 1..=count {
        conn.send(streamed_put(id, &format!("{prefix}{id}"), 10), b"")
            .await
            .unwrap();
        outcomes.push(outcome(&answer(conn).await));
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_uploads_are_bounded_per_connection_per_source_and_per_server() {
    let (server, _root) =
        file_server("uploads_max_per_connection = 4\nuploads_max_per_source = 6\nuploads_max_total = 8");
    let mut hog = raw(&server).await;
    for id in 1..=50u64 {
        hog.writer
            .queue(streamed_put(id, &format!("p{id}"), 10), b"")
            .unwrap();
    }
    hog.writer.flush().await.unwrap();
    let mut outcomes = Vec::new();
    for _ in 1..=50 {
        outcomes.push(outcome(&answer(&mut hog).await));
    }
    assert!(outcomes[..4].iter().all(|o| o == "put_ready"), "{outcomes:?}");
    assert!(outcomes[4..].iter().all(|o| o == "busy"), "{outcomes:?}");
    // The session goes on.
    hog.send(Header::new("echo").with_id(Some(99)), b"still here")
        .await
        .unwrap();
    assert_eq!(answer(&mut hog).await.body.as_ref(), b"STILL HERE");
    // A second connection from the same address gets what is left of the address's bound...
    let mut same_source = raw(&server).await;
    assert_eq!(
        ask_uploads(&mut same_source, "q", 3).await,
        ["put_ready", "put_ready", "busy"]
    );
    // ... another address what is left of the server's.
    let mut elsewhere = raw_from(&server, "127.0.0.2").await;
    assert_eq!(
        ask_uploads(&mut elsewhere, "r", 3).await,
        ["put_ready", "put_ready", "busy"]
    );
    server.assert_serving().await;
    // Ending a connection gives its slots back.
    drop(hog);
    let deadline = Instant::now() + PATIENCE;
    let mut id = 1;
    loop {
        same_source
            .send(streamed_put(100 + id, &format!("s{id}"), 10), b"")
            .await
            .unwrap();
        if outcome(&answer(&mut same_source).await) == "put_ready" {
            break;
        }
        assert!(Instant::now() < deadline, "slots never came back");
        id += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_uploads_count_toward_the_quota() {
    let (server, root) = file_server("quota = 1000000");
    let mut quitter = raw(&server).await;
    partial_upload(&mut quitter, 1, "a", 600_000, 600_000).await;
    drop(quitter);
    assert_eq!(
        std::fs::metadata(root.join(".a.sockit-part")).unwrap().len(),
        600_000
    );
    let mut next = raw(&server).await;
    next.send(streamed_put(1, "b", 600_000), b"").await.unwrap();
    assert_eq!(
        outcome(&answer(&mut next).await),
        ErrorCode::QuotaExceeded.as_str()
    );
    // Within what is left, uploads still go through.
    let mut client = client(&server).await;
    let local = server.dir.path().join("small");
    std::fs::write(&local, vec![1u8; 300_000]).unwrap();
    client
        .put_file(&local, "small", TransferOptions::default(), &mut |_| {})
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_uploads_cannot_jointly_exceed_the_quota() {
    let (server, root) = file_server("quota = 1000000");
    let mut first = raw(&server).await;
    first.send(streamed_put(1, "x", 600_000), b"").await.unwrap();
    assert_eq!(outcome(&answer(&mut first).await), "put_ready");
    let mut second = raw(&server).await;
    second.send(streamed_put(1, "y", 600_000), b"").await.unwrap();
    assert_eq!(
        outcome(&answer(&mut second).await),
        ErrorCode::QuotaExceeded.as_str()
    );
    let data = vec![3u8; 500_000];
    let inline =
        streamed_put(2, "z", data.len() as u64).with("blake3", blake3::hash(&data).to_hex().as_str());
    second.send(inline, &data).await.unwrap();
    assert_eq!(
        outcome(&answer(&mut second).await),
        ErrorCode::QuotaExceeded.as_str()
    );
    // The first upload completes within its reservation; then the space is taken for real.
    let data = vec![5u8; 600_000];
    assert_eq!(finish_upload(&mut first, 1, 0, &data, &data).await, "put_ok");
    assert_eq!(std::fs::read(root.join("x")).unwrap(), data);
    second.send(streamed_put(3, "y", 600_000), b"").await.unwrap();
    assert_eq!(
        outcome(&answer(&mut second).await),
        ErrorCode::QuotaExceeded.as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_partial_files_expire_but_running_uploads_keep_theirs() {
    let (server, root) = file_server("partial_max_age = \"1s\"");
    let mut running = raw(&server).await;
    partial_upload(&mut running, 1, "kept", 100, 40).await;
    let mut quitter = raw(&server).await;
    partial_upload(&mut quitter, 1, "gone", 100, 40).await;
    drop(quitter);
    std::fs::create_dir_all(root.join("d/e")).unwrap();
    std::fs::write(root.join("d/e/.old.sockit-part"), b"left by a crash").unwrap();
    wait_until("the abandoned partial files are removed", || {
        !root.join(".gone.sockit-part").exists() && !root.join("d/e/.old.sockit-part").exists()
    });
    assert!(
        root.join(".kept.sockit-part").exists(),
        "a running upload's partial is kept"
    );
    let mut whole = vec![7u8; 40];
    whole.extend_from_slice(&[8u8; 60]);
    assert_eq!(
        finish_upload(&mut running, 1, 40, &[8u8; 60], &whole).await,
        "put_ok"
    );
    assert_eq!(std::fs::read(root.join("kept")).unwrap(), whole);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_at_the_top_of_the_root_does_not_break_uploads_under_a_quota() {
    let (server, root) = file_server("quota = 10000000");
    let mut client = client(&server).await;
    client.mkdir("top", false).await.unwrap();
    let local = server.dir.path().join("f");
    std::fs::write(&local, b"fits").unwrap();
    client
        .put_file(&local, "top/f", TransferOptions::default(), &mut |_| {})
        .await
        .unwrap();
    client
        .put_file(&local, "f", TransferOptions::default(), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(std::fs::read(root.join("top/f")).unwrap(), b"fits");
}

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preserved_modes_never_carry_setuid_setgid_or_sticky() {
    let (server, root) = file_server("");
    let mut client = client(&server).await;
    let preserve = TransferOptions {
        force: false,
        preserve: true,
    };
    let local = server.dir.path().join("tool");
    std::fs::write(&local, b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o6777)).unwrap();
    assert_eq!(
        mode_of(&local),
        0o6777,
        "the test needs a setuid/setgid local file"
    );
    client
        .put_file(&local, "tool", preserve, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(mode_of(&root.join("tool")), 0o777, "upload");

    std::fs::write(root.join("theirs"), b"#!/bin/sh\n").unwrap();
    std::fs::set_permissions(root.join("theirs"), std::fs::Permissions::from_mode(0o7755)).unwrap();
    let target = server.dir.path().join("theirs");
    client
        .get_file("theirs", &target, preserve, &mut |_| {})
        .await
        .unwrap();
    assert_eq!(mode_of(&target), 0o755, "download");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_holding_an_interrupted_upload_is_removed() {
    let (server, root) = file_server("");
    let mut client = client(&server).await;
    client.mkdir("d/e", true).await.unwrap();
    let mut quitter = raw(&server).await;
    partial_upload(&mut quitter, 1, "d/e/f", 100, 10).await;
    drop(quitter);
    assert!(root.join("d/e/.f.sockit-part").exists());
    client.remove("d", true).await.unwrap();
    assert!(!root.join("d").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_deeper_than_any_path_is_removed() {
    use rustix::fs::{Mode, OFlags};
    let (server, root) = file_server("");
    let mut client = client(&server).await;
    client.mkdir("deep", false).await.unwrap();
    // 1,500 levels of `abc/`: 6,000 bytes of path, more than the kernel takes in one call.
    let mut dir = rustix::fs::open(
        root.join("deep"),
        OFlags::RDONLY | OFlags::DIRECTORY,
        Mode::empty(),
    )
    .unwrap();
    for _ in 0..1500 {
        rustix::fs::mkdirat(&dir, "abc", Mode::from_raw_mode(0o755)).unwrap();
        let file = rustix::fs::openat(
            &dir,
            ".x.sockit-part",
            OFlags::CREATE | OFlags::WRONLY,
            Mode::from_raw_mode(0o644),
        );
        drop(file.unwrap());
        dir = rustix::fs::openat(&dir, "abc", OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
    }
    client.remove("deep", true).await.unwrap();
    assert!(!root.join("deep").exists());
    assert_eq!(client.echo("after").await.unwrap().as_ref(), b"AFTER");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_in_the_root_is_refused_and_freezes_nobody() {
    let (server, root) = file_server("");
    std::fs::create_dir_all(&root).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(root.join("pipe"))
        .status()
        .unwrap();
    assert!(status.success());
    let mut getters = tokio::task::JoinSet::new();
    for n in 0..2 {
        let mut client = client(&server).await;
        let target = server.dir.path().join(format!("pipe{n}"));
        getters.spawn(async move {
            let mut progress = |_| {};
            let got = client.get_file("pipe", &target, TransferOptions::default(), &mut progress);
            timeout(PATIENCE, got).await.expect("refused in time")
        });
    }
    let mut bystander = client(&server).await;
    let echoed = timeout(PATIENCE, bystander.echo("meanwhile")).await;
    assert_eq!(echoed.expect("echo served").unwrap().as_ref(), b"MEANWHILE");
    while let Some(got) = getters.join_next().await {
        match got.unwrap() {
            Err(ClientError::Remote(error)) => assert_eq!(error.code, ErrorCode::NotFile, "{error}"),
            other => panic!("a FIFO was served: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_directory_is_listed_in_bounded_pages() {
    let (server, root) = file_server("");
    let big = root.join("big");
    std::fs::create_dir_all(&big).unwrap();
    let count = 20_000;
    let mut names: Vec<String> = (0..count)
        .map(|n| format!("file-{n:05}-{}", "x".repeat(40)))
        .collect();
    for name in &names {
        std::fs::File::create(big.join(name)).unwrap();
    }
    std::fs::File::create(big.join(".hidden.sockit-part")).unwrap();
    names.sort();
    let mut conn = raw(&server).await;
    conn.send(Header::new("ls").with_id(Some(1)).with("path", "big"), b"")
        .await
        .unwrap();
    let page = answer(&mut conn).await;
    assert_eq!(outcome(&page), "ls");
    let entries: Vec<serde_json::Value> = serde_json::from_slice(&page.body).unwrap();
    assert!(
        entries.len() < count && !entries.is_empty(),
        "{} entries in one reply",
        entries.len()
    );
    let next = page
        .header
        .str("next")
        .expect("a cursor to the next page")
        .to_owned();
    assert_eq!(next, names[entries.len() - 1]);
    conn.send(Header::new("echo").with_id(Some(2)), b"on")
        .await
        .unwrap();
    assert_eq!(answer(&mut conn).await.body.as_ref(), b"ON");

    let mut client = client(&server).await;
    let listed: Vec<String> = client
        .list("big")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(listed, names);
}

/// Each download a client never reads holds a thread and its read-ahead: they are bounded per
/// address (and in all), past which a `get` is refused with `busy` while others are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_nobody_reads_are_bounded_per_address() {
    let (server, root) = file_server("");
    std::fs::write(root.join("big"), vec![7u8; 16 << 20]).unwrap();
    let get = |id: u64| Header::new("get").with_id(Some(id)).with("path", "big");
    let mut stalled = Vec::new();
    for id in 0..MAX_DOWNLOADS_PER_SOURCE as u64 {
        let mut conn = session_from(&server, "127.0.0.2", Some(4096)).await;
        assert_download_starts(&mut conn, get(id)).await;
        stalled.push(conn);
    }
    let mut one_more = raw_from(&server, "127.0.0.2").await;
    one_more.send(get(99), b"").await.unwrap();
    assert_eq!(outcome(&answer(&mut one_more).await), "busy");
    assert_download_starts(&mut raw(&server).await, get(100)).await;
    drop(stalled);
}

/// Sends `get` and checks the download starts: the first thing back is its `get_data`.
async fn assert_download_starts(conn: &mut Connection, get: Header) {
    conn.send(get, b"").await.unwrap();
    let started = timeout(PATIENCE, conn.read_frame())
        .await
        .expect("an answer")
        .unwrap();
    assert!(
        matches!(&started, Some(Frame::Header(header)) if header.cmd() == "get_data"),
        "{started:?}"
    );
}
