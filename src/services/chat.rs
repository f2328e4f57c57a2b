//! `chat`: the course's QQ chat as a real service: unique nicknames, rooms with history,
//! direct messages, presence, join and leave notices.
//!
//! Everything a logged-in client receives (events and the answers to its own requests) goes
//! through one bounded queue per client, drained by a task that writes to its connection. The
//! hub enqueues under one lock and never waits, so a message from one sender reaches everyone
//! in the order it was sent, and a client that stops reading only fills its own queue: when it
//! overflows the client is dropped and the others are told, and nobody else is slowed down.
//!
//! Requests (header fields only, no bodies):
//! `chat_login {name}`, `chat_join {room}`, `chat_leave {room}`, `chat_say {room, text}`,
//! `chat_msg {to, text}`, `chat_who {room}`, `chat_rooms`. Everything sent back is a
//! `chat_event` frame whose `kind` names it (see [`ChatEvent`]); answers carry the request's id.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::root::escape;
use super::{BodyMode, Busy, CommandSpec, Request, Service, ServiceError, Session};
use crate::metrics::metrics;
use crate::wire::{ErrorCode, Header, RemoteError, SharedWriter};

/// Messages kept per room and replayed to whoever joins.
pub const HISTORY_LEN: usize = 50;
/// Events a client may have waiting before it counts as stuck and is dropped.
pub const QUEUE_LEN: usize = 256;
/// Longest message text, in bytes.
pub const MAX_TEXT: usize = 4096;
/// Longest nickname or room name, in characters.
pub const MAX_NAME: usize = 32;
/// Rooms the server keeps (with their history) at most; joining a new one beyond is refused.
pub const MAX_ROOMS: usize = 10_000;
pub const DEFAULT_ROOM: &str = "lobby";

/// What a chat client receives, as the fields of a `chat_event` frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChatEvent {
    /// Answer to `chat_login`.
    Welcome { name: String },
    /// A message posted in a room; `replay` marks history sent on join.
    Message {
        room: String,
        from: String,
        time: String,
        text: String,
        #[serde(default)]
        replay: bool,
    },
    /// A direct message; the sender gets a copy as its receipt.
    Direct {
        from: String,
        to: String,
        time: String,
        text: String,
    },
    /// Someone joined a room you are in.
    Join {
        room: String,
        name: String,
        time: String,
    },
    /// Someone left a room you are in; `reason` says why when they did not choose to.
    Leave {
        room: String,
        name: String,
        time: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Answer to `chat_join` (after the room's history) and to `chat_who`.
    Members { room: String, members: Vec<String> },
    /// Answer to `chat_leave`.
    Left { room: String },
    /// Answer to `chat_rooms`.
    Rooms { rooms: Vec<RoomInfo> },
    /// You were disconnected by the server.
    Dropped { reason: String },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoomInfo {
    pub name: String,
    pub members: usize,
}

impl ChatEvent {
    pub fn to_header(&self, id: Option<u64>) -> Header {
        Header::from_message("chat_event", self).with_id(id)
    }
}

const fn command(cmd: &'static str) -> CommandSpec {
    CommandSpec {
        cmd,
        max_body: 0,
        body: BodyMode::Whole,
    }
}

const COMMANDS: &[CommandSpec] = &[
    command("chat_login"),
    command("chat_join"),
    command("chat_leave"),
    command("chat_say"),
    command("chat_msg"),
    command("chat_who"),
    command("chat_rooms"),
];

#[derive(Default)]
pub struct Chat {
    hub: Arc<Mutex<Hub>>,
}

#[async_trait]
impl Service for Chat {
    fn name(&self) -> &'static str {
        "chat"
    }

    fn commands(&self) -> &[CommandSpec] {
        COMMANDS
    }

    async fn handle(&self, request: Request, session: &mut Session) -> Result<(), ServiceError> {
        let id = request.id();
        let me = session.state::<ChatLogin>().0.as_ref().map(|login| login.member);
        if me.is_none() && request.header.cmd() != "chat_login" {
            return Err(not_logged_in());
        }
        let command = ChatRequest::from_header(&request.header)?;
        if let ChatRequest::Login { name } = command {
            return self.login(id, name, session).await;
        }
        let me = me.ok_or_else(not_logged_in)?;
        Ok(self.hub.lock().expect("chat hub lock").apply(me, id, command)?)
    }
}

/// A chat request with its fields taken out of the header and checked.
#[derive(Clone, Debug, PartialEq)]
pub enum ChatRequest<'a> {
    Login { name: &'a str },
    Join { room: &'a str },
    Leave { room: &'a str },
    Say { room: &'a str, text: &'a str },
    Direct { to: &'a str, text: &'a str },
    Who { room: &'a str },
    Rooms,
}

impl<'a> ChatRequest<'a> {
    /// Reads a `chat_*` request. New names (nickname, room joined) and message texts are
    /// validated here; names that must already exist are looked up by the hub instead.
    pub fn from_header(header: &'a Header) -> Result<ChatRequest<'a>, ServiceError> {
        let field = |key| field(header, key);
        Ok(match header.cmd() {
            "chat_login" => ChatRequest::Login {
                name: valid_name(field("name")?, "nickname")?,
            },
            "chat_join" => ChatRequest::Join {
                room: valid_name(field("room")?, "room")?,
            },
            "chat_leave" => ChatRequest::Leave { room: field("room")? },
            "chat_say" => ChatRequest::Say {
                room: field("room")?,
                text: valid_text(field("text")?)?,
            },
            "chat_msg" => ChatRequest::Direct {
                to: field("to")?,
                text: valid_text(field("text")?)?,
            },
            "chat_who" => ChatRequest::Who { room: field("room")? },
            "chat_rooms" => ChatRequest::Rooms,
            other => {
                return Err(ServiceError::bad_request(format!(
                    "`{}` is not a chat request",
                    shown(other)
                )));
            }
        })
    }
}

impl Chat {
    async fn login(&self, id: Option<u64>, name: &str, session: &mut Session) -> Result<(), ServiceError> {
        if let Some(login) = &session.state::<ChatLogin>().0 {
            return Err(ServiceError::bad_request(format!(
                "already logged in as {}",
                login.name
            )));
        }
        let name = name.to_owned();
        let (outbox, queue) = mpsc::channel(QUEUE_LEN);
        let kick = CancellationToken::new();
        let member = self
            .hub
            .lock()
            .expect("chat hub lock")
            .login(&name, outbox, kick.clone())?;
        let forwarder = tokio::spawn(forward(queue, session.writer.clone(), kick, session.closer()));
        session.state::<ChatLogin>().0 = Some(LoggedIn {
            name: name.clone(),
            member,
            hub: self.hub.clone(),
            forwarder,
            _busy: session.busy(),
        });
        let welcome = ChatEvent::Welcome { name };
        session.writer.send(welcome.to_header(id), &[]).await?;
        Ok(())
    }
}

/// This connection's chat identity, if it logged in. Dropping it (the connection ended) takes
/// the nickname out of every room.
#[derive(Default)]
struct ChatLogin(Option<LoggedIn>);

struct LoggedIn {
    name: String,
    member: MemberId,
    hub: Arc<Mutex<Hub>>,
    forwarder: tokio::task::JoinHandle<()>,
    /// A chat client may stay silent for hours; it is not idle while logged in.
    _busy: Busy,
}

impl Drop for LoggedIn {
    fn drop(&mut self) {
        if let Ok(mut hub) = self.hub.lock() {
            hub.remove(self.member, None);
        }
        self.forwarder.abort();
    }
}

/// Writes a client's queued events to its connection until the queue closes or the hub drops
/// the client; then ends the whole session.
async fn forward(
    mut queue: mpsc::Receiver<Header>,
    writer: SharedWriter,
    kick: CancellationToken,
    close_session: CancellationToken,
) {
    loop {
        let header = tokio::select! {
            header = queue.recv() => header,
            () = kick.cancelled() => {
                // Between frames: the stream is intact, so the client can be told why.
                let notice = ChatEvent::Dropped {
                    reason: "too slow: you fell too far behind".into(),
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), writer.send(notice.to_header(None), &[]))
                    .await;
                break;
            }
        };
        let Some(header) = header else { return };
        tokio::select! {
            sent = writer.send(header, &[]) => if let Err(error) = sent {
                tracing::debug!(%error, "chat feed ended");
                break;
            },
            // Mid-frame: nothing more can be sent on this stream.
            () = kick.cancelled() => break,
        }
    }
    close_session.cancel();
}

pub(super) type MemberId = u64;

/// Who is online and where. Always locked briefly and never across an `await`.
#[derive(Default)]
pub(super) struct Hub {
    members: HashMap<MemberId, Member>,
    by_name: HashMap<String, MemberId>,
    rooms: HashMap<String, Room>,
}

struct Member {
    name: String,
    outbox: mpsc::Sender<Header>,
    kick: CancellationToken,
    rooms: BTreeSet<String>,
}

#[derive(Default)]
struct Room {
    members: BTreeSet<MemberId>,
    history: VecDeque<Posted>,
}

struct Posted {
    time: String,
    from: String,
    text: String,
}

static NEXT_MEMBER: AtomicU64 = AtomicU64::new(1);

impl Hub {
    /// Carries out a logged-in member's request.
    pub(super) fn apply(
        &mut self,
        me: MemberId,
        id: Option<u64>,
        request: ChatRequest,
    ) -> Result<(), RemoteError> {
        match request {
            ChatRequest::Join { room } => self.join(me, id, room),
            ChatRequest::Leave { room } => self.leave(me, id, room),
            ChatRequest::Say { room, text } => self.say(me, room, text),
            ChatRequest::Direct { to, text } => self.direct(me, to, text),
            ChatRequest::Who { room } => self.who(me, id, room),
            ChatRequest::Rooms => {
                self.rooms(me, id);
                Ok(())
            }
            ChatRequest::Login { .. } => Err(RemoteError::new(ErrorCode::BadRequest, "already logged in")),
        }
    }

    pub(super) fn login(
        &mut self,
        name: &str,
        outbox: mpsc::Sender<Header>,
        kick: CancellationToken,
    ) -> Result<MemberId, RemoteError> {
        if self.by_name.contains_key(name) {
            return Err(RemoteError::new(
                ErrorCode::Other("name_taken".into()),
                format!("the nickname `{name}` is taken; choose another"),
            ));
        }
        let id = NEXT_MEMBER.fetch_add(1, Ordering::Relaxed);
        self.by_name.insert(name.to_owned(), id);
        let rooms = BTreeSet::new();
        let name = name.to_owned();
        metrics().chat_online.inc();
        self.members.insert(
            id,
            Member {
                name,
                outbox,
                kick,
                rooms,
            },
        );
        Ok(id)
    }

    pub(super) fn join(&mut self, me: MemberId, id: Option<u64>, room_name: &str) -> Result<(), RemoteError> {
        if !self.rooms.contains_key(room_name) && self.rooms.len() >= MAX_ROOMS {
            return Err(RemoteError::new(
                ErrorCode::Busy,
                format!("this server already keeps {MAX_ROOMS} rooms; join an existing one"),
            ));
        }
        let name = self.members[&me].name.clone();
        let room = self.rooms.entry(room_name.to_owned()).or_default();
        let mut replies: Vec<ChatEvent> = Vec::new();
        if room.members.insert(me) {
            let joined = ChatEvent::Join {
                room: room_name.to_owned(),
                name,
                time: now(),
            };
            let others: Vec<MemberId> = room.members.iter().copied().filter(|m| *m != me).collect();
            replies.extend(room.history.iter().map(|posted| posted.replay(room_name)));
            self.members
                .get_mut(&me)
                .expect("member")
                .rooms
                .insert(room_name.to_owned());
            self.deliver(&others, &joined.to_header(None));
        }
        replies.push(self.members_of(room_name));
        for (index, reply) in replies.iter().enumerate() {
            let last = index + 1 == replies.len();
            self.deliver(&[me], &reply.to_header(if last { id } else { None }));
        }
        Ok(())
    }

    fn leave(&mut self, me: MemberId, id: Option<u64>, room_name: &str) -> Result<(), RemoteError> {
        if !self.members[&me].rooms.contains(room_name) {
            return Err(not_in_room(room_name));
        }
        self.part(me, room_name, None);
        let left = ChatEvent::Left {
            room: room_name.to_owned(),
        };
        self.deliver(&[me], &left.to_header(id));
        Ok(())
    }

    fn say(&mut self, me: MemberId, room_name: &str, text: &str) -> Result<(), RemoteError> {
        let room = match self.rooms.get_mut(room_name) {
            Some(room) if room.members.contains(&me) => room,
            _ => return Err(not_in_room(room_name)),
        };
        let posted = Posted {
            time: now(),
            from: self.members[&me].name.clone(),
            text: text.to_owned(),
        };
        let event = ChatEvent::Message {
            room: room_name.to_owned(),
            from: posted.from.clone(),
            time: posted.time.clone(),
            text: posted.text.clone(),
            replay: false,
        };
        if room.history.len() == HISTORY_LEN {
            room.history.pop_front();
        }
        room.history.push_back(posted);
        metrics().chat_message("room");
        let everyone: Vec<MemberId> = room.members.iter().copied().collect();
        self.deliver(&everyone, &event.to_header(None));
        Ok(())
    }

    fn direct(&mut self, me: MemberId, to: &str, text: &str) -> Result<(), RemoteError> {
        let Some(&recipient) = self.by_name.get(to) else {
            return Err(RemoteError::new(
                ErrorCode::Other("not_found".into()),
                format!("nobody called `{}` is online", shown(to)),
            ));
        };
        let event = ChatEvent::Direct {
            from: self.members[&me].name.clone(),
            to: to.to_owned(),
            time: now(),
            text: text.to_owned(),
        };
        metrics().chat_message("direct");
        let header = event.to_header(None);
        if recipient == me {
            self.deliver(&[me], &header);
        } else {
            self.deliver(&[recipient, me], &header);
        }
        Ok(())
    }

    fn who(&mut self, me: MemberId, id: Option<u64>, room_name: &str) -> Result<(), RemoteError> {
        if !self.rooms.contains_key(room_name) {
            return Err(RemoteError::new(
                ErrorCode::Other("not_found".into()),
                format!("there is no room `{}`", shown(room_name)),
            ));
        }
        let members = self.members_of(room_name);
        self.deliver(&[me], &members.to_header(id));
        Ok(())
    }

    fn rooms(&mut self, me: MemberId, id: Option<u64>) {
        let mut rooms: Vec<RoomInfo> = self
            .rooms
            .iter()
            .map(|(name, room)| RoomInfo {
                name: name.clone(),
                members: room.members.len(),
            })
            .collect();
        rooms.sort_by(|a, b| a.name.cmp(&b.name));
        self.deliver(&[me], &ChatEvent::Rooms { rooms }.to_header(id));
    }

    fn members_of(&self, room_name: &str) -> ChatEvent {
        let mut members: Vec<String> = self.rooms[room_name]
            .members
            .iter()
            .map(|member| self.members[member].name.clone())
            .collect();
        members.sort();
        ChatEvent::Members {
            room: room_name.to_owned(),
            members,
        }
    }

    /// Takes `member` out of one room and tells the others there.
    fn part(&mut self, member: MemberId, room_name: &str, reason: Option<&str>) {
        let Some(room) = self.rooms.get_mut(room_name) else {
            return;
        };
        room.members.remove(&member);
        let others: Vec<MemberId> = room.members.iter().copied().collect();
        if room.members.is_empty() && room.history.is_empty() {
            self.rooms.remove(room_name);
        }
        let Some(me) = self.members.get_mut(&member) else {
            return;
        };
        me.rooms.remove(room_name);
        let left = ChatEvent::Leave {
            room: room_name.to_owned(),
            name: me.name.clone(),
            time: now(),
            reason: reason.map(str::to_owned),
        };
        self.deliver(&others, &left.to_header(None));
    }

    /// Takes `member` off the server (it left, or `reason` says why it was dropped).
    fn remove(&mut self, member: MemberId, reason: Option<&str>) {
        let Some(rooms) = self.members.get(&member).map(|m| m.rooms.clone()) else {
            return;
        };
        for room in rooms {
            self.part(member, &room, reason);
        }
        if let Some(gone) = self.members.remove(&member) {
            metrics().chat_online.dec();
            self.by_name.remove(&gone.name);
            gone.kick.cancel();
        }
    }

    /// Queues `header` for each recipient without waiting. Whoever's queue is full is dropped
    /// (which notifies their rooms, and may in turn drop others).
    fn deliver(&mut self, recipients: &[MemberId], header: &Header) {
        let mut stuck = Vec::new();
        for recipient in recipients {
            let Some(member) = self.members.get(recipient) else {
                continue;
            };
            if let Err(mpsc::error::TrySendError::Full(_)) = member.outbox.try_send(header.clone()) {
                stuck.push(*recipient);
            }
        }
        for member in stuck {
            if let Some(name) = self.members.get(&member).map(|m| escape(&m.name)) {
                tracing::info!(%name, "chat client dropped: its queue is full");
            }
            self.remove(member, Some("dropped: too slow"));
        }
    }
}

impl Posted {
    fn replay(&self, room: &str) -> ChatEvent {
        ChatEvent::Message {
            room: room.to_owned(),
            from: self.from.clone(),
            time: self.time.clone(),
            text: self.text.clone(),
            replay: true,
        }
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn field<'a>(header: &'a Header, key: &str) -> Result<&'a str, ServiceError> {
    header
        .str(key)
        .ok_or_else(|| ServiceError::bad_request(format!("`{}` needs a `{key}` string", header.cmd())))
}

fn refusal(code: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::Reply(RemoteError::new(ErrorCode::Other(code.into()), message))
}

fn not_logged_in() -> ServiceError {
    refusal("not_logged_in", "log in first with chat_login")
}

fn not_in_room(room: &str) -> RemoteError {
    RemoteError::new(
        ErrorCode::Other("not_in_room".into()),
        format!("you are not in room `{}`", shown(room)),
    )
}

/// A name from a request as a refusal quotes it: escaped, and cut after [`MAX_NAME`]
/// characters, so that a refusal stays small whatever was sent (escaping can make a control
/// character eight bytes long, and a refusal larger than a header may be is never sent).
fn shown(name: &str) -> String {
    super::root::escape_at_most(name, MAX_NAME)
}

/// Nicknames and room names: 1 to 32 characters, no spaces or control characters, and no
/// leading `/` or `#` (the terminal client's command and room markers).
pub fn valid_name<'a>(name: &'a str, what: &str) -> Result<&'a str, RemoteError> {
    let length = name.chars().count();
    let bad = if length == 0 || length > MAX_NAME {
        Some(format!("must be 1 to {MAX_NAME} characters"))
    } else if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        Some("may not contain spaces or control characters".to_owned())
    } else if name.starts_with(['/', '#']) {
        Some("may not start with `/` or `#`".to_owned())
    } else {
        None
    };
    match bad {
        None => Ok(name),
        Some(why) => Err(RemoteError::new(
            ErrorCode::BadRequest,
            format!("{what} `{}` {why}", shown(name)),
        )),
    }
}

/// Message text: one line of at most [`MAX_TEXT`] bytes without control characters (tabs
/// allowed), so no message can move another user's cursor or recolour their terminal.
pub fn valid_text(text: &str) -> Result<&str, RemoteError> {
    let bad = if text.is_empty() {
        Some("is empty".to_owned())
    } else if text.len() > MAX_TEXT {
        Some(format!("is longer than {MAX_TEXT} bytes"))
    } else if text.chars().any(|c| c.is_control() && c != '\t') {
        Some("contains control characters".to_owned())
    } else {
        None
    };
    match bad {
        None => Ok(text),
        Some(why) => Err(RemoteError::new(ErrorCode::BadRequest, format!("message {why}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_texts_are_checked() {
        assert!(valid_name("金老板", "nickname").is_ok());
        assert!(valid_name("", "nickname").is_err());
        assert!(valid_name("a b", "nickname").is_err());
        assert!(valid_name("/quit", "nickname").is_err());
        assert!(valid_name(&"x".repeat(33), "room").is_err());
        assert!(valid_text("hello\tthere").is_ok());
        assert!(valid_text("\x1b[2J").is_err());
        assert!(valid_text(&"x".repeat(MAX_TEXT + 1)).is_err());
    }

    #[test]
    fn events_round_trip_through_headers() {
        let event = ChatEvent::Leave {
            room: "lobby".into(),
            name: "bob".into(),
            time: now(),
            reason: Some("dropped: too slow".into()),
        };
        let header = event.to_header(Some(7));
        assert_eq!(header.cmd(), "chat_event");
        assert_eq!(header.id(), Some(7));
        assert_eq!(header.parse::<ChatEvent>().unwrap(), event);
    }
}
