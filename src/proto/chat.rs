//! The chat service's requests, replies and events (docs/protocol.md, section 3, "Chat").
//!
//! One type per request, each encoding itself for the client ([`Login::to_header`]) and
//! decoding itself for the service ([`Login::from_header`]); [`ChatRequest::from_header`]
//! dispatches on `cmd` once. Decoding also checks what a request brings new (a nickname, a room
//! to join, a message's text), so that the service only ever sees valid names and texts; what
//! is wrong is a [`ChatRequestError`], which the service answers as `bad_request`. Everything
//! the service sends back is a [`ChatEvent`] in a `chat_event` frame. No chat message has a body.

use serde::{Deserialize, Serialize};

use crate::wire::{ErrorCode, Header, RemoteError};

/// Longest message text, in bytes.
pub const MAX_TEXT: usize = 4096;
/// Longest nickname or room name, in characters.
pub const MAX_NAME: usize = 32;
/// Messages kept per room and replayed to whoever joins.
pub const HISTORY_LEN: usize = 50;
/// Rooms the server keeps at most; joining a new one beyond is refused.
pub const MAX_ROOMS: usize = 10_000;
/// Rooms one member may be in at once.
pub const MAX_ROOMS_PER_MEMBER: usize = 64;
/// Names in one `members` or `rooms` answer: at most about 13 KiB of header, far under the
/// 64 KiB a header may be.
pub const PAGE_LEN: usize = 100;
/// The room a client joins when it is not told which.
pub const DEFAULT_ROOM: &str = "lobby";

/// `chat_login {name}`: takes a nickname, unique among those online, for this connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Login<'a> {
    /// The nickname asked for.
    pub name: &'a str,
}

impl<'a> Login<'a> {
    /// The request's `cmd`.
    pub const CMD: &'static str = "chat_login";

    /// The request as the client sends it, without an id.
    pub fn to_header(&self) -> Header {
        Header::new(Self::CMD).with("name", self.name)
    }

    /// Reads the request as the service does, validating what it names anew.
    pub fn from_header(header: &'a Header) -> Result<Login<'a>, ChatRequestError> {
        let name = field(header, Self::CMD, "name")?;
        Ok(Login {
            name: valid_name(name, NameOf::Nickname)?,
        })
    }
}

/// `chat_join {room}`: enters a room, creating it if nobody is in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Join<'a> {
    /// The room's name.
    pub room: &'a str,
}

impl<'a> Join<'a> {
    /// The request's `cmd`.
    pub const CMD: &'static str = "chat_join";

    /// The request as the client sends it, without an id.
    pub fn to_header(&self) -> Header {
        Header::new(Self::CMD).with("room", self.room)
    }

    /// Reads the request as the service does, validating what it names anew.
    pub fn from_header(header: &'a Header) -> Result<Join<'a>, ChatRequestError> {
        let room = field(header, Self::CMD, "room")?;
        Ok(Join {
            room: valid_name(room, NameOf::Room)?,
        })
    }
}

/// `chat_leave {room}`. The room is looked up, not checked: one never made cannot be left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leave<'a> {
    /// The room's name.
    pub room: &'a str,
}

impl<'a> Leave<'a> {
    /// The request's `cmd`.
    pub const CMD: &'static str = "chat_leave";

    /// The request as the client sends it, without an id.
    pub fn to_header(&self) -> Header {
        Header::new(Self::CMD).with("room", self.room)
    }

    /// Reads the request as the service does, validating what it names anew.
    pub fn from_header(header: &'a Header) -> Result<Leave<'a>, ChatRequestError> {
        Ok(Leave {
            room: field(header, Self::CMD, "room")?,
        })
    }
}

/// `chat_say {room, text}`: posts to a room the sender is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Say<'a> {
    /// A room the sender is in.
    pub room: &'a str,
    /// The message, at most [`MAX_TEXT`] bytes.
    pub text: &'a str,
}

impl<'a> Say<'a> {
    /// The request's `cmd`.
    pub const CMD: &'static str = "chat_say";

    /// The request as the client sends it, without an id.
    pub fn to_header(&self) -> Header {
        Header::new(Self::CMD)
            .with("room", self.room)
            .with("text", self.text)
    }

    /// Reads the request as the service does, validating what it names anew.
    pub fn from_header(header: &'a Header) -> Result<Say<'a>, ChatRequestError> {
        Ok(Say {
            room: field(header, Self::CMD, "room")?,
            text: valid_text(field(header, Self::CMD, "text")?)?,
        })
    }
}

/// `chat_msg {to, text}`: a direct message to one nickname.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msg<'a> {
    /// The nickname it is for.
    pub to: &'a str,
    /// The message, at most [`MAX_TEXT`] bytes.
    pub text: &'a str,
}

impl<'a> Msg<'a> {
    /// The request's `cmd`.
    pub const CMD: &'static str = "chat_msg";

    /// The request as the client sends it, without an id.
    pub fn to_header(&self) -> Header {
        Header::new(Self::CMD).with("to", self.to).with("text", self.text)
    }

    /// Reads the request as the service does, validating what it names anew.
    pub fn from_header(header: &'a Header) -> Result<Msg<'a>, ChatRequestError> {
        Ok(Msg {
            to: field(header, Self::CMD, "to")?,
            text: valid_text(field(header, Self::CMD, "text")?)?,
        })
    }
}

/// `chat_who {room, after?}`: a page of a room's members, those named after `after` (a
/// previous page's `next`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Who<'a> {
    /// The room's name.
    pub room: &'a str,
    /// The previous page's `next`; `None` for the first page.
    pub after: Option<&'a str>,
}

impl<'a> Who<'a> {
    /// The request's `cmd`.
    pub const CMD: &'static str = "chat_who";

    /// The request as the client sends it, without an id.
    pub fn to_header(&self) -> Header {
        with_after(Header::new(Self::CMD).with("room", self.room), self.after)
    }

    /// Reads the request as the service does, validating what it names anew.
    pub fn from_header(header: &'a Header) -> Result<Who<'a>, ChatRequestError> {
        Ok(Who {
            room: field(header, Self::CMD, "room")?,
            after: header.str("after"),
        })
    }
}

/// `chat_rooms {after?}`: a page of the server's rooms, paged as [`Who`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rooms<'a> {
    /// The previous page's `next`; `None` for the first page.
    pub after: Option<&'a str>,
}

impl<'a> Rooms<'a> {
    /// The request's `cmd`.
    pub const CMD: &'static str = "chat_rooms";

    /// The request as the client sends it, without an id.
    pub fn to_header(&self) -> Header {
        with_after(Header::new(Self::CMD), self.after)
    }

    /// Reads the request as the service does, validating what it names anew.
    pub fn from_header(header: &'a Header) -> Result<Rooms<'a>, ChatRequestError> {
        Ok(Rooms {
            after: header.str("after"),
        })
    }
}

fn with_after(header: Header, after: Option<&str>) -> Header {
    match after {
        Some(after) => header.with("after", after),
        None => header,
    }
}

/// Any chat request, read from a header whose `cmd` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChatRequest<'a> {
    /// `chat_login`.
    Login(Login<'a>),
    /// `chat_join`.
    Join(Join<'a>),
    /// `chat_leave`.
    Leave(Leave<'a>),
    /// `chat_say`.
    Say(Say<'a>),
    /// `chat_msg`.
    Msg(Msg<'a>),
    /// `chat_who`.
    Who(Who<'a>),
    /// `chat_rooms`.
    Rooms(Rooms<'a>),
}

impl<'a> ChatRequest<'a> {
    /// Reads a `chat_*` request. New names (nickname, room joined) and message texts are
    /// validated here; names that must already exist are looked up by the hub instead.
    /// Reads the request as the service does, validating what it names anew.
    pub fn from_header(header: &'a Header) -> Result<ChatRequest<'a>, ChatRequestError> {
        Ok(match header.cmd() {
            Login::CMD => ChatRequest::Login(Login::from_header(header)?),
            Join::CMD => ChatRequest::Join(Join::from_header(header)?),
            Leave::CMD => ChatRequest::Leave(Leave::from_header(header)?),
            Say::CMD => ChatRequest::Say(Say::from_header(header)?),
            Msg::CMD => ChatRequest::Msg(Msg::from_header(header)?),
            Who::CMD => ChatRequest::Who(Who::from_header(header)?),
            Rooms::CMD => ChatRequest::Rooms(Rooms::from_header(header)?),
            other => return Err(ChatRequestError::NotChat(shown(other))),
        })
    }

    /// The request as the client sends it, without an id.
    pub fn to_header(&self) -> Header {
        match self {
            ChatRequest::Login(login) => login.to_header(),
            ChatRequest::Join(join) => join.to_header(),
            ChatRequest::Leave(leave) => leave.to_header(),
            ChatRequest::Say(say) => say.to_header(),
            ChatRequest::Msg(msg) => msg.to_header(),
            ChatRequest::Who(who) => who.to_header(),
            ChatRequest::Rooms(rooms) => rooms.to_header(),
        }
    }
}

/// What makes a chat request unreadable. Names in it are quoted as `shown` quotes them, so
/// that the refusal stays small whatever was sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs, reason = "each variant's #[error] text says what it means")]
pub enum ChatRequestError {
    /// Holds the `cmd`, as shown.
    #[error("`{0}` is not a chat request")]
    NotChat(String),
    #[error("`{cmd}` needs a `{field}` string")]
    MissingField { cmd: &'static str, field: &'static str },
    /// `name` is the offending name as shown.
    #[error("{what} `{name}` {problem}")]
    BadName {
        what: NameOf,
        name: String,
        problem: NameProblem,
    },
    #[error("message {0}")]
    BadText(TextProblem),
}

/// A request that cannot be read is refused as `bad_request`, with the reason as message.
impl From<ChatRequestError> for RemoteError {
    fn from(error: ChatRequestError) -> RemoteError {
        RemoteError::new(ErrorCode::BadRequest, error.to_string())
    }
}

/// Which kind of name a [`ChatRequestError::BadName`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs, reason = "each variant's #[error] text says what it means")]
pub enum NameOf {
    #[error("nickname")]
    Nickname,
    #[error("room")]
    Room,
}

/// What is wrong with a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs, reason = "each variant's #[error] text says what it means")]
pub enum NameProblem {
    #[error("must be 1 to {MAX_NAME} characters")]
    Length,
    #[error("may not contain spaces or control characters")]
    Spacing,
    /// The terminal client reads a leading `/` as a command and `#` as a room.
    #[error("may not start with `/` or `#`")]
    Marker,
}

/// What is wrong with a message's text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[allow(missing_docs, reason = "each variant's #[error] text says what it means")]
pub enum TextProblem {
    #[error("is empty")]
    Empty,
    #[error("is longer than {MAX_TEXT} bytes")]
    TooLong,
    #[error("contains control characters")]
    ControlCharacters,
}

/// Nicknames and room names: 1 to [`MAX_NAME`] characters, no spaces or control characters,
/// and no leading `/` or `#` (the terminal client's command and room markers).
pub fn valid_name(name: &str, what: NameOf) -> Result<&str, ChatRequestError> {
    let length = name.chars().count();
    let problem = if length == 0 || length > MAX_NAME {
        NameProblem::Length
    } else if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        NameProblem::Spacing
    } else if name.starts_with(['/', '#']) {
        NameProblem::Marker
    } else {
        return Ok(name);
    };
    Err(ChatRequestError::BadName {
        what,
        name: shown(name),
        problem,
    })
}

/// Message text: one line of at most [`MAX_TEXT`] bytes without control characters (tabs
/// allowed), so no message can move another user's cursor or recolour their terminal.
pub fn valid_text(text: &str) -> Result<&str, ChatRequestError> {
    let problem = if text.is_empty() {
        TextProblem::Empty
    } else if text.len() > MAX_TEXT {
        TextProblem::TooLong
    } else if text.chars().any(|c| c.is_control() && c != '\t') {
        TextProblem::ControlCharacters
    } else {
        return Ok(text);
    };
    Err(ChatRequestError::BadText(problem))
}

/// A name from a request as a refusal quotes it: escaped, and cut after [`MAX_NAME`]
/// characters, so that a refusal stays small whatever was sent (escaping can make a control
/// character eight bytes long, and a refusal larger than a header may be is never sent).
pub(crate) fn shown(name: &str) -> String {
    crate::text::escape_at_most(name, MAX_NAME)
}

fn field<'a>(header: &'a Header, cmd: &'static str, key: &'static str) -> Result<&'a str, ChatRequestError> {
    header
        .str(key)
        .ok_or(ChatRequestError::MissingField { cmd, field: key })
}

/// What a chat client receives, as the fields of a `chat_event` frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChatEvent {
    /// Answer to `chat_login`.
    Welcome {
        /// The nickname now held.
        name: String,
    },
    /// A message posted in a room; `replay` marks history sent on join.
    Message {
        /// Where it was posted.
        room: String,
        /// The sender's nickname.
        from: String,
        /// When the server received it: RFC 3339, UTC, in milliseconds.
        time: String,
        /// The message.
        text: String,
        /// Sent earlier, replayed from the room's history.
        #[serde(default)]
        replay: bool,
    },
    /// A direct message; the sender gets a copy as its receipt.
    Direct {
        /// The sender's nickname.
        from: String,
        /// The recipient's nickname.
        to: String,
        /// When the server received it: RFC 3339, UTC, in milliseconds.
        time: String,
        /// The message.
        text: String,
    },
    /// Someone joined a room you are in.
    Join {
        /// The room.
        room: String,
        /// Who joined.
        name: String,
        /// When: RFC 3339, UTC, in milliseconds.
        time: String,
    },
    /// Someone left a room you are in; `reason` says why when they did not choose to.
    Leave {
        /// The room.
        room: String,
        /// Who left.
        name: String,
        /// When: RFC 3339, UTC, in milliseconds.
        time: String,
        /// Why, when they did not leave by choice (as `dropped: too slow`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Answer to `chat_join` (after the room's history) and to `chat_who`: one page of the
    /// room's members in name order, `total` of them in all; `next`, when set, is the `after`
    /// that asks for the following page.
    Members {
        /// The room.
        room: String,
        /// This page's nicknames, in name order.
        members: Vec<String>,
        /// Members of the room in all.
        #[serde(default)]
        total: usize,
        /// The `after` of the following page; `None` on the last.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
    },
    /// Answer to `chat_leave`.
    Left {
        /// The room left.
        room: String,
    },
    /// Answer to `chat_rooms`: one page of rooms in name order, paged as `Members` is.
    Rooms {
        /// This page's rooms, in name order.
        rooms: Vec<RoomInfo>,
        /// Rooms on the server in all.
        #[serde(default)]
        total: usize,
        /// The `after` of the following page; `None` on the last.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next: Option<String>,
    },
    /// You were disconnected by the server.
    Dropped {
        /// Why, for the person.
        reason: String,
    },
}

/// One room in a `rooms` page.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoomInfo {
    /// The room's name.
    pub name: String,
    /// Members in it now.
    pub members: usize,
}

impl ChatEvent {
    /// The `cmd` of every frame the service sends a logged-in client, answers included.
    /// The request's `cmd`.
    pub const CMD: &'static str = "chat_event";

    /// The frame carrying this event; `id` is the request's it answers, if any.
    pub fn to_header(&self, id: Option<u64>) -> Header {
        Header::from_message(Self::CMD, self).with_id(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_texts_are_checked() {
        assert!(valid_name("金老板", NameOf::Nickname).is_ok());
        assert!(valid_name("", NameOf::Nickname).is_err());
        assert!(valid_name("a b", NameOf::Nickname).is_err());
        assert!(valid_name("/quit", NameOf::Nickname).is_err());
        assert!(valid_name(&"x".repeat(33), NameOf::Room).is_err());
        assert!(valid_text("hello\tthere").is_ok());
        assert!(valid_text("\x1b[2J").is_err());
        assert!(valid_text(&"x".repeat(MAX_TEXT + 1)).is_err());
    }

    /// The refusals read as they did when the service wrote them as strings.
    #[test]
    fn refusals_keep_their_words() {
        let message = |error: ChatRequestError| RemoteError::from(error).message;
        assert_eq!(
            message(valid_name("a b", NameOf::Nickname).unwrap_err()),
            "nickname `a b` may not contain spaces or control characters"
        );
        assert_eq!(
            message(valid_name("#x", NameOf::Room).unwrap_err()),
            "room `#x` may not start with `/` or `#`"
        );
        assert_eq!(
            message(valid_text(&"x".repeat(MAX_TEXT + 1)).unwrap_err()),
            "message is longer than 4096 bytes"
        );
        let missing = Header::new("chat_say").with("room", "lobby");
        assert_eq!(
            message(ChatRequest::from_header(&missing).unwrap_err()),
            "`chat_say` needs a `text` string"
        );
        let unknown = Header::new("chat_\u{7f}");
        assert_eq!(
            message(ChatRequest::from_header(&unknown).unwrap_err()),
            "`chat_\\u{7f}` is not a chat request"
        );
    }

    #[test]
    fn requests_round_trip_through_headers() {
        let requests = [
            ChatRequest::Login(Login { name: "alice" }),
            ChatRequest::Join(Join { room: "lobby" }),
            ChatRequest::Leave(Leave { room: "lobby" }),
            ChatRequest::Say(Say {
                room: "lobby",
                text: "hi",
            }),
            ChatRequest::Msg(Msg {
                to: "bob",
                text: "psst",
            }),
            ChatRequest::Who(Who {
                room: "lobby",
                after: Some("alice"),
            }),
            ChatRequest::Rooms(Rooms { after: None }),
        ];
        for request in requests {
            let header = request.to_header();
            assert_eq!(ChatRequest::from_header(&header), Ok(request));
        }
    }

    #[test]
    fn events_round_trip_through_headers() {
        let event = ChatEvent::Leave {
            room: "lobby".into(),
            name: "bob".into(),
            time: "2026-11-29T01:04:10.372Z".into(),
            reason: Some("dropped: too slow".into()),
        };
        let header = event.to_header(Some(7));
        assert_eq!(header.cmd(), "chat_event");
        assert_eq!(header.id(), Some(7));
        assert_eq!(header.parse::<ChatEvent>().unwrap(), event);
    }
}
