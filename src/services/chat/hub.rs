//! The hub: who is online, which rooms exist and who is in them, and how an event reaches
//! its recipients.
//!
//! It lives behind one lock that is held briefly and never across an `await`, so delivery is
//! a `try_send` into each recipient's queue: a full queue marks its member stuck instead of
//! waiting. Stuck members are dropped before the lock is released, from a worklist and never
//! by recursion (telling the others of a drop can fill more queues), so any number of stuck
//! members costs time, not stack. Nothing here indexes or unwraps: a panic under the lock
//! would end chat for everyone.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::feed::Event;
use super::history::{History, Posted};
use super::refusals;
use super::{ChatConfig, LEAVE_NOTICES_MAX, MEMBERSHIPS_PER_SOURCE, PRESENCE_MAX};
use crate::metrics::metrics;
use crate::proto::chat::ChatEvent;
use crate::text::escape;
use crate::wire::{Header, RemoteError};

/// The `reason` of the leave notices for a member dropped as stuck.
const TOO_SLOW: &str = "dropped: too slow";

pub(crate) type MemberId = u64;

/// Who is online and where. Always locked briefly and never across an `await`.
#[derive(Default)]
pub(crate) struct Hub {
    pub(super) config: ChatConfig,
    pub(super) members: HashMap<MemberId, Member>,
    pub(super) by_name: HashMap<String, MemberId>,
    pub(super) rooms: BTreeMap<String, Room>,
    pub(super) history: History,
    /// Members whose queue overflowed during the current request, to be dropped before the
    /// lock is released.
    pub(super) stuck: Vec<MemberId>,
    /// Room memberships held by each address's clients, for [`MEMBERSHIPS_PER_SOURCE`].
    pub(super) memberships: HashMap<IpAddr, usize>,
}

pub(super) struct Member {
    pub(super) name: String,
    outbox: mpsc::Sender<Event>,
    kick: CancellationToken,
    pub(super) rooms: BTreeSet<String>,
    /// The address it counts as for per-address bounds (`None`: a Unix-socket peer).
    pub(super) source: Option<IpAddr>,
    /// Its queue overflowed: it is sent nothing more and is about to be dropped.
    stuck: bool,
}

#[derive(Default)]
pub(super) struct Room {
    pub(super) members: BTreeSet<MemberId>,
    pub(super) history: VecDeque<Posted>,
}

static NEXT_MEMBER: AtomicU64 = AtomicU64::new(1);

impl Hub {
    pub(crate) fn new(config: ChatConfig) -> Hub {
        Hub {
            config,
            ..Hub::default()
        }
    }

    /// [`Hub::login_from`] with no address, for the hub's tests and fuzzing.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn login(
        &mut self,
        name: &str,
        outbox: mpsc::Sender<Event>,
        kick: CancellationToken,
    ) -> Result<MemberId, RemoteError> {
        self.login_from(name, outbox, kick, None)
    }

    /// Logs a client in as `name` (refused `name_taken` if someone online has it); it counts as
    /// `source` for per-address bounds.
    pub(crate) fn login_from(
        &mut self,
        name: &str,
        outbox: mpsc::Sender<Event>,
        kick: CancellationToken,
        source: Option<IpAddr>,
    ) -> Result<MemberId, RemoteError> {
        if self.by_name.contains_key(name) {
            return Err(refusals::name_taken(name));
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
                source,
                stuck: false,
            },
        );
        Ok(id)
    }

    /// Takes `member` off the server: its connection ended.
    pub(crate) fn logout(&mut self, member: MemberId) {
        self.remove(&[member], None);
        self.drop_stuck();
    }

    /// Whether `source`'s clients may join one room more.
    pub(super) fn may_join_from(&self, source: Option<IpAddr>) -> bool {
        source
            .is_none_or(|source| self.memberships.get(&source).copied().unwrap_or(0) < MEMBERSHIPS_PER_SOURCE)
    }

    /// Counts `n` more room memberships for `source`'s clients.
    pub(super) fn add_memberships(&mut self, source: Option<IpAddr>, n: usize) {
        if let Some(source) = source {
            let held = self.memberships.entry(source).or_default();
            *held = held.saturating_add(n);
        }
    }

    /// Counts `n` fewer room memberships for `source`'s clients; an address holding none is
    /// forgotten, so the map holds only addresses with clients in rooms.
    pub(super) fn drop_memberships(&mut self, source: Option<IpAddr>, n: usize) {
        let Some(source) = source else { return };
        if let Some(held) = self.memberships.get_mut(&source) {
            *held = held.saturating_sub(n);
            if *held == 0 {
                self.memberships.remove(&source);
            }
        }
    }

    /// Tells a room that `names` left it; a room left empty expires with its history. Past
    /// [`LEAVE_NOTICES_MAX`] departures at once (a mass drop) the room gets its new member
    /// list instead, so that nobody's queue overflows with news of the others; a room of
    /// [`PRESENCE_MAX`] members or more is not told.
    pub(super) fn announce_leave(&mut self, room_name: &str, names: Vec<String>, reason: Option<&str>) {
        let Some(room) = self.rooms.get(room_name) else {
            return;
        };
        if room.members.is_empty() {
            self.expire(room_name);
            return;
        }
        if room.members.len() >= PRESENCE_MAX {
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
            self.drop_memberships(member.source, member.rooms.len());
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
    pub(super) fn drop_stuck(&mut self) {
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
    pub(super) fn deliver(&mut self, recipients: &[MemberId], header: Header) {
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

/// The time an event happened, as events carry it: RFC 3339 in UTC, to the millisecond.
pub(super) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
