//! The member and room lists, a page at a time.
//!
//! A list answered whole could outgrow the largest header a server may send (a thousand rooms
//! of long names did), and then the request would be refused instead of answered. So every
//! list is sorted by name and cut after [`PAGE_LEN`] entries; `next` names the last entry
//! given, which the client sends back as `after` for the following page.

use std::ops::Bound;

use super::hub::Hub;
use crate::proto::chat::{ChatEvent, PAGE_LEN, RoomInfo};

impl Hub {
    /// One page of the rooms, in name order, after `after`.
    pub(super) fn rooms_page(&self, after: Option<&str>) -> ChatEvent {
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
        ChatEvent::Rooms { rooms, total, next }
    }

    /// One page of a room's members, in name order, after `after`.
    pub(super) fn members_page(&self, room_name: &str, after: Option<&str>) -> ChatEvent {
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
}

/// The first [`PAGE_LEN`] items, and whether more follow.
fn first_page<T>(items: impl Iterator<Item = T>) -> (Vec<T>, bool) {
    let mut items = items.peekable();
    let page: Vec<T> = items.by_ref().take(PAGE_LEN).collect();
    (page, items.peek().is_some())
}
