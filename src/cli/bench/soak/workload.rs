//! The mixed workload: library clients doing echo, exec, file transfers, chat and time through
//! the fault proxy, checking every answer; and `sockit put` processes killed mid-transfer.
//!
//! A connection error is an interruption the proxy may have caused: the client reconnects and
//! carries on (transfers resume). A wrong answer, a server error or a transfer that cannot
//! finish is a failure.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::RngExt;
use sockit::client::{ChatIncoming, ExecEvent, Target, TransferOptions, ask_datagram};
use sockit::proto::chat::ChatEvent;
use sockit::proto::exec::ExecRequest;
use sockit::server::udp::REPLIES_PER_SECOND;
use sockit::wire::ErrorCode;
use sockit::{Client, ClientConfig, ClientError};
use tokio::time::timeout;

use super::tally::Tally;

/// Attempts at one transfer before it counts as lost.
const TRANSFER_ATTEMPTS: usize = 40;
/// The longest any one answer may take: well past the proxy's longest stall.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// What every worker shares.
pub struct Load {
    pub proxy: String,
    pub server: String,
    pub time_addr: String,
    pub config: ClientConfig,
    pub tally: Arc<Tally>,
    pub until: Instant,
    /// A scratch directory for local files.
    pub scratch: PathBuf,
    /// The server's file root, to check uploads byte for byte.
    pub root: PathBuf,
    /// Put into every command's environment, to find their processes afterwards.
    pub token: String,
    /// How many workers ask the UDP time service.
    pub udp_workers: usize,
}

/// What a failed step means for the run.
enum Trouble {
    /// The connection broke (the proxy's doing, most likely): reconnect and go on.
    Interrupted(ClientError),
    Failed(String),
    /// The step ended its session on purpose: reconnect, nothing went wrong.
    Abandoned,
}

impl From<ClientError> for Trouble {
    fn from(error: ClientError) -> Trouble {
        match error {
            ClientError::Remote(ref remote) if remote.code == ErrorCode::Busy => Trouble::Interrupted(error),
            ClientError::Remote(remote) => Trouble::Failed(format!("server error: {remote}")),
            ClientError::Protocol(text) => Trouble::Failed(format!("protocol error: {text}")),
            other => Trouble::Interrupted(other),
        }
    }
}

type Step<T> = Result<T, Trouble>;

/// The interruption that is the server's answer, not a broken connection.
pub const BUSY: &str = "server busy";

const UDP_ROLE: usize = 9;

/// Which part of the workload worker `index` does: one in ten each chats and asks over UDP.
fn role_of(index: usize) -> usize {
    index % 10
}

/// How many of `clients` workers ask the UDP time service.
pub fn udp_workers(clients: usize) -> usize {
    (0..clients).filter(|&index| role_of(index) == UDP_ROLE).count()
}

/// Runs one worker until the deadline; its role follows from its index.
pub async fn worker(load: Arc<Load>, index: usize) {
    let mut client: Option<Client> = None;
    let mut round = 0u64;
    while Instant::now() < load.until {
        round += 1;
        let outcome = match role_of(index) {
            8 => chat(&load, index, round).await,
            UDP_ROLE => udp_time(&load).await,
            role => match session(&load, &mut client).await {
                Ok(session) => match role {
                    0..=2 => echo(&load, session).await,
                    3 => native_time(&load, session).await,
                    4 | 5 => exec(&load, session, round).await,
                    _ => files(&load, session, index, round).await,
                },
                Err(trouble) => Err(trouble),
            },
        };
        match outcome {
            Ok(()) => {}
            Err(Trouble::Interrupted(error)) => {
                load.tally.add(&format!("interrupted: {}", kind_of(&error)), 1);
                client = None;
            }
            Err(Trouble::Abandoned) => client = None,
            Err(Trouble::Failed(what)) => {
                load.tally.fail(&what);
                client = None;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn kind_of(error: &ClientError) -> &'static str {
    match error {
        ClientError::Handshake(_) => "during the handshake",
        ClientError::Timeout(_) => "connect timeout",
        ClientError::Remote(_) => BUSY,
        _ => "connection lost",
    }
}

/// The worker's session, opened again after an interruption.
async fn session<'a>(load: &Load, client: &'a mut Option<Client>) -> Step<&'a mut Client> {
    if client.is_none() {
        *client = Some(Client::connect(&load.proxy, &load.config).await?);
    }
    Ok(client.as_mut().expect("just connected"))
}

/// Bounds a step in time: no answer within [`ANSWER_WITHIN`] is a failure, not a hang.
async fn within<T>(what: &str, step: impl Future<Output = Step<T>>) -> Step<T> {
    timeout(ANSWER_WITHIN, step).await.unwrap_or_else(|_| {
        Err(Trouble::Failed(format!(
            "{what}: no answer within {ANSWER_WITHIN:?}"
        )))
    })
}

async fn echo(load: &Load, client: &mut Client) -> Step<()> {
    let size = match rand::rng().random_range(0..10) {
        0 => rand::rng().random_range(1024..64 * 1024),
        _ => rand::rng().random_range(1..256),
    };
    let text: Vec<u8> = random_bytes(size).iter().map(|b| b'a' + b % 26).collect();
    let reply = within("echo", async { Ok(client.echo(&text).await?) }).await?;
    if reply != text.to_ascii_uppercase() {
        return Err(Trouble::Failed(format!(
            "echo of {size} bytes came back different"
        )));
    }
    load.tally.add("done: echo", 1);
    Ok(())
}

async fn native_time(load: &Load, client: &mut Client) -> Step<()> {
    let time = within("time", async { Ok(client.time(None).await?) }).await?;
    let skew = (time.unix_ms - unix_ms()).abs();
    if skew > 60_000 {
        return Err(Trouble::Failed(format!("time is {skew} ms off")));
    }
    load.tally.add("done: time (native)", 1);
    Ok(())
}

/// The course's UDP time service, asked directly (the proxy relays TCP only). All UDP workers
/// together stay at half the server's per-source reply rate: past it, datagrams are dropped
/// by design (reflection defence), and this one address is every UDP worker's.
async fn udp_time(load: &Load) -> Step<()> {
    let workers = load.udp_workers.max(1) as f64;
    tokio::time::sleep(Duration::from_secs_f64(workers * 2.0 / REPLIES_PER_SECOND)).await;
    let target: Target = load.time_addr.parse().map_err(Trouble::Failed)?;
    let answer = ask_datagram(&target, b"%Y", Duration::from_millis(500), 10)
        .await
        .map_err(|e| Trouble::Failed(format!("udp time: {e}")))?;
    let year = chrono::Local::now().format("%Y").to_string();
    if answer != year.as_bytes() {
        return Err(Trouble::Failed(format!("udp time answered {answer:?}")));
    }
    load.tally.add("done: time (UDP)", 1);
    Ok(())
}

/// A quick command, a command fed through stdin, or a long one abandoned while it runs
/// (the server must kill it).
async fn exec(load: &Load, client: &mut Client, round: u64) -> Step<()> {
    let mut request = ExecRequest::default();
    request.env.insert("SOAK_TOKEN".into(), load.token.clone());
    // Each exec worker's first command is one it abandons.
    match round % 8 {
        1 => {
            request.command = Some("sleep 60".into());
            within("exec start", async { Ok(client.exec(&request).await.map(drop)?) }).await?;
            load.tally.add("done: exec abandoned while running", 1);
            // Dropping the session abandons the command; the caller reconnects.
            Err(Trouble::Abandoned)
        }
        2..=4 => exec_stdin(load, client, request).await,
        _ => {
            request.command = Some(format!("echo soak {round}"));
            let (stdout, _, report) =
                within("exec", async { Ok(client.exec_output(&request).await?) }).await?;
            if stdout != format!("soak {round}\n").as_bytes() || report.code != Some(0) {
                return Err(Trouble::Failed(format!("exec printed {stdout:?}, {report:?}")));
            }
            load.tally.add("done: exec", 1);
            Ok(())
        }
    }
}

/// `cat` with random stdin: what comes out must be what went in.
async fn exec_stdin(load: &Load, client: &mut Client, mut request: ExecRequest) -> Step<()> {
    request.command = Some("cat".into());
    request.stdin = true;
    let size = rand::rng().random_range(1..256 * 1024);
    let input = random_bytes(size);
    let output = within("exec with stdin", async {
        let mut command = client.exec(&request).await?;
        let feed = async {
            command.input.write_stdin(&input).await?;
            command.input.close_stdin().await
        };
        let collect = async {
            let mut stdout = Vec::new();
            loop {
                match command.output.next_event().await? {
                    ExecEvent::Stdout(bytes) => stdout.extend_from_slice(&bytes),
                    ExecEvent::Stderr(_) => {}
                    ExecEvent::Exit(report) => return Ok::<_, ClientError>((stdout, report)),
                }
            }
        };
        let (fed, collected) = tokio::join!(feed, collect);
        fed?;
        Ok(collected?)
    })
    .await?;
    if output.0 != input || output.1.code != Some(0) {
        return Err(Trouble::Failed(format!(
            "cat returned {} of {size} bytes, {:?}",
            output.0.len(),
            output.1
        )));
    }
    load.tally.add("done: exec with stdin", 1);
    Ok(())
}

/// Uploads a random file and downloads it again, resuming after cuts; both copies are checked
/// byte for byte.
async fn files(load: &Load, client: &mut Client, index: usize, round: u64) -> Step<()> {
    let size = match rand::rng().random_range(0..4) {
        0 => rand::rng().random_range(0..64 * 1024),
        _ => rand::rng().random_range(256 * 1024..4 * 1024 * 1024),
    };
    let name = format!("w{index}-{round}.bin");
    let local = load.scratch.join(&name);
    let data = random_bytes(size);
    tokio::fs::write(&local, &data)
        .await
        .map_err(|e| Trouble::Failed(format!("scratch file: {e}")))?;
    let result = transfer_both_ways(load, client, &name, &local, &data).await;
    let _ = tokio::fs::remove_file(&local).await;
    let _ = tokio::fs::remove_file(load.root.join(&name)).await;
    result
}

async fn transfer_both_ways(
    load: &Load,
    first: &mut Client,
    name: &str,
    local: &Path,
    data: &[u8],
) -> Step<()> {
    let options = TransferOptions::default();
    let mut fresh: Option<Client> = None;
    let mut uploaded = false;
    let copy = local.with_extension("back");
    for attempt in 0..TRANSFER_ATTEMPTS {
        let client = if attempt == 0 {
            &mut *first
        } else {
            match session(load, &mut fresh).await {
                Ok(client) => client,
                Err(Trouble::Interrupted(_)) => continue,
                Err(other) => return Err(other),
            }
        };
        let step = if uploaded {
            within("get", async {
                Ok(client.get_file(name, &copy, options, &mut |_| {}).await?)
            })
            .await
        } else {
            within("put", async {
                Ok(client.put_file(local, name, options, &mut |_| {}).await?)
            })
            .await
        };
        match step {
            Ok(done) => {
                if done.resumed_from > 0 {
                    load.tally.add("files: transfers resumed", 1);
                }
                let landed = if uploaded {
                    copy.clone()
                } else {
                    load.root.join(name)
                };
                let bytes = tokio::fs::read(&landed).await.unwrap_or_default();
                let _ = tokio::fs::remove_file(&copy).await;
                if bytes != data {
                    load.tally.add("data lost", 1);
                    return Err(Trouble::Failed(format!(
                        "{name}: the copy differs from the original"
                    )));
                }
                load.tally.add("files: verified byte-exact", 1);
                if uploaded {
                    return Ok(());
                }
                uploaded = true;
            }
            Err(Trouble::Interrupted(error)) => {
                load.tally
                    .add(&format!("interrupted: {} (transfer)", kind_of(&error)), 1);
                fresh = None;
                if attempt == 0 {
                    // The worker's own session is broken too; it reconnects on its next round.
                    *first = Client::connect(&load.proxy, &load.config).await?;
                }
            }
            Err(failed) => return Err(failed),
        }
    }
    let _ = tokio::fs::remove_file(&copy).await;
    load.tally.add("data lost", 1);
    Err(Trouble::Failed(format!(
        "{name}: not transferred in {TRANSFER_ATTEMPTS} attempts"
    )))
}

/// Logs in, joins a room, and says numbered lines; each must come back, in order.
async fn chat(load: &Load, index: usize, round: u64) -> Step<()> {
    let client = Client::connect(&load.proxy, &load.config).await?;
    let mut session = within("chat login", async {
        Ok(client.chat_login(&format!("w{index}-{round}")).await?)
    })
    .await?;
    let room = format!("room{}", index % 4);
    session.sender.join(&room).await?;
    for line in 0..20 {
        let text = format!("w{index} round {round} line {line}");
        session.sender.say(&room, &text).await?;
        within("chat line", async {
            loop {
                match session.feed.next().await? {
                    None => return Err(Trouble::Interrupted(ClientError::Closed)),
                    Some(ChatIncoming::Event {
                        event:
                            ChatEvent::Message {
                                from, text: heard, ..
                            },
                        ..
                    }) if from == session.name => {
                        if heard != text {
                            return Err(Trouble::Failed(format!("chat: said {text:?}, heard {heard:?}")));
                        }
                        return Ok(());
                    }
                    Some(ChatIncoming::Event { .. }) => load.tally.add("chat: events from others", 1),
                    Some(ChatIncoming::Refused { error, .. }) => {
                        return Err(Trouble::Failed(format!("chat refused: {error}")));
                    }
                }
            }
        })
        .await?;
        load.tally.add("done: chat lines said and heard back", 1);
    }
    session.sender.quit().await;
    Ok(())
}

/// Random bytes, filled in bulk: byte by byte would hold a worker thread for seconds.
fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    rand::fill(&mut bytes[..]);
    bytes
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `sockit put` processes killed with SIGKILL mid-transfer, then run again to finish: the
/// resumed upload must land byte-exact.
pub async fn killed_uploads(load: Arc<Load>, sockit: PathBuf, secret_file: PathBuf) {
    let original = load.scratch.join("killed-put-source.bin");
    let data = random_bytes(32 * 1024 * 1024);
    if let Err(error) = tokio::fs::write(&original, &data).await {
        load.tally.fail(&format!("killed uploads: {error}"));
        return;
    }
    let mut round = 0;
    while Instant::now() < load.until {
        round += 1;
        let name = format!("killed-{round}.bin");
        let local = load.scratch.join(&name);
        if let Err(error) = tokio::fs::hard_link(&original, &local).await {
            load.tally.fail(&format!("killed uploads: {error}"));
            return;
        }
        let put = || {
            let mut command = tokio::process::Command::new(&sockit);
            command
                .args(["put", &load.server])
                .arg(&local)
                .arg("--secret-file")
                .arg(&secret_file)
                .env_remove("SOCKIT_SECRET")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true);
            command
        };
        let Ok(mut victim) = put().spawn() else {
            load.tally.fail("killed uploads: cannot spawn sockit put");
            return;
        };
        let kill_after = Duration::from_millis(rand::rng().random_range(30..300));
        tokio::time::sleep(kill_after).await;
        if victim.start_kill().is_ok() {
            load.tally.add("faults: sockit put killed with SIGKILL", 1);
        }
        let _ = victim.wait().await;
        let rerun = timeout(Duration::from_secs(120), put().output()).await;
        let landed = tokio::fs::read(load.root.join(&name)).await.unwrap_or_default();
        match rerun {
            Ok(Ok(output)) if landed == data => {
                let stderr = String::from_utf8_lossy(&output.stderr);
                let how = if !output.status.success() && stderr.contains("already exists") {
                    // Every byte was out before the kill: the server finished the upload alone.
                    "files: killed uploads the server finished alone"
                } else if !output.status.success() {
                    "failed"
                } else if stderr.contains("resumed after") {
                    load.tally.add("files: transfers resumed", 1);
                    "files: killed uploads resumed"
                } else {
                    "files: killed uploads redone from the start"
                };
                if how == "failed" {
                    load.tally.fail(&format!(
                        "killed upload {name}: rerun {}: {}",
                        output.status,
                        stderr.trim()
                    ));
                } else {
                    load.tally.add(how, 1);
                    load.tally.add("files: verified byte-exact", 1);
                }
            }
            Ok(Ok(output)) => {
                load.tally.add("data lost", 1);
                load.tally.fail(&format!(
                    "killed upload {name}: rerun {} ({} of {} bytes landed): {}",
                    output.status,
                    landed.len(),
                    data.len(),
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
            }
            _ => {
                load.tally.add("data lost", 1);
                load.tally
                    .fail(&format!("killed upload {name}: rerun did not finish"));
            }
        }
        let _ = tokio::fs::remove_file(&local).await;
        let _ = tokio::fs::remove_file(load.root.join(&name)).await;
    }
}
