//! A normal user beside the attacks, straight at the server from 127.0.0.1 (no fault proxy,
//! so any break is the server's): a chat round and a file round-trip, again and again. Every
//! error it sees is a failure of the run.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sockit::client::{ChatIncoming, TransferOptions};
use sockit::proto::chat::ChatEvent;
use sockit::{Client, ClientConfig, ClientError};
use tokio::time::timeout;

use super::super::tally::Tally;

/// The longest one round may take before it counts as a failure.
const ROUND_WITHIN: Duration = Duration::from_secs(30);
const PAUSE: Duration = Duration::from_millis(250);

/// Chat and file rounds until `until`; counts them, and fails the run on any error.
pub async fn rounds(server: String, config: ClientConfig, scratch: &Path, until: Instant, tally: Arc<Tally>) {
    if let Err(error) = tokio::fs::create_dir_all(scratch).await {
        tally.fail(&format!("hostile phase bystander: {error}"));
        return;
    }
    let mut round = 0u64;
    while Instant::now() < until {
        round += 1;
        let chat = timeout(ROUND_WITHIN, chat_round(&server, &config, round)).await;
        note(&tally, "chat", chat);
        let file = timeout(ROUND_WITHIN, file_round(&server, &config, scratch, round)).await;
        note(&tally, "file round-trip", file);
        tokio::time::sleep(PAUSE).await;
    }
}

fn note(tally: &Tally, what: &str, outcome: Result<Result<(), ClientError>, tokio::time::error::Elapsed>) {
    match outcome {
        Ok(Ok(())) => tally.add(&format!("done: hostile phase bystander {what}"), 1),
        Ok(Err(error)) => tally.fail(&format!("hostile phase bystander {what}: {error}")),
        Err(_) => tally.fail(&format!(
            "hostile phase bystander {what}: no answer within {ROUND_WITHIN:?}"
        )),
    }
}

/// Logs in, joins a room of its own, says a line and hears it back.
async fn chat_round(server: &str, config: &ClientConfig, round: u64) -> Result<(), ClientError> {
    let client = Client::connect(server, config).await?;
    let mut session = client.chat_login(&format!("bystander-{round}")).await?;
    let room = format!("bystander-{}", round % 4);
    session.sender.join(&room).await?;
    let text = format!("round {round}");
    session.sender.say(&room, &text).await?;
    loop {
        match session.feed.next().await? {
            None => return Err(ClientError::Closed),
            Some(ChatIncoming::Refused { error, .. }) => return Err(ClientError::Remote(error)),
            Some(ChatIncoming::Event {
                event: ChatEvent::Message {
                    from, text: heard, ..
                },
                ..
            }) if from == session.name => {
                session.sender.quit().await;
                return match heard == text {
                    true => Ok(()),
                    false => Err(ClientError::Protocol(format!("said {text:?}, heard {heard:?}"))),
                };
            }
            Some(_) => {}
        }
    }
}

/// Uploads 96 KiB, downloads it again, and compares.
async fn file_round(
    server: &str,
    config: &ClientConfig,
    scratch: &Path,
    round: u64,
) -> Result<(), ClientError> {
    let name = format!("bystander-{round}.bin");
    let (local, back) = (scratch.join(&name), scratch.join(format!("{name}.back")));
    let data: Vec<u8> = (0..96 * 1024).map(|n| (n % 251) as u8).collect();
    tokio::fs::write(&local, &data)
        .await
        .map_err(|e| ClientError::Local(e.to_string()))?;
    let mut client = Client::connect(server, config).await?;
    let options = TransferOptions::default();
    client.put_file(&local, &name, options, &mut |_| {}).await?;
    client.get_file(&name, &back, options, &mut |_| {}).await?;
    let same = tokio::fs::read(&back).await.is_ok_and(|copy| copy == data);
    let _ = client.remove(&name, false).await;
    let _ = tokio::fs::remove_file(&local).await;
    let _ = tokio::fs::remove_file(&back).await;
    match same {
        true => Ok(()),
        false => Err(ClientError::Protocol(format!("{name} came back different"))),
    }
}
