//! The rooms' history: the last [`HISTORY_LEN`] messages of each room, replayed to whoever
//! joins, and one byte budget for all rooms together.
//!
//! A budget per room would let many rooms add up without bound, so the budget is the server's:
//! past it the oldest message anywhere goes first. To find that message without scanning the
//! rooms, every kept message is also in one server-wide order; entries for messages that
//! already went another way (their room's own cap, or the room expired) are skipped when met
//! and swept out once they outnumber the live ones, so the order stays bounded too.

use std::collections::VecDeque;

use super::hub::{Hub, now};
use crate::proto::chat::{ChatEvent, HISTORY_LEN};

/// What one kept message costs beyond its text, names and time: its bookkeeping (the message's
/// own fields and its place in the eviction order, which may hold as many entries again for
/// messages already gone before it is swept).
const POSTED_OVERHEAD: usize = 160;

/// A message kept in a room's history.
pub(super) struct Posted {
    /// Position in the server-wide order of posts, which decides what is evicted first.
    seq: u64,
    time: String,
    from: String,
    text: String,
}

/// The accounting of all rooms' history together.
#[derive(Default)]
pub(super) struct History {
    pub(super) bytes: usize,
    pub(super) messages: usize,
    /// Every kept message as (room, seq), oldest first. Entries whose message already went
    /// (the room's own cap, or the room expired) are skipped when met and swept out when they
    /// outnumber the live ones.
    pub(super) order: VecDeque<(String, u64)>,
    next_seq: u64,
}

impl Hub {
    /// Adds a message to a room's history and to the server-wide accounting, then evicts the
    /// oldest messages anywhere until all history fits the budget again.
    pub(super) fn keep(&mut self, room_name: &str, mut posted: Posted) {
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
}

impl History {
    /// Takes a message that left its room out of the accounting.
    pub(super) fn forget(&mut self, posted: &Posted, room_name: &str) {
        self.bytes = self.bytes.saturating_sub(posted.cost(room_name));
        self.messages = self.messages.saturating_sub(1);
    }
}

impl Posted {
    /// A message `from` posts now; its place in the order is given when it is kept.
    pub(super) fn new(from: String, text: &str) -> Posted {
        Posted {
            seq: 0,
            time: now(),
            from,
            text: text.to_owned(),
        }
    }

    /// What keeping this message costs against the history budget.
    fn cost(&self, room_name: &str) -> usize {
        self.text.len() + self.from.len() + self.time.len() + room_name.len() + POSTED_OVERHEAD
    }

    pub(super) fn event(&self, room: &str, replay: bool) -> ChatEvent {
        ChatEvent::Message {
            room: room.to_owned(),
            from: self.from.clone(),
            time: self.time.clone(),
            text: self.text.clone(),
            replay,
        }
    }

    pub(super) fn replay(&self, room: &str) -> ChatEvent {
        self.event(room, true)
    }
}
