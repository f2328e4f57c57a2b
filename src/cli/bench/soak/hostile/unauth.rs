//! Attacks before authentication: error frames in place of `hello` (H1), idle connections
//! holding handshake slots (M6), and online guessing of the secret (L2).

use std::time::{Duration, Instant};

use sockit::ClientError;
use sockit::auth::HandshakeError;
use sockit::wire::{Connection, Header, Limits};
use tokio::io::AsyncReadExt;
use tokio::time::timeout;

use super::super::dial::{Reading, wrong_secret};
use super::attacker::{Attacker, Held};
use super::link::failure_kind;
use super::net::metric_sum;

/// Online guessing from one address: at most this many secrets checked per second.
const GUESSES_PER_SECOND_BOUND: f64 = 10.0;
/// How long an unauthenticated attempt waits for the server's answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);
/// How long a guesser waits for a refusal: past it, silence means "wrong" to an attacker.
const GUESS_PATIENCE: Duration = Duration::from_millis(500);

/// H1: connections that send `{"cmd":"error","code":<4 KB of unique text>}` instead of hello.
/// Each code the server keeps (a metrics label) is memory it never gets back: the phase's
/// RSS bound is this attack's verdict.
pub async fn error_codes(me: Attacker) -> Held {
    let count = me.arena.scaled(60_000);
    me.in_lanes(64, count, |me, lane, n| async move {
        me.count("attempts");
        let answer = timeout(ANSWER_WITHIN, error_instead_of_hello(&me, lane, n)).await;
        me.count(match answer {
            Ok(Ok(Some(true))) => "answered with our own code (echoed)",
            Ok(Ok(Some(false))) => "refused with a code of its own",
            Ok(Ok(None)) => "closed without an answer",
            Ok(Err(_)) => "connection failed",
            Err(_) => "no answer within 5 s",
        });
    })
    .await;
    None
}

/// Sends the error frame; whether the answer repeats our code, `None` if there was none.
async fn error_instead_of_hello(me: &Attacker, lane: usize, n: usize) -> Result<Option<bool>, ClientError> {
    let stream = me
        .dial(lane, me.arena.server, Reading::Normally)
        .await
        .map_err(|_| ClientError::Closed)?;
    let mut conn = Connection::tcp(stream, Limits::default());
    let code = format!("h1-{n}-{}", "x".repeat(4000));
    let frame = Header::new("error")
        .with("code", code.as_str())
        .with("message", "not a hello");
    conn.send(frame, b"").await?;
    let reply = conn.read_message().await?;
    Ok(reply.map(|message| message.header.str("code") == Some(code.as_str())))
}

/// M6: idle connections from one address that never send a byte, opened again whenever the
/// server closes one; a normal client's fresh sessions meanwhile are the phase's probe.
pub async fn idle_handshakes(me: Attacker) -> Held {
    let held = me.arena.scaled(2_000);
    me.in_lanes(held, held * 4, |me, _, _| async move {
        let Ok(mut stream) = me.dial(0, me.arena.server, Reading::Normally).await else {
            me.count("connect failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
            return;
        };
        me.count("attempts: connections opened");
        let opened = Instant::now();
        let left = me.arena.until.saturating_duration_since(opened);
        let mut sink = [0; 512];
        match timeout(left, stream.read(&mut sink)).await {
            Err(_) => me.count("held until the phase ended"),
            Ok(_) if opened.elapsed() < Duration::from_secs(1) => me.count("refused within 1 s"),
            Ok(_) => me.count("reaped by the server later"),
        }
    })
    .await;
    None
}

/// L2: wrong-secret handshakes from one address, 100 at a time. The guesses that count are
/// the ones the server checked: its own count of failed authentications over the attack (no
/// other attack fails one), or, without the metrics endpoint, the attempts refused as wrong
/// plus those left unanswered past the attacker's patience (silence could mean "wrong").
pub async fn guessing(me: Attacker) -> Held {
    let count = me.arena.scaled(20_000);
    let failed = |metrics| metric_sum(metrics, "sockit_handshakes_total{", "auth_failed");
    let before = match me.arena.metrics {
        Some(metrics) => failed(metrics).await,
        None => None,
    };
    let begin = Instant::now();
    me.in_lanes(100, count, |me, _, _| async move {
        me.count("attempts");
        match wrong_secret(me.source(0), me.arena.server, GUESS_PATIENCE).await {
            Err(ClientError::Timeout(_)) => me.count("no answer within 500 ms"),
            Err(ClientError::Handshake(HandshakeError::AuthFailed(_))) => me.count("refused as wrong"),
            Err(error) => me.count(&format!("refused unchecked: {}", failure_kind(&error))),
            Ok(()) => me.count("guessed the secret"),
        }
    })
    .await;
    let seconds = begin.elapsed().as_secs_f64().max(0.001);
    let after = match me.arena.metrics {
        Some(metrics) => failed(metrics).await,
        None => None,
    };
    let checked = match before.zip(after) {
        Some((before, after)) => after.saturating_sub(before),
        None => me.tally_total("refused as wrong") + me.tally_total("no answer"),
    };
    me.add("checked by the server", checked);
    me.add("checked per second", (checked as f64 / seconds).round() as u64);
    Some(checked as f64 / seconds <= GUESSES_PER_SECOND_BOUND && me.tally_total("guessed") == 0)
}
