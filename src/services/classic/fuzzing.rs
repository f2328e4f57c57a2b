//! Checks run by the classic fuzz targets (fuzz/) and by the test that replays their corpus,
//! kept in the library so both run exactly the same code.
//!
//! Each check serves the fuzz input to the real classic service over a loopback TCP
//! connection in this process (or hands it to the UDP service's `answer`), exactly as a
//! course client's bytes would arrive, and checks what comes back against the wire format
//! the course's clients read. Commands are never run: the exec checks use a runner with
//! execution disabled, which still reads, frames and answers every request.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "a fuzz check panics on purpose when an invariant breaks"
)]

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hmac::Mac;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

use super::MAX_HEADER_LEN;
use super::echo::{CHALLENGE_LEN, HmacEcho, UdpUpperEcho, UpperEcho};
use super::exec::{TcpExec, UdpExec};
use super::ftp::Ftp;
use super::greeting::{Greeting, WELCOME, greet};
use crate::auth::{FailureThrottle, Secret};
use crate::proto::path::PARTIAL_SUFFIX;
use crate::services::echo::upper_no_longer;
use crate::services::exec::{ExecConfig, Runner};
use crate::services::files::{FileStore, FilesConfig};
use crate::services::unframed::{DatagramService, ServiceStream, StreamService};
use crate::text::escape;

/// How long a service may take to answer one input before the check calls it hung.
const HANG_LIMIT: Duration = Duration::from_secs(10);

/// The upper-case echoes. The first byte picks the service: 0 the TCP echo (8081); 1 the UDP
/// echo (9001), and the UDP chat console's display of the datagram; 2 the HMAC echo (9999)
/// answered with the rest of the input as the digest; 3 the HMAC echo answered correctly and
/// then sent the rest. Echoed bytes are the input upper-cased (exactly, for ASCII, whatever
/// the reads; over UDP never longer than the input); a wrong digest gets the challenge and
/// nothing else.
pub fn check_classic_echo(data: &[u8]) {
    let Some((&selector, input)) = data.split_first() else {
        return;
    };
    let secret = Secret::from_text("fuzzing-secret").expect("a valid secret");
    match selector % 4 {
        0 => check_echoed(input, &converse(&UpperEcho, input)),
        1 => {
            let replies = block_on(UdpUpperEcho.answer(input, loopback_peer()));
            assert_eq!(replies.len(), 1, "one datagram per datagram");
            assert!(replies[0].len() <= input.len(), "the reply grew");
            assert_eq!(&replies[0][..], &upper_no_longer(input)[..]);
            // The same datagram at the course's UDP chat (`sockit chat --serve-udp`), shown.
            let shown = escape(&String::from_utf8_lossy(input));
            assert!(
                !shown.chars().any(char::is_control),
                "{shown:?} reaches the terminal"
            );
        }
        2 => {
            let service = HmacEcho::new(secret, Duration::from_secs(5), no_backoff());
            let output = converse(&service, input);
            assert_eq!(
                output.len(),
                CHALLENGE_LEN,
                "a wrong answer got more than the challenge"
            );
        }
        _ => {
            let service = &HmacEcho::new(secret, Duration::from_secs(5), no_backoff());
            let output = block_on(session(service, |mut client: TcpStream| async move {
                let mut challenge = [0; CHALLENGE_LEN];
                client.read_exact(&mut challenge).await.expect("a challenge");
                let digest = service.expected(&challenge).finalize().into_bytes();
                client.write_all(&digest).await.expect("the answer sent");
                send_and_read(client, input).await
            }));
            check_echoed(input, &output);
        }
    }
}

fn check_echoed(input: &[u8], output: &[u8]) {
    if input.is_ascii() {
        assert_eq!(output, input.to_ascii_uppercase(), "not the input upper-cased");
    } else {
        assert!(!output.is_empty(), "nothing echoed");
    }
}

/// The course's remote shells, with execution disabled. The first byte picks: even, TCP
/// (8082), where every reply is `struct.pack('i', len)`, `{"data_size": N, "msg_length": N}`
/// and N bytes of explanation; odd, UDP (9003), where a loopback source gets two datagrams
/// (stderr, then an empty stdout) and any other source nothing. The second byte picks the
/// UDP source.
pub fn check_classic_exec(data: &[u8]) {
    let [selector, source, input @ ..] = data else {
        return;
    };
    let runner = Arc::new(Runner::new(ExecConfig::default()));
    if selector % 2 == 0 {
        let service = TcpExec::new(runner);
        // `ask_once` waits for a reply, which an empty request never gets.
        let output = if input.is_empty() {
            converse(&service, input)
        } else {
            block_on(session(&service, |client| ask_once(client, input)))
        };
        let replies = split_replies::<ExecReply>(&output);
        assert_eq!(
            replies.is_empty(),
            input.is_empty(),
            "requests and replies differ"
        );
        for (header, body) in replies {
            assert_eq!(header.data_size, header.msg_length);
            assert_eq!(header.data_size, body.len());
            assert!(body.starts_with(b"sockit: ") && body.ends_with(b"\n"), "{body:?}");
        }
        return;
    }
    let from = udp_source(*source);
    let replies = block_on(UdpExec::new(runner, false).answer(input, from));
    if super::is_loopback(from.ip()) {
        assert_eq!(replies.len(), 2, "stderr then stdout");
        assert!(replies[0].starts_with(b"sockit: "));
        assert!(replies[1].is_empty(), "a disabled runner printed on stdout");
    } else {
        assert!(replies.is_empty(), "answered a command from {from}");
    }
}

/// Sends `input` and waits for a whole reply before closing, as the course's client does: a
/// client that closes while its command runs has the command stopped, unanswered.
async fn ask_once(mut client: TcpStream, input: &[u8]) -> Vec<u8> {
    client.write_all(input).await.expect("the command sent");
    let mut output = Vec::new();
    let mut buffer = [0; 4096];
    while next_reply::<ExecReply>(&output).is_none() {
        match client.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => output.extend_from_slice(&buffer[..n]),
        }
    }
    output.extend(send_and_read(client, &[]).await);
    output
}

#[derive(Deserialize)]
struct ExecReply {
    data_size: usize,
    msg_length: usize,
}

fn udp_source(selector: u8) -> SocketAddr {
    let ip = match selector % 4 {
        0 => "127.0.0.1",
        1 => "::1",
        2 => "::ffff:127.0.0.1",
        _ => "192.0.2.1",
    };
    SocketAddr::new(ip.parse().expect("an IP address"), 40_000)
}

/// The FTP homework's server, its file root holding `a.txt`, `dir/b.txt` and a symlink
/// `out` to a file beside the root. Whatever the input: nothing is written outside the root,
/// no partial file is left, no stored name is more than a base name, the secret beside the
/// root is never sent, and the output is whole `get` replies, each with as many bytes as its
/// header says.
pub fn check_classic_ftp(data: &[u8]) {
    let (base, output) = serve_ftp(data);
    for (header, body) in split_replies::<GetReply>(&output) {
        assert_eq!(header.cmd, "get");
        assert_eq!(header.filesize, body.len() as u64);
        if header.error.is_some() {
            assert_eq!(header.filesize, 0, "an error with bytes");
        }
        assert!(
            !body.windows(SECRET_MARK.len()).any(|w| w == SECRET_MARK),
            "sent the secret"
        );
    }
    let mut beside: Vec<_> = std::fs::read_dir(base.path())
        .expect("the fuzz directory")
        .map(|entry| entry.expect("an entry").file_name())
        .collect();
    beside.sort();
    assert_eq!(beside, ["root", "secret"], "written outside the root");
    check_stored(&base.path().join("root"));
}

/// What the FTP server sends for `data`, and its directory (the root and the secret beside it).
fn serve_ftp(data: &[u8]) -> (tempfile::TempDir, Vec<u8>) {
    let base = fuzz_dir();
    let root = base.path().join("root");
    std::fs::create_dir_all(root.join("dir")).expect("a root");
    std::fs::write(root.join("a.txt"), b"alpha").expect("a file");
    std::fs::write(root.join("dir/b.txt"), b"beta").expect("a file");
    std::fs::write(base.path().join("secret"), SECRET_MARK).expect("a file");
    std::os::unix::fs::symlink(base.path().join("secret"), root.join("out")).expect("a link");
    let config = FilesConfig {
        root,
        quota: Some(1 << 20),
        ..FilesConfig::default()
    };
    let store = Arc::new(FileStore::open(&config).expect("a file root"));
    let output = converse(&Ftp::new(store), data);
    (base, output)
}

const SECRET_MARK: &[u8] = b"not-for-ftp-clients";

#[derive(Deserialize)]
struct GetReply {
    cmd: String,
    filesize: u64,
    error: Option<String>,
}

/// Files stored by `put` are plain files with valid base names in the root itself, and no
/// partial file is left behind.
fn check_stored(root: &Path) {
    for entry in std::fs::read_dir(root).expect("the root") {
        let entry = entry.expect("an entry");
        let name = entry.file_name();
        let name = name.to_str().expect("a UTF-8 name");
        assert!(!name.ends_with(PARTIAL_SUFFIX), "partial file {name} left");
        assert!(!name.chars().any(char::is_control), "stored {name:?}");
        if entry.file_type().expect("a type").is_dir() {
            assert_eq!(name, "dir", "a directory made by put");
            check_stored(&entry.path());
        }
    }
}

/// The threaded greeting server: `Welcome!` first, then only greetings, one per message
/// when the whole input arrives in one read.
pub fn check_classic_greeting(data: &[u8]) {
    let output = converse(&Greeting, data);
    let rest = output.strip_prefix(WELCOME).expect("a welcome first");
    if rest.is_empty() {
        return;
    }
    assert!(rest.starts_with(b"Hello, "), "{rest:?}");
    if let Some(greeting) = greet(data) {
        // A single read gives exactly this; several reads give several greetings.
        assert!(rest == greeting || rest.len() > greeting.len(), "{rest:?}");
    }
}

/// `output` cut into the course's replies: `struct.pack('i', len)`, `len` bytes of JSON
/// with a `filesize`/`data_size`, then that many bytes; panics on anything else.
fn split_replies<T: Reply>(mut output: &[u8]) -> Vec<(T, &[u8])> {
    let mut replies = Vec::new();
    while !output.is_empty() {
        let (header, body, rest) = next_reply(output).expect("a whole reply");
        replies.push((header, body));
        output = rest;
    }
    replies
}

/// The first reply of `output` and what follows it; `None` while it is incomplete.
fn next_reply<T: Reply>(output: &[u8]) -> Option<(T, &[u8], &[u8])> {
    let (prefix, rest) = output.split_at_checked(4)?;
    let len = i32::from_le_bytes(prefix.try_into().expect("4 bytes"));
    let len = usize::try_from(len).expect("a positive length");
    assert!((1..=MAX_HEADER_LEN).contains(&len), "header length {len}");
    let (json, rest) = rest.split_at_checked(len)?;
    let header: T = serde_json::from_slice(json).expect("a header the course can read");
    let (body, rest) = rest.split_at_checked(header.size())?;
    Some((header, body, rest))
}

/// A reply header of the course's: JSON that says how many bytes follow it.
trait Reply: for<'de> Deserialize<'de> {
    fn size(&self) -> usize;
}

impl Reply for ExecReply {
    fn size(&self) -> usize {
        self.data_size
    }
}

impl Reply for GetReply {
    fn size(&self) -> usize {
        usize::try_from(self.filesize).expect("a size in memory")
    }
}

/// Sends `input` to `service` over loopback TCP, closes the sending side, and returns
/// everything the service sent until it closed.
fn converse(service: &dyn StreamService, input: &[u8]) -> Vec<u8> {
    block_on(session(service, |client| send_and_read(client, input)))
}

async fn send_and_read(mut client: TcpStream, input: &[u8]) -> Vec<u8> {
    // The service may close before reading everything (a refusal): later writes then fail.
    let _ = client.write_all(input).await;
    let _ = client.shutdown().await;
    let mut output = Vec::new();
    let _ = client.read_to_end(&mut output).await;
    output
}

/// Runs `service` on one connection while `client` talks to it; what `client` returns.
async fn session<F, Fut>(service: &dyn StreamService, client: F) -> Vec<u8>
where
    F: FnOnce(TcpStream) -> Fut,
    Fut: Future<Output = Vec<u8>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let addr = listener.local_addr().expect("a bound address");
    let (connected, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (server_side, peer) = accepted.expect("a connection");
    let stream = ServiceStream::new(server_side, Some(HANG_LIMIT), CancellationToken::new());
    let serving = service.serve(stream, peer);
    let talking = client(connected.expect("connected"));
    let (output, _served) = tokio::time::timeout(HANG_LIMIT, async { tokio::join!(talking, serving) })
        .await
        .expect("the service hung");
    output
}

fn block_on<T>(future: impl Future<Output = T>) -> T {
    thread_local! {
        static RUNTIME: RefCell<Option<Runtime>> = const { RefCell::new(None) };
    }
    RUNTIME.with(|runtime| {
        let mut runtime = runtime.borrow_mut();
        let runtime = runtime.get_or_insert_with(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
        });
        runtime.block_on(future)
    })
}

fn loopback_peer() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40_000))
}

/// A fresh directory, in memory where there is a tmpfs, so that fsync costs nothing.
fn fuzz_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    match shm.is_dir() {
        true => tempfile::tempdir_in(shm),
        false => tempfile::tempdir(),
    }
    .expect("a temporary directory")
}

/// A failure throttle that never refuses: each fuzz input is a fresh attempt.
fn no_backoff() -> Arc<FailureThrottle> {
    Arc::new(FailureThrottle::new(Duration::ZERO, Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::classic::header_bytes;

    fn get(name: &str) -> Vec<u8> {
        header_bytes(&serde_json::json!({"cmd": "get", "filename": name})).unwrap()
    }

    /// The checks above are only as good as what they see: the services' real answers.
    #[test]
    fn the_checks_see_what_the_services_send() {
        let (_base, output) = serve_ftp(&[get("a.txt"), get("out")].concat());
        let replies = split_replies::<GetReply>(&output);
        assert_eq!(replies.len(), 2);
        assert_eq!(replies[0].1, b"alpha");
        assert!(replies[1].0.error.is_some());

        let runner = Arc::new(Runner::new(ExecConfig::default()));
        let service = TcpExec::new(runner);
        let output = block_on(session(&service, |client| ask_once(client, b"ls")));
        let replies = split_replies::<ExecReply>(&output);
        assert_eq!(replies.len(), 1);
        assert!(String::from_utf8_lossy(replies[0].1).contains("disabled"));

        assert_eq!(converse(&Greeting, b"alice"), b"Welcome!Hello, alice!");
        assert_eq!(converse(&UpperEcho, b"abc"), b"ABC");
        let secret = Secret::from_text("fuzzing-secret").unwrap();
        let hmac = HmacEcho::new(secret, Duration::from_secs(5), no_backoff());
        assert_eq!(converse(&hmac, &[0; 16]).len(), CHALLENGE_LEN);
    }
}
