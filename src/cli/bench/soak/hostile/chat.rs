//! Attacks on the chat hub: members that never read beside a poster (H2), a dropped member's
//! pipelined requests (H3), history in many rooms (M4), and replies past the header limit (M5).

use std::sync::{Arc, Mutex};

use sockit::ClientError;
use sockit::proto::chat::{Join, Leave, MAX_TEXT, Rooms, Say};
use sockit::wire::{FrameWriter, Header};
use tokio::time::timeout;

use super::super::dial::Reading;
use super::attacker::{Attacker, Held};
use super::link::{BURST_WITHIN, burst, call};

fn say(room: &str, text: &str) -> Header {
    Say { room, text }.to_header()
}

fn join(room: &str) -> Header {
    Join { room }.to_header()
}

fn leave(room: &str) -> Header {
    Leave { room }.to_header()
}

fn big_text() -> String {
    "x".repeat(MAX_TEXT)
}

/// H2: members joined to one room that never read, then a poster saying 4 KiB lines: the
/// server drops the slow members (each drop tells the others), without a stack overflow.
pub async fn silent_members(me: Attacker) -> Held {
    let members = me.arena.scaled(3_000);
    let joined: Arc<Mutex<Vec<FrameWriter>>> = Arc::default();
    let keep = joined.clone();
    me.in_lanes(32, members, move |me, lane, n| {
        let keep = keep.clone();
        async move {
            me.count("attempts: members");
            match me.chat_member(lane, &format!("h2-{n}"), Reading::Never).await {
                Ok(mut conn) => {
                    let _ = conn.send(join("hostile-h2").with_id(Some(2)), b"").await;
                    keep.lock().unwrap_or_else(|p| p.into_inner()).push(conn.writer);
                    me.count("members joined, never reading");
                }
                Err(error) => me.count_outcome("member login", &Err::<(), _>(error)),
            }
        }
    })
    .await;
    if let Ok(poster) = me.chat_member(250, "h2-poster", Reading::Normally).await {
        let text = big_text();
        let lines = std::iter::once(join("hostile-h2"))
            .chain((0..me.arena.scaled(2_000)).map(|_| say("hostile-h2", &text)));
        let lived = burst(&me, poster, lines).await;
        me.count(if lived {
            "poster session lived"
        } else {
            "poster session ended"
        });
    }
    drop(joined);
    None
}

/// H3: one connection pipelines a join, 400 4 KiB lines and a leave without reading; the
/// server drops it as too slow while its requests are still queued. Chat must still answer
/// a newcomer afterwards.
pub async fn pipelined_says(me: Attacker) -> Held {
    let rounds = me.arena.scaled(10);
    let mut chat_answers = true;
    for round in 0..rounds {
        if !me.arena.time_left() {
            break;
        }
        me.count("attempts");
        let Ok(mut conn) = me
            .chat_member(round, &format!("h3-{round}"), Reading::Never)
            .await
        else {
            // Logins are refused only when chat is down (an earlier round, or another attack).
            me.count("chat refused the attacker's login");
            chat_answers = false;
            continue;
        };
        let room = format!("hostile-h3-{round}");
        let text = big_text();
        let requests = std::iter::once(join(&room))
            .chain((0..400).map(|_| say(&room, &text)))
            .chain(std::iter::once(leave(&room)));
        let sent = timeout(BURST_WITHIN, async {
            for request in requests {
                conn.writer.queue(request.with_id(Some(2)), b"")?;
            }
            conn.writer.flush().await
        })
        .await;
        me.count(if matches!(sent, Ok(Ok(()))) {
            "bursts sent whole"
        } else {
            "bursts cut short"
        });
        drop(conn);
        let newcomer = format!("h3-check-{round}");
        let answered = match me.chat_member(round + 100, &newcomer, Reading::Normally).await {
            Ok(mut conn) => call(&mut conn, join("hostile-h3-check")).await.is_ok(),
            Err(_) => false,
        };
        me.count(if answered {
            "chat answered a newcomer after it"
        } else {
            "chat dead for a newcomer after it"
        });
        chat_answers &= answered;
    }
    Some(chat_answers)
}

/// M4: many rooms, each filled with 50 lines of 4 KiB and left; memory is the verdict's
/// RSS bound.
pub async fn history(me: Attacker) -> Held {
    let rooms = me.arena.scaled(2_000);
    let per_lane = rooms.div_ceil(4);
    me.in_lanes(4, 4, move |me, lane, _| async move {
        let Ok(conn) = me
            .chat_member(lane, &format!("m4-{lane}"), Reading::Normally)
            .await
        else {
            me.count("login failed");
            return;
        };
        let text = big_text();
        let mine = (lane * per_lane).min(rooms)..((lane + 1) * per_lane).min(rooms);
        me.add("attempts: rooms filled", mine.len() as u64);
        let requests = mine.flat_map(move |n| {
            let room = format!("hostile-m4-{n}");
            let lines = (0..50).map({
                let (room, text) = (room.clone(), text.clone());
                move |_| say(&room, &text)
            });
            std::iter::once(join(&room))
                .chain(lines)
                .chain(std::iter::once(leave(&room)))
        });
        burst(&me, conn, requests).await;
    })
    .await;
    None
}

/// M5: rooms enough that `chat_rooms` would pass the 64 KiB header limit, and members with
/// long names in the lobby; whoever then asks must be answered (or refused), never cut off.
pub async fn big_replies(me: Attacker) -> Held {
    let rooms = me.arena.scaled(1_500);
    if let Ok(conn) = me.chat_member(0, "m5-rooms", Reading::Normally).await {
        let requests = (0..rooms).flat_map(|n| {
            let room = format!("hostile-m5-{n:06}");
            [join(&room), say(&room, "kept"), leave(&room)]
        });
        me.add("attempts: rooms made", rooms as u64);
        burst(&me, conn, requests).await;
    }
    let asked = ask(&me, 1, "m5-asker", Rooms { after: None }.to_header()).await;
    let members = long_named_lobby(&me).await;
    let joined = ask(&me, 2, "m5-newcomer", join("lobby")).await;
    drop(members);
    Some(asked && joined)
}

/// Logs in and sends one request; true if the session survived it (answered or refused).
async fn ask(me: &Attacker, lane: usize, name: &str, request: Header) -> bool {
    let Ok(mut conn) = me.chat_member(lane, name, Reading::Normally).await else {
        me.count("login failed");
        return false;
    };
    let what = request.cmd().to_owned();
    let result = call(&mut conn, request).await;
    let lived = matches!(result, Ok(_) | Err(ClientError::Remote(_)));
    me.count_outcome(&what, &result);
    lived
}

/// Members with 32-character names of 4-byte characters, joined to the lobby.
async fn long_named_lobby(me: &Attacker) -> Vec<FrameWriter> {
    let members = me.arena.scaled(600);
    let joined: Arc<Mutex<Vec<FrameWriter>>> = Arc::default();
    let keep = joined.clone();
    me.in_lanes(16, members, move |me, lane, n| {
        let keep = keep.clone();
        async move {
            let name = format!("{n:05}{}", "\u{1D54F}".repeat(27));
            let login = me.chat_member(lane + 3, &name, Reading::Normally).await;
            me.count_outcome("lobby member login", &login);
            let Ok(mut conn) = login else { return };
            let _ = conn.send(join("lobby").with_id(Some(2)), b"").await;
            me.count("attempts: long-named lobby members");
            keep.lock().unwrap_or_else(|p| p.into_inner()).push(conn.writer);
        }
    })
    .await;
    std::mem::take(&mut *joined.lock().unwrap_or_else(|p| p.into_inner()))
}
