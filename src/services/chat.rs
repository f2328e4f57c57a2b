//! `chat`: the course's QQ chat as a real service: unique nicknames, rooms with history,
//! direct messages, presence, join and leave notices.
//!
//! Everything a logged-in client receives (events and the answers to its own requests) goes
//! through one bounded queue per client, drained by a task that writes to its connection. The
//! hub enqueues under one lock and never waits, so a message from one sender reaches everyone
//! in the order it was sent, and a client that stops reading only fills its own queue: when it
//! overflows the client is dropped and the others are told, and nobody else is slowed down.
//! Drops are worked off a list, never by recursion, however many clients are stuck at once.
//!
//! What the hub holds is bounded: rooms per member and per server, messages per room, and one
//! byte budget for the history of all rooms together (the oldest message anywhere goes first).
//! A room lives while someone is in it: when its last member leaves, it and its history go.
//! Lists (members, rooms) are answered a page at a time, so no answer outgrows a header.
//!
//! Requests (header fields only, no bodies):
//! `chat_login {name}`, `chat_join {room}`, `chat_leave {room}`, `chat_say {room, text}`,
//! `chat_msg {to, text}`, `chat_who {room, after?}`, `chat_rooms {after?}`. Everything sent
//! back is a `chat_event` frame whose `kind` names it (see [`ChatEvent`]); answers carry the
//! request's id.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{BodyMode, Busy, CommandSpec, Request, Service, ServiceError, Session};
use crate::metrics::metrics;
use crate::text::escape;
use crate::wire::{ErrorCode, FrameError, Header, RemoteError, SharedWriter};

/// Messages kept per room and replayed to whoever joins.
pub const HISTORY_LEN: usize = 50;
/// Bytes of history kept for all rooms together unless configured otherwise.
pub const DEFAULT_HISTORY_BYTES: u64 = 16 * 1024 * 1024;
/// What one kept message costs beyond its text, names and time: its bookkeeping (the message's
/// own fields and its place in the eviction order, which may hold as many entries again for
/// messages already gone before it is swept).
const POSTED_OVERHEAD: usize = 160;
/// Events a client may have waiting before it counts as stuck and is dropped.
pub const QUEUE_LEN: usize = 256;
/// Longest message text, in bytes.
pub const MAX_TEXT: usize = 4096;
/// Longest nickname or room name, in characters.
pub const MAX_NAME: usize = 32;
/// Rooms the server keeps at most; joining a new one beyond is refused.
pub const MAX_ROOMS: usize = 10_000;
/// Rooms one member may be in at once.
pub const MAX_ROOMS_PER_MEMBER: usize = 64;
/// Names in one `members` or `rooms` answer: at most about 13 KiB of header, far under the
/// 64 KiB a header may be.
pub const PAGE_LEN: usize = 100;
/// Departures from one room announced one by one; more at once are announced as the room's
/// new member list.
pub const LEAVE_NOTICES_MAX: usize = 16;
pub const DEFAULT_ROOM: &str = "lobby";
const TOO_SLOW: &str = "dropped: too slow";

/// Settings of the chat service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChatConfig {
    /// Bytes of history kept for all rooms together; the oldest messages go first.
    pub history_bytes: u64,
}

impl Default for ChatConfig {
    fn default() -> ChatConfig {
        ChatConfig {
            history_bytes: DEFAULT_HISTORY_BYTES,
        }
    }
}

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
    /// Answer to `chat_join` (after the room's history) and to `chat_who`: one page of the
    /// room's members in name order, `total` of them in all; `next`, when set, is the `after`
    /// that asks for the following page.
    Members {
        room: String,
        members: Vec<String>,
        #[serde(default)]
        total: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
    },
    /// Answer to `chat_leave`.
    Left { room: String },
    /// Answer to `chat_rooms`: one page of rooms in name order, paged as `Members` is.
    Rooms {
        rooms: Vec<RoomInfo>,
        #[serde(default)]
        total: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
    },
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
    hub: SharedHub,
}

impl Chat {
    pub fn new(config: ChatConfig) -> Chat {
        Chat {
            hub: SharedHub(Arc::new(Mutex::new(Hub::new(config)))),
        }
    }
}

/// The hub behind its lock. The hub never panics while locked, and should it ever, the lock
/// is taken over rather than refused: one failed request must not end chat for everyone.
#[derive(Clone, Default)]
struct SharedHub(Arc<Mutex<Hub>>);

impl SharedHub {
    fn lock(&self) -> MutexGuard<'_, Hub> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
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
        Ok(self.hub.lock().apply(me, id, command)?)
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
    Who { room: &'a str, after: Option<&'a str> },
    Rooms { after: Option<&'a str> },
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
            "chat_who" => ChatRequest::Who {
                room: field("room")?,
                after: header.str("after"),
            },
            "chat_rooms" => ChatRequest::Rooms {
                after: header.str("after"),
            },
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
        let member = self.hub.lock().login(&name, outbox, kick.clone())?;
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
    hub: SharedHub,
    forwarder: tokio::task::JoinHandle<()>,
    /// A chat client may stay silent for hours; it is not idle while logged in.
    _busy: Busy,
}

impl Drop for LoggedIn {
    fn drop(&mut self) {
        self.hub.lock().logout(self.member);
        self.forwarder.abort();
    }
}

/// An event as queued: one allocation however many members it goes to.
pub(super) type Event = Arc<Header>;

/// Writes a client's queued events to its connection until the queue closes or the hub drops
/// the client; then ends the whole session.
async fn forward(
    mut queue: mpsc::Receiver<Event>,
    writer: SharedWriter,
    kick: CancellationToken,
    close_session: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            event = queue.recv() => event,
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
        let Some(event) = event else { return };
        tokio::select! {
            sent = send_event(&writer, &event) => if let Err(error) = sent {
                tracing::debug!(%error, "chat feed ended");
                break;
            },
            // Mid-frame: nothing more can be sent on this stream.
            () = kick.cancelled() => break,
        }
    }
    close_session.cancel();
}

/// Sends one event. One too large to send fails only itself: the request it answers gets an
/// error instead, and the feed goes on.
async fn send_event(writer: &SharedWriter, event: &Header) -> Result<(), FrameError> {
    match writer.send_header(event).await {
        Err(error) if error.is_unsent() => match error.to_remote() {
            Some(remote) => writer.send_error(event.id(), &remote).await,
            None => Err(error),
        },
        sent => sent,
    }
}

pub(super) type MemberId = u64;

/// Who is online and where. Always locked briefly and never across an `await`.
#[derive(Default)]
pub(super) struct Hub {
    config: ChatConfig,
    members: HashMap<MemberId, Member>,
    by_name: HashMap<String, MemberId>,
    rooms: BTreeMap<String, Room>,
    history: History,
    /// Members whose queue overflowed during the current request, to be dropped before the
    /// lock is released.
    stuck: Vec<MemberId>,
}

struct Member {
    name: String,
    outbox: mpsc::Sender<Event>,
    kick: CancellationToken,
    rooms: BTreeSet<String>,
    /// Its queue overflowed: it is sent nothing more and is about to be dropped.
    stuck: bool,
}

#[derive(Default)]
struct Room {
    members: BTreeSet<MemberId>,
    history: VecDeque<Posted>,
}

struct Posted {
    /// Position in the server-wide order of posts, which decides what is evicted first.
    seq: u64,
    time: String,
    from: String,
    text: String,
}

/// The accounting of all rooms' history together.
#[derive(Default)]
struct History {
    bytes: usize,
    messages: usize,
    /// Every kept message as (room, seq), oldest first. Entries whose message already went
    /// (the room's own cap, or the room expired) are skipped when met and swept out when they
    /// outnumber the live ones.
    order: VecDeque<(String, u64)>,
    next_seq: u64,
}

static NEXT_MEMBER: AtomicU64 = AtomicU64::new(1);

impl Hub {
    pub(super) fn new(config: ChatConfig) -> Hub {
        Hub {
            config,
            ..Hub::default()
        }
    }

    /// Carries out a logged-in member's request, then drops whoever it left stuck.
    pub(super) fn apply(
        &mut self,
        me: MemberId,
        id: Option<u64>,
        request: ChatRequest,
    ) -> Result<(), RemoteError> {
        if !self.members.contains_key(&me) {
            return Err(dropped());
        }
        let result = self.carry_out(me, id, request);
        self.drop_stuck();
        result
    }

    fn carry_out(&mut self, me: MemberId, id: Option<u64>, request: ChatRequest) -> Result<(), RemoteError> {
        match request {
            ChatRequest::Join { room } => self.join(me, id, room),
            ChatRequest::Leave { room } => self.leave(me, id, room),
            ChatRequest::Say { room, text } => self.say(me, room, text),
            ChatRequest::Direct { to, text } => self.direct(me, to, text),
            ChatRequest::Who { room, after } => self.who(me, id, room, after),
            ChatRequest::Rooms { after } => {
                self.rooms(me, id, after);
                Ok(())
            }
            ChatRequest::Login { .. } => Err(RemoteError::new(ErrorCode::BadRequest, "already logged in")),
        }
    }

    pub(super) fn login(
        &mut self,
        name: &str,
        outbox: mpsc::Sender<Event>,
        kick: CancellationToken,
    ) -> Result<MemberId, RemoteError> {
        if self.by_name.contains_key(name) {
            return Err(RemoteError::new(
                ErrorCode::Other("name_taken".into()),
                format!("the nickname `{}` is taken; choose another", shown(name)),
            ));
        }
        let id = NEXT_MEMBER.fetch_add(1, Ordering::Relaxed);
        self.by_name.insert(name.to_owned(), id);
        metrics().chat_online.inc();
        self.members.insert(
            id,
            Member {
                name: name.to_owned(),
                outbox,
                kick,
                rooms: BTreeSet::new(),
                stuck: false,
            },
        );
        Ok(id)
    }

    /// Takes `member` off the server: its connection ended.
    pub(super) fn logout(&mut self, member: MemberId) {
        self.remove(&[member], None);
        self.drop_stuck();
    }

    pub(super) fn join(&mut self, me: MemberId, id: Option<u64>, room_name: &str) -> Result<(), RemoteError> {
        let member = self.members.get(&me).ok_or_else(dropped)?;
        let name = member.name.clone();
        if member.rooms.contains(room_name) {
            self.deliver(&[me], self.members_page(room_name, None).to_header(id));
            return Ok(());
        }
        if member.rooms.len() >= MAX_ROOMS_PER_MEMBER {
            return Err(RemoteError::new(
                ErrorCode::Busy,
                format!("you are in {MAX_ROOMS_PER_MEMBER} rooms already; leave one first"),
            ));
        }
        if !self.rooms.contains_key(room_name) && self.rooms.len() >= MAX_ROOMS {
            return Err(RemoteError::new(
                ErrorCode::Busy,
                format!("this server already keeps {MAX_ROOMS} rooms; join an existing one"),
            ));
        }
        let room = self.rooms.entry(room_name.to_owned()).or_default();
        let others: Vec<MemberId> = room.members.iter().copied().collect();
        room.members.insert(me);
        let replays: Vec<Header> = room
            .history
            .iter()
            .map(|posted| posted.replay(room_name).to_header(None))
            .collect();
        if let Some(member) = self.members.get_mut(&me) {
            member.rooms.insert(room_name.to_owned());
        }
        let joined = ChatEvent::Join {
            room: room_name.to_owned(),
            name,
            time: now(),
        };
        self.deliver(&others, joined.to_header(None));
        for replay in replays {
            self.deliver(&[me], replay);
        }
        self.deliver(&[me], self.members_page(room_name, None).to_header(id));
        Ok(())
    }

    fn leave(&mut self, me: MemberId, id: Option<u64>, room_name: &str) -> Result<(), RemoteError> {
        let member = self.members.get_mut(&me).ok_or_else(dropped)?;
        if !member.rooms.remove(room_name) {
            return Err(not_in_room(room_name));
        }
        let name = member.name.clone();
        if let Some(room) = self.rooms.get_mut(room_name) {
            room.members.remove(&me);
        }
        self.announce_leave(room_name, vec![name], None);
        let left = ChatEvent::Left {
            room: room_name.to_owned(),
        };
        self.deliver(&[me], left.to_header(id));
        Ok(())
    }

    fn say(&mut self, me: MemberId, room_name: &str, text: &str) -> Result<(), RemoteError> {
        let from = self.members.get(&me).ok_or_else(dropped)?.name.clone();
        let everyone: Vec<MemberId> = match self.rooms.get(room_name) {
            Some(room) if room.members.contains(&me) => room.members.iter().copied().collect(),
            _ => return Err(not_in_room(room_name)),
        };
        let posted = Posted {
            seq: 0,
            time: now(),
            from,
            text: text.to_owned(),
        };
        let event = posted.event(room_name, false);
        self.keep(room_name, posted);
        metrics().chat_message("room");
        self.deliver(&everyone, event.to_header(None));
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
            from: self.members.get(&me).ok_or_else(dropped)?.name.clone(),
            to: to.to_owned(),
            time: now(),
            text: text.to_owned(),
        };
        metrics().chat_message("direct");
        let header = event.to_header(None);
        if recipient == me {
            self.deliver(&[me], header);
        } else {
            self.deliver(&[recipient, me], header);
        }
        Ok(())
    }

    fn who(
        &mut self,
        me: MemberId,
        id: Option<u64>,
        room_name: &str,
        after: Option<&str>,
    ) -> Result<(), RemoteError> {
        if !self.rooms.contains_key(room_name) {
            return Err(RemoteError::new(
                ErrorCode::Other("not_found".into()),
                format!("there is no room `{}`", shown(room_name)),
            ));
        }
        let members = self.members_page(room_name, after);
        self.deliver(&[me], members.to_header(id));
        Ok(())
    }

    /// One page of the rooms, in name order, after `after`.
    fn rooms(&mut self, me: MemberId, id: Option<u64>, after: Option<&str>) {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let rooms = self
            .rooms
            .range::<str, _>((start, Bound::Unbounded))
            .map(|(name, room)| RoomInfo {
                name: name.clone(),
                members: room.members.len(),
            });
        let (rooms, more) = first_page(rooms);
        let next = more.then(|| rooms.last().map(|room| room.name.clone())).flatten();
        let total = self.rooms.len();
        self.deliver(&[me], ChatEvent::Rooms { rooms, total, next }.to_header(id));
    }

    /// One page of a room's members, in name order, after `after`.
    fn members_page(&self, room_name: &str, after: Option<&str>) -> ChatEvent {
        let mut names: Vec<&str> = self
            .rooms
            .get(room_name)
            .map(|room| {
                room.members
                    .iter()
                    .filter_map(|member| self.members.get(member))
                    .map(|member| member.name.as_str())
                    .collect()
            })
            .unwrap_or_default();
        names.sort_unstable();
        let total = names.len();
        let later = names
            .into_iter()
            .filter(|name| after.is_none_or(|after| *name > after));
        let (members, more) = first_page(later.map(str::to_owned));
        let next = more.then(|| members.last().cloned()).flatten();
        ChatEvent::Members {
            room: room_name.to_owned(),
            members,
            total,
            next,
        }
    }

    /// Adds a message to a room's history and to the server-wide accounting, then evicts the
    /// oldest messages anywhere until all history fits the budget again.
    fn keep(&mut self, room_name: &str, mut posted: Posted) {
        let Some(room) = self.rooms.get_mut(room_name) else {
            return;
        };
        posted.seq = self.history.next_seq;
        self.history.next_seq += 1;
        self.history.bytes += posted.cost(room_name);
        self.history.messages += 1;
        self.history.order.push_back((room_name.to_owned(), posted.seq));
        room.history.push_back(posted);
        if room.history.len() > HISTORY_LEN
            && let Some(oldest) = room.history.pop_front()
        {
            self.history.forget(&oldest, room_name);
        }
        self.evict_over_budget();
        self.sweep_history_order();
    }

    fn evict_over_budget(&mut self) {
        let budget = usize::try_from(self.config.history_bytes).unwrap_or(usize::MAX);
        while self.history.bytes > budget {
            let Some((room_name, seq)) = self.history.order.pop_front() else {
                break;
            };
            let Some(room) = self.rooms.get_mut(&room_name) else {
                continue;
            };
            if room.history.front().is_some_and(|oldest| oldest.seq == seq)
                && let Some(oldest) = room.history.pop_front()
            {
                self.history.forget(&oldest, &room_name);
            }
        }
    }

    /// Drops the order's entries for messages already gone, once they outnumber the live ones.
    fn sweep_history_order(&mut self) {
        if self.history.order.len() <= 2 * self.history.messages + 1024 {
            return;
        }
        let rooms = &self.rooms;
        self.history.order.retain(|(room_name, seq)| {
            rooms
                .get(room_name)
                .and_then(|room| room.history.front())
                .is_some_and(|oldest| oldest.seq <= *seq)
        });
    }

    /// Tells a room that `names` left it; a room left empty expires with its history. Past
    /// [`LEAVE_NOTICES_MAX`] departures at once (a mass drop) the room gets its new member
    /// list instead, so that nobody's queue overflows with news of the others.
    fn announce_leave(&mut self, room_name: &str, names: Vec<String>, reason: Option<&str>) {
        let Some(room) = self.rooms.get(room_name) else {
            return;
        };
        if room.members.is_empty() {
            self.expire(room_name);
            return;
        }
        let others: Vec<MemberId> = room.members.iter().copied().collect();
        if names.len() > LEAVE_NOTICES_MAX {
            self.deliver(&others, self.members_page(room_name, None).to_header(None));
            return;
        }
        for name in names {
            let left = ChatEvent::Leave {
                room: room_name.to_owned(),
                name,
                time: now(),
                reason: reason.map(str::to_owned),
            };
            self.deliver(&others, left.to_header(None));
        }
    }

    /// Forgets a room and its history.
    fn expire(&mut self, room_name: &str) {
        if let Some(room) = self.rooms.remove(room_name) {
            for posted in &room.history {
                self.history.forget(posted, room_name);
            }
        }
    }

    /// Takes members off the server (they left, or `reason` says why they were dropped). All
    /// of them leave their rooms before anyone is told, so none is sent news of the others.
    fn remove(&mut self, gone: &[MemberId], reason: Option<&str>) {
        let mut departures: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for id in gone {
            let Some(member) = self.members.remove(id) else {
                continue;
            };
            metrics().chat_online.dec();
            self.by_name.remove(&member.name);
            member.kick.cancel();
            for room_name in member.rooms {
                if let Some(room) = self.rooms.get_mut(&room_name) {
                    room.members.remove(id);
                }
                departures.entry(room_name).or_default().push(member.name.clone());
            }
        }
        for (room_name, names) in departures {
            self.announce_leave(&room_name, names, reason);
        }
    }

    /// Drops every member whose queue overflowed. Telling the others may overflow more
    /// queues: those are dropped in the next round, from a list and never by recursion, so
    /// any number of stuck members costs time, not stack.
    fn drop_stuck(&mut self) {
        while !self.stuck.is_empty() {
            let batch = std::mem::take(&mut self.stuck);
            for member in batch.iter().filter_map(|id| self.members.get(id)) {
                tracing::info!(name = %escape(&member.name), "chat client dropped: its queue is full");
            }
            self.remove(&batch, Some(TOO_SLOW));
        }
    }

    /// Queues `header` for each recipient without waiting. Whoever's queue is full is marked
    /// stuck (sent nothing more) and dropped by [`Hub::drop_stuck`] before the lock is released.
    fn deliver(&mut self, recipients: &[MemberId], header: Header) {
        let event: Event = Arc::new(header);
        for recipient in recipients {
            let Some(member) = self.members.get_mut(recipient) else {
                continue;
            };
            if member.stuck {
                continue;
            }
            if let Err(mpsc::error::TrySendError::Full(_)) = member.outbox.try_send(event.clone()) {
                member.stuck = true;
                self.stuck.push(*recipient);
            }
        }
    }
}

impl History {
    /// Takes a message that left its room out of the accounting.
    fn forget(&mut self, posted: &Posted, room_name: &str) {
        self.bytes = self.bytes.saturating_sub(posted.cost(room_name));
        self.messages = self.messages.saturating_sub(1);
    }
}

/// The first [`PAGE_LEN`] items, and whether more follow.
fn first_page<T>(items: impl Iterator<Item = T>) -> (Vec<T>, bool) {
    let mut items = items.peekable();
    let page: Vec<T> = items.by_ref().take(PAGE_LEN).collect();
    (page, items.peek().is_some())
}

impl Posted {
    /// What keeping this message costs against the history budget.
    fn cost(&self, room_name: &str) -> usize {
        self.text.len() + self.from.len() + self.time.len() + room_name.len() + POSTED_OVERHEAD
    }

    fn event(&self, room: &str, replay: bool) -> ChatEvent {
        ChatEvent::Message {
            room: room.to_owned(),
            from: self.from.clone(),
            time: self.time.clone(),
            text: self.text.clone(),
            replay,
        }
    }

    fn replay(&self, room: &str) -> ChatEvent {
        self.event(room, true)
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

/// The answer to whatever a member sends after it was dropped: its requests are no longer
/// carried out, and its connection is about to close.
fn dropped() -> RemoteError {
    RemoteError::new(
        ErrorCode::Other("dropped".into()),
        "you were dropped from chat (too slow); connect again",
    )
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
    crate::text::escape_at_most(name, MAX_NAME)
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

    /// A logged-in member whose queue holds `capacity` events.
    fn member(hub: &mut Hub, name: &str, capacity: usize) -> (MemberId, mpsc::Receiver<Event>) {
        let (outbox, feed) = mpsc::channel(capacity);
        let id = hub.login(name, outbox, CancellationToken::new()).unwrap();
        (id, feed)
    }

    fn received(feed: &mut mpsc::Receiver<Event>) -> Vec<ChatEvent> {
        std::iter::from_fn(|| feed.try_recv().ok())
            .map(|event| event.parse().unwrap())
            .collect()
    }

    fn say<'a>(room: &'a str, text: &'a str) -> ChatRequest<'a> {
        ChatRequest::Say { room, text }
    }

    /// Issue 12 H2: each stuck member used to cost a level of recursion; twenty thousand at
    /// once overflow any stack that way.
    #[test]
    fn twenty_thousand_stuck_members_are_dropped_from_a_list() {
        let mut hub = Hub::default();
        let (poster, mut poster_feed) = member(&mut hub, "poster", 1024);
        hub.apply(poster, None, ChatRequest::Join { room: "lobby" })
            .unwrap();
        let mut stuck_feeds = Vec::new();
        for n in 0..20_000 {
            let (id, feed) = member(&mut hub, &format!("stuck{n}"), 1);
            // Seated directly: announcing each arrival would be quadratic.
            hub.rooms.get_mut("lobby").unwrap().members.insert(id);
            hub.members.get_mut(&id).unwrap().rooms.insert("lobby".into());
            hub.deliver(&[id], Header::new("chat_event"));
            stuck_feeds.push(feed);
        }
        received(&mut poster_feed);
        hub.apply(poster, None, say("lobby", "hello")).unwrap();
        assert_eq!((hub.members.len(), hub.by_name.len()), (1, 1));
        assert!(hub.stuck.is_empty());
        let seen = received(&mut poster_feed);
        assert!(
            matches!(
                &seen[..],
                [ChatEvent::Message { .. }, ChatEvent::Members { total: 1, .. }]
            ),
            "the poster hears of the mass drop once: {seen:?}"
        );
    }

    /// Issue 12 H3: a dropped member's pipelined requests used to index the hub by its id and
    /// panic with the lock held.
    #[test]
    fn a_dropped_member_is_refused_and_the_hub_carries_on() {
        let mut hub = Hub::default();
        let (flood, _feed) = member(&mut hub, "flood", 4);
        hub.apply(flood, None, ChatRequest::Join { room: "lobby" })
            .unwrap();
        for _ in 0..10 {
            let _ = hub.apply(flood, None, say("lobby", "x"));
        }
        assert!(hub.members.is_empty(), "flood was dropped");
        for request in [
            ChatRequest::Leave { room: "lobby" },
            ChatRequest::Join { room: "lobby" },
            ChatRequest::Direct {
                to: "flood",
                text: "x",
            },
            say("lobby", "x"),
            ChatRequest::Who {
                room: "lobby",
                after: None,
            },
        ] {
            let refusal = hub.apply(flood, Some(1), request).unwrap_err();
            assert_eq!(refusal.code.as_str(), "dropped");
        }
        let (other, mut feed) = member(&mut hub, "other", 16);
        hub.apply(other, None, ChatRequest::Join { room: "lobby" })
            .unwrap();
        hub.apply(other, None, say("lobby", "fine")).unwrap();
        assert_eq!(received(&mut feed).len(), 2);
    }

    #[test]
    fn a_lock_poisoned_elsewhere_is_taken_over() {
        let hub = SharedHub::default();
        let poisoner = hub.clone();
        let _ = std::thread::spawn(move || {
            let _held = poisoner.lock();
            panic!("poisoning the hub's lock on purpose");
        })
        .join();
        let (outbox, _feed) = mpsc::channel(1);
        assert!(
            hub.lock()
                .login("after", outbox, CancellationToken::new())
                .is_ok()
        );
    }

    /// Issue 12 M4: all rooms share one budget, oldest first; an empty room goes with its
    /// history; bookkeeping of evicted messages does not pile up.
    #[test]
    fn history_keeps_to_one_budget_and_goes_with_the_room() {
        let text = "h".repeat(1000);
        let mut hub = Hub::new(ChatConfig {
            history_bytes: 20_000,
        });
        let (me, mut feed) = member(&mut hub, "me", 4096);
        for room in ["old", "new"] {
            hub.apply(me, None, ChatRequest::Join { room }).unwrap();
            for _ in 0..15 {
                hub.apply(me, None, say(room, &text)).unwrap();
            }
        }
        assert!(hub.history.bytes <= 20_000, "{}", hub.history.bytes);
        let kept = |hub: &Hub, room: &str| hub.rooms.get(room).map_or(0, |r| r.history.len());
        assert_eq!(kept(&hub, "new"), 15, "the newest room keeps everything");
        assert!(kept(&hub, "old") < 5, "the oldest messages went first");
        assert_eq!(hub.history.messages, kept(&hub, "old") + kept(&hub, "new"));

        for _ in 0..5_000 {
            hub.apply(me, None, say("new", "short")).unwrap();
            while feed.try_recv().is_ok() {}
        }
        assert_eq!(kept(&hub, "new"), HISTORY_LEN);
        assert!(hub.history.order.len() <= 2 * hub.history.messages + 1024);

        hub.apply(me, None, ChatRequest::Leave { room: "new" }).unwrap();
        hub.apply(me, None, ChatRequest::Leave { room: "old" }).unwrap();
        assert!(hub.rooms.is_empty());
        assert_eq!((hub.history.bytes, hub.history.messages), (0, 0));
    }

    #[test]
    fn a_member_is_in_a_bounded_number_of_rooms() {
        let mut hub = Hub::default();
        let (me, _feed) = member(&mut hub, "me", 4096);
        for n in 0..MAX_ROOMS_PER_MEMBER {
            hub.apply(
                me,
                None,
                ChatRequest::Join {
                    room: &format!("r{n}"),
                },
            )
            .unwrap();
        }
        let refusal = hub
            .apply(me, None, ChatRequest::Join { room: "more" })
            .unwrap_err();
        assert_eq!(refusal.code, ErrorCode::Busy);
        assert!(
            hub.apply(me, None, ChatRequest::Join { room: "r0" }).is_ok(),
            "rejoining is fine"
        );
    }

    /// Issue 12 M5: lists come a page at a time, and a page of the longest names fits a header.
    #[test]
    fn member_lists_are_paged_and_each_page_fits_a_header() {
        let mut hub = Hub::default();
        let long = |n: usize| format!("{n:03}{}", "𝔵".repeat(MAX_NAME - 3));
        let mut feeds = Vec::new();
        for n in 0..250 {
            let (id, feed) = member(&mut hub, &long(n), 4096);
            hub.rooms.entry("lobby".into()).or_default().members.insert(id);
            feeds.push(feed);
        }
        let mut after = None;
        let mut names = Vec::new();
        loop {
            let ChatEvent::Members {
                members, total, next, ..
            } = hub.members_page("lobby", after.as_deref())
            else {
                unreachable!()
            };
            assert_eq!(total, 250);
            let mut encoded = bytes::BytesMut::new();
            let page = ChatEvent::Members {
                room: "lobby".into(),
                members: members.clone(),
                total,
                next: next.clone(),
            };
            crate::wire::encode_header(&page.to_header(Some(u64::MAX)), &mut encoded, 16 * 1024).unwrap();
            names.extend(members);
            match next {
                Some(next) => after = Some(next),
                None => break,
            }
        }
        assert_eq!(names, (0..250).map(long).collect::<Vec<_>>());
    }
}
