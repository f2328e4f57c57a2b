//! What each request does to the hub, once the service has read it and knows who sent it.
//!
//! [`Hub::apply`] is the one way in: it refuses a member the hub already dropped (its
//! pipelined requests may still arrive) and, whatever the request did, drops whoever it left
//! stuck before the lock is released. Answers go through the sender's own queue, like every
//! event, so they reach it in order with the events the request caused.

use super::history::Posted;
use super::hub::{Hub, MemberId, now};
use super::{PRESENCE_MAX, refusals};
use crate::metrics::metrics;
use crate::proto::chat::{ChatEvent, ChatRequest, MAX_ROOMS, MAX_ROOMS_PER_MEMBER, Msg, Say, Who};
use crate::wire::{Header, RemoteError};

impl Hub {
    /// Carries out a logged-in member's request, then drops whoever it left stuck.
    pub(crate) fn apply(
        &mut self,
        me: MemberId,
        id: Option<u64>,
        request: ChatRequest,
    ) -> Result<(), RemoteError> {
        if !self.members.contains_key(&me) {
            return Err(refusals::dropped());
        }
        let result = self.carry_out(me, id, request);
        self.drop_stuck();
        result
    }

    fn carry_out(&mut self, me: MemberId, id: Option<u64>, request: ChatRequest) -> Result<(), RemoteError> {
        match request {
            ChatRequest::Join(join) => self.join(me, id, join.room),
            ChatRequest::Leave(leave) => self.leave(me, id, leave.room),
            ChatRequest::Say(say) => self.say(me, say),
            ChatRequest::Msg(msg) => self.direct(me, msg),
            ChatRequest::Who(who) => self.who(me, id, who),
            ChatRequest::Rooms(rooms) => {
                let page = self.rooms_page(rooms.after);
                self.deliver(&[me], page.to_header(id));
                Ok(())
            }
            ChatRequest::Login(_) => Err(refusals::already_logged_in()),
        }
    }

    pub(crate) fn join(&mut self, me: MemberId, id: Option<u64>, room_name: &str) -> Result<(), RemoteError> {
        let member = self.members.get(&me).ok_or_else(refusals::dropped)?;
        let name = member.name.clone();
        if member.rooms.contains(room_name) {
            self.deliver(&[me], self.members_page(room_name, None).to_header(id));
            return Ok(());
        }
        if member.rooms.len() >= MAX_ROOMS_PER_MEMBER {
            return Err(refusals::too_many_rooms_joined());
        }
        let source = member.source;
        if !self.may_join_from(source) {
            return Err(refusals::too_many_rooms_from_source());
        }
        if !self.rooms.contains_key(room_name) && self.rooms.len() >= MAX_ROOMS {
            return Err(refusals::too_many_rooms());
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
        self.add_memberships(source, 1);
        let joined = ChatEvent::Join {
            room: room_name.to_owned(),
            name,
            time: now(),
        };
        if others.len() < PRESENCE_MAX {
            self.deliver(&others, joined.to_header(None));
        }
        for replay in replays {
            self.deliver(&[me], replay);
        }
        self.deliver(&[me], self.members_page(room_name, None).to_header(id));
        Ok(())
    }

    fn leave(&mut self, me: MemberId, id: Option<u64>, room_name: &str) -> Result<(), RemoteError> {
        let member = self.members.get_mut(&me).ok_or_else(refusals::dropped)?;
        if !member.rooms.remove(room_name) {
            return Err(refusals::not_in_room(room_name));
        }
        let (name, source) = (member.name.clone(), member.source);
        self.drop_memberships(source, 1);
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

    fn say(
        &mut self,
        me: MemberId,
        Say {
            room: room_name,
            text,
        }: Say,
    ) -> Result<(), RemoteError> {
        let from = self.members.get(&me).ok_or_else(refusals::dropped)?.name.clone();
        let everyone: Vec<MemberId> = match self.rooms.get(room_name) {
            Some(room) if room.members.contains(&me) => room.members.iter().copied().collect(),
            _ => return Err(refusals::not_in_room(room_name)),
        };
        let posted = Posted::new(from, text);
        let event = posted.event(room_name, false);
        self.keep(room_name, posted);
        metrics().chat_message("room");
        self.deliver(&everyone, event.to_header(None));
        Ok(())
    }

    fn direct(&mut self, me: MemberId, Msg { to, text }: Msg) -> Result<(), RemoteError> {
        let Some(&recipient) = self.by_name.get(to) else {
            return Err(refusals::nobody_called(to));
        };
        let event = ChatEvent::Direct {
            from: self.members.get(&me).ok_or_else(refusals::dropped)?.name.clone(),
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

    fn who(&mut self, me: MemberId, id: Option<u64>, Who { room, after }: Who) -> Result<(), RemoteError> {
        if !self.rooms.contains_key(room) {
            return Err(refusals::no_room(room));
        }
        let members = self.members_page(room, after);
        self.deliver(&[me], members.to_header(id));
        Ok(())
    }
}
