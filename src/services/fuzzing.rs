//! Checks run by the fuzz targets of the services (fuzz/) and by the test that replays their
//! corpus, kept in the library so both run exactly the same code.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "a fuzz check panics on purpose when an invariant breaks"
)]

use std::time::SystemTime;

use bytes::BytesMut;
use chrono::{DateTime, FixedOffset, TimeZone};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::chat::{Event, Hub, MemberId, QUEUE_LEN};
use super::clock::{NTP_PACKET_LEN, sntp_reply};
use super::time::{
    MAX_ERROR_REPLY_LEN, MAX_REPLY_GROWTH, MAX_REPLY_LEN, datagram_reply, format_at, parse_datagram_reply,
};
use crate::proto::chat::{ChatEvent, ChatRequest, Join, Login, Msg, NameOf, Say, valid_name, valid_text};
use crate::text::escape;
use crate::wire::{DEFAULT_MAX_HEADER_LEN, Header, RemoteError};

/// Largest refusal, encoded, that any request may draw: a refusal quotes at most a short
/// part of the request, so a large request cannot make an answer too large to send.
pub const MAX_REFUSAL_LEN: usize = 1024;

/// A datagram sent to the UDP time services: the course's time server answers with text or a
/// short error, never more than its caps nor much longer than the request, and a datagram
/// with no `%` not at all; SNTP answers client requests only, in server mode, echoing the
/// client's transmit time. (Daytime and RFC 868 never read what they are sent.)
pub fn check_time_datagram(data: &[u8]) {
    let Some(reply) = datagram_reply(data) else {
        assert!(
            !data.is_empty() && !data.contains(&b'%'),
            "a format went unanswered"
        );
        return;
    };
    assert!(
        reply.len() <= data.len() + MAX_REPLY_GROWTH,
        "reply of {} bytes",
        reply.len()
    );
    match parse_datagram_reply(&reply) {
        Ok(_) => {
            assert!(reply.len() <= MAX_REPLY_LEN, "reply of {} bytes", reply.len());
            assert!(std::str::from_utf8(&reply).is_ok(), "time text is not UTF-8");
        }
        Err(_) => assert!(
            reply.len() <= MAX_ERROR_REPLY_LEN,
            "error of {} bytes",
            reply.len()
        ),
    }
    if let Ok(format) = std::str::from_utf8(data) {
        check_format(&fixed_moment(), format);
    }
    check_sntp(data);
}

/// 2024-02-29 13:05:09.123456789 +08:00: a leap day, with a fraction and an offset.
fn fixed_moment() -> DateTime<FixedOffset> {
    let offset = FixedOffset::east_opt(8 * 3600).expect("a valid offset");
    offset
        .with_ymd_and_hms(2024, 2, 29, 13, 5, 9)
        .single()
        .expect("a valid moment")
        + chrono::Duration::nanoseconds(123_456_789)
}

/// A format gives capped text or an error; a format without conversions is refused.
fn check_format(moment: &DateTime<FixedOffset>, format: &str) {
    let Ok(text) = format_at(moment, format) else {
        return;
    };
    assert!(text.len() <= MAX_REPLY_LEN);
    assert!(format.is_empty() || format.contains('%'), "literal text answered");
}

fn check_sntp(data: &[u8]) {
    let now = SystemTime::now();
    let Some(reply) = sntp_reply(data, now, now) else {
        return;
    };
    assert!(data.len() >= NTP_PACKET_LEN, "answered a short packet");
    assert_eq!(
        data[0] & 0b111,
        3,
        "answered a packet that is not a client request"
    );
    assert_eq!(reply[0] & 0b111, 4, "the reply is not in server mode");
    assert_eq!(reply[0] >> 3 & 0b111, data[0] >> 3 & 0b111, "the version changed");
    assert_eq!(
        reply[24..32],
        data[40..48],
        "originate is not the client's transmit time"
    );
}

/// A header as a chat request (the server's side) and as a chat event (the client's side).
pub fn check_chat_header(data: &[u8]) {
    let Ok(header) = Header::from_json(data) else {
        return;
    };
    check_chat_request(&header);
    check_chat_event(&header);
}

/// A request is refused with a short answer, or its fields are valid and a hub where the
/// sender and one other member share `lobby` carries it out: everything it sends either of
/// them is a chat event small enough to send.
fn check_chat_request(header: &Header) {
    let request = match ChatRequest::from_header(header) {
        Ok(request) => request,
        Err(error) => return assert_short(&RemoteError::from(error)),
    };
    match &request {
        ChatRequest::Login(Login { name }) => assert!(valid_name(name, NameOf::Nickname).is_ok()),
        ChatRequest::Join(Join { room }) => assert!(valid_name(room, NameOf::Room).is_ok()),
        ChatRequest::Say(Say { text, .. }) | ChatRequest::Msg(Msg { text, .. }) => {
            assert!(valid_text(text).is_ok());
        }
        _ => {}
    }
    let mut hub = Hub::default();
    let (me, mut my_feed) = member(&mut hub, "alice");
    let (_, mut other_feed) = member(&mut hub, "bob");
    if let Err(refusal) = hub.apply(me, Some(u64::MAX), request) {
        assert_short(&refusal);
    }
    for feed in [&mut my_feed, &mut other_feed] {
        while let Ok(event) = feed.try_recv() {
            assert!(encoded_len(&event) <= DEFAULT_MAX_HEADER_LEN);
            assert_eq!(event.cmd(), "chat_event");
            assert!(event.parse::<ChatEvent>().is_ok(), "{event:?}");
        }
    }
}

/// A member of `hub` called `name`, in room `lobby`, with what the hub sent it so far drained.
fn member(hub: &mut Hub, name: &str) -> (MemberId, mpsc::Receiver<Event>) {
    let (outbox, mut feed) = mpsc::channel(QUEUE_LEN);
    let id = hub
        .login(name, outbox, CancellationToken::new())
        .expect("a free name");
    hub.join(id, None, "lobby").expect("room for lobby");
    while feed.try_recv().is_ok() {}
    (id, feed)
}

fn assert_short(refusal: &RemoteError) {
    let len = encoded_len(&refusal.to_header(Some(u64::MAX)));
    assert!(len <= MAX_REFUSAL_LEN, "a refusal of {len} bytes: {refusal}");
}

fn encoded_len(header: &Header) -> usize {
    let mut out = BytesMut::new();
    header.write_json(&mut out);
    out.len()
}

/// What parses as an event re-encodes to the same event, and every text in it is shown
/// without control or format characters once escaped (as the terminal client shows it).
fn check_chat_event(header: &Header) {
    let Ok(event) = header.parse::<ChatEvent>() else {
        return;
    };
    let again = event.to_header(header.id()).parse::<ChatEvent>();
    assert_eq!(
        again.ok().as_ref(),
        Some(&event),
        "the event changed on re-encoding"
    );
    let fields = serde_json::to_value(&event).expect("an event serializes");
    for_each_string(&fields, &mut |text| {
        let shown = escape(text);
        assert!(
            !shown.chars().any(crate::text::is_unsafe),
            "{shown:?} reaches the terminal"
        );
    });
}

fn for_each_string(value: &Value, visit: &mut impl FnMut(&str)) {
    match value {
        Value::String(text) => visit(text),
        Value::Array(items) => items.iter().for_each(|item| for_each_string(item, visit)),
        Value::Object(fields) => fields.values().for_each(|item| for_each_string(item, visit)),
        _ => {}
    }
}
