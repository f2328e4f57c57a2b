//! The hub's bounds and its no-panic rules, checked on a hub without a server: the drop
//! worklist, refusals after a drop, the poisoned lock, the history budget, the room bounds and
//! the paged lists (issue 12's H2, H3, M4 and M5).

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::proto::chat::{HISTORY_LEN, Join, Leave, MAX_NAME, MAX_ROOMS_PER_MEMBER, Msg, Say, Who};
use crate::wire::{ErrorCode, Header};

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

fn join(room: &str) -> ChatRequest<'_> {
    ChatRequest::Join(Join { room })
}

fn say<'a>(room: &'a str, text: &'a str) -> ChatRequest<'a> {
    ChatRequest::Say(Say { room, text })
}

fn leave(room: &str) -> ChatRequest<'_> {
    ChatRequest::Leave(Leave { room })
}

/// Issue 12 H2: each stuck member used to cost a level of recursion; twenty thousand at
/// once overflow any stack that way.
#[test]
fn twenty_thousand_stuck_members_are_dropped_from_a_list() {
    let mut hub = Hub::default();
    let (poster, mut poster_feed) = member(&mut hub, "poster", 1024);
    hub.apply(poster, None, join("lobby")).unwrap();
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
    hub.apply(flood, None, join("lobby")).unwrap();
    for _ in 0..10 {
        let _ = hub.apply(flood, None, say("lobby", "x"));
    }
    assert!(hub.members.is_empty(), "flood was dropped");
    for request in [
        leave("lobby"),
        join("lobby"),
        ChatRequest::Msg(Msg {
            to: "flood",
            text: "x",
        }),
        say("lobby", "x"),
        ChatRequest::Who(Who {
            room: "lobby",
            after: None,
        }),
    ] {
        let refusal = hub.apply(flood, Some(1), request).unwrap_err();
        assert_eq!(refusal.code, ErrorCode::Dropped);
    }
    let (other, mut feed) = member(&mut hub, "other", 16);
    hub.apply(other, None, join("lobby")).unwrap();
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
        hub.apply(me, None, join(room)).unwrap();
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

    hub.apply(me, None, leave("new")).unwrap();
    hub.apply(me, None, leave("old")).unwrap();
    assert!(hub.rooms.is_empty());
    assert_eq!((hub.history.bytes, hub.history.messages), (0, 0));
}

#[test]
fn a_member_is_in_a_bounded_number_of_rooms() {
    let mut hub = Hub::default();
    let (me, _feed) = member(&mut hub, "me", 4096);
    for n in 0..MAX_ROOMS_PER_MEMBER {
        hub.apply(me, None, join(&format!("r{n}"))).unwrap();
    }
    let refusal = hub.apply(me, None, join("more")).unwrap_err();
    assert_eq!(refusal.code, ErrorCode::Busy);
    assert!(hub.apply(me, None, join("r0")).is_ok(), "rejoining is fine");
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

/// Issue 12 H2's cost: every arrival told to every member is n² writes for a crowd of n. Past
/// PRESENCE_MAX members a room hears no arrivals or departures; below it, it hears each.
#[test]
fn only_rooms_below_the_presence_bound_hear_who_comes_and_goes() {
    let mut hub = Hub::default();
    let (first, mut first_feed) = member(&mut hub, "first", 4 * PRESENCE_MAX);
    hub.apply(first, None, join("crowd")).unwrap();
    let mut crowd = Vec::new();
    for n in 1..PRESENCE_MAX {
        let (id, feed) = member(&mut hub, &format!("m{n}"), 4 * PRESENCE_MAX);
        hub.apply(id, None, join("crowd")).unwrap();
        crowd.push((id, feed));
    }
    let arrivals = |events: Vec<ChatEvent>| {
        events
            .into_iter()
            .filter(|event| matches!(event, ChatEvent::Join { .. }))
            .count()
    };
    assert_eq!(arrivals(received(&mut first_feed)), PRESENCE_MAX - 1);
    let (late, _late_feed) = member(&mut hub, "late", 4 * PRESENCE_MAX);
    hub.apply(late, None, join("crowd")).unwrap();
    assert_eq!(
        arrivals(received(&mut first_feed)),
        0,
        "a room of PRESENCE_MAX is not told"
    );
    hub.apply(late, None, leave("crowd")).unwrap();
    let (leaver, _) = crowd.pop().unwrap();
    hub.apply(leaver, None, leave("crowd")).unwrap();
    let departures = received(&mut first_feed)
        .into_iter()
        .filter(|event| matches!(event, ChatEvent::Leave { .. }))
        .count();
    assert_eq!(
        departures, 1,
        "the room is below the bound again once `late` left"
    );
}

/// Issue 12: rooms are bounded per client and per server, and per address too, or one
/// address's 1,024 connections could make every room the server keeps.
#[test]
fn one_address_is_in_a_bounded_number_of_rooms() {
    let mut hub = Hub::default();
    let here: std::net::IpAddr = [127, 0, 0, 9].into();
    let mut clients = Vec::new();
    let mut joined = 0;
    'filling: for n in 0.. {
        let (outbox, feed) = mpsc::channel(4 * MAX_ROOMS_PER_MEMBER);
        let id = hub
            .login_from(&format!("c{n}"), outbox, CancellationToken::new(), Some(here))
            .unwrap();
        clients.push((id, feed));
        for room in 0..MAX_ROOMS_PER_MEMBER {
            if joined == MEMBERSHIPS_PER_SOURCE {
                break 'filling;
            }
            hub.apply(id, None, join(&format!("r{n}-{room}"))).unwrap();
            joined += 1;
        }
    }
    let (outbox, _newcomer_feed) = mpsc::channel(16);
    let newcomer = hub
        .login_from("newcomer", outbox, CancellationToken::new(), Some(here))
        .unwrap();
    let refused = hub.apply(newcomer, None, join("one-more")).unwrap_err();
    assert_eq!(refused.code, ErrorCode::Busy);
    assert!(refused.message.contains("your address"), "{}", refused.message);
    let (elsewhere, _feed) = member(&mut hub, "elsewhere", 16);
    hub.apply(elsewhere, None, join("one-more")).unwrap();
    // Leaving one room, or a client's going, gives the address its rooms back.
    let (first, _) = clients.first().unwrap();
    hub.apply(*first, None, leave("r0-0")).unwrap();
    hub.apply(newcomer, None, join("one-more")).unwrap();
    hub.logout(*first);
    assert_eq!(
        hub.memberships.get(&here).copied(),
        Some(MEMBERSHIPS_PER_SOURCE - MAX_ROOMS_PER_MEMBER + 1)
    );
}
