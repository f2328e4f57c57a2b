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
//! The requests, events and limits are [`crate::proto::chat`]'s. This file is the service
//! (login, and handing each request to the hub); the rest is one concern a file:
//! - `hub`: who is online and in which rooms, delivery into the queues, and the drop worklist;
//! - `commands`: what each request does to the hub;
//! - `history`: the rooms' messages and their one byte budget;
//! - `paging`: the member and room lists, a page at a time;
//! - `feed`: the per-client task that writes the queue to the connection;
//! - `refusals`: the errors chat answers with.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{BodyMode, Busy, CommandSpec, Request, Service, ServiceError, Session};
use crate::proto::chat::{ChatEvent, ChatRequest, Join, Leave, Login, Msg, Rooms, Say, Who};
use crate::wire::RemoteError;

mod commands;
mod feed;
mod history;
mod hub;
mod paging;
mod refusals;
#[cfg(test)]
mod tests;

// What a member's queue carries: named by the hub's tests and the fuzz hooks that drive a hub.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use feed::Event;
pub(crate) use hub::{Hub, MemberId};

/// Bytes of history kept for all rooms together unless configured otherwise.
pub(crate) const DEFAULT_HISTORY_BYTES: u64 = 16 * 1024 * 1024;
/// Events a client may have waiting before it counts as stuck and is dropped.
pub(crate) const QUEUE_LEN: usize = 256;
/// Departures from one room announced one by one; more at once are announced as the room's
/// new member list.
pub(crate) const LEAVE_NOTICES_MAX: usize = 16;
/// Members a room may have and still hear of each arrival and departure. Each notice goes to
/// every member, so a crowd of n arriving costs n² writes; in a larger room, as in a large
/// channel of any chat service, members come and go silently and `chat_who` lists them.
pub(crate) const PRESENCE_MAX: usize = 256;
/// Rooms the clients of one address (IPv6: one /64) may be in, all together. With 64 rooms a
/// client and 1024 connections an address, one address could otherwise make every room the
/// server keeps; past this its joins are `busy`, and everyone else's go on.
pub(crate) const MEMBERSHIPS_PER_SOURCE: usize = 1024;

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

const fn command(cmd: &'static str) -> CommandSpec {
    CommandSpec {
        cmd,
        max_body: 0,
        body: BodyMode::Whole,
    }
}

const COMMANDS: &[CommandSpec] = &[
    command(Login::CMD),
    command(Join::CMD),
    command(Leave::CMD),
    command(Say::CMD),
    command(Msg::CMD),
    command(Who::CMD),
    command(Rooms::CMD),
];

#[derive(Default)]
pub(crate) struct Chat {
    hub: SharedHub,
}

impl Chat {
    pub(crate) fn new(config: ChatConfig) -> Chat {
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
        if me.is_none() && request.header.cmd() != Login::CMD {
            return Err(refusals::not_logged_in().into());
        }
        let command = ChatRequest::from_header(&request.header).map_err(RemoteError::from)?;
        if let ChatRequest::Login(Login { name }) = command {
            return self.login(id, name, session).await;
        }
        let me = me.ok_or_else(refusals::not_logged_in)?;
        Ok(self.hub.lock().apply(me, id, command)?)
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
            .login_from(&name, outbox, kick.clone(), session.peer.source())?;
        let forwarder = tokio::spawn(feed::forward(
            queue,
            session.writer.clone(),
            kick,
            session.closer(),
        ));
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
