//! The client side of the `chat` service.
//!
//! Chat is not request/response: events arrive whenever others speak. So a logged-in session
//! splits in two halves that work independently, a [`ChatSender`] for requests and a
//! [`ChatFeed`] that yields everything the server sends, answers to requests included (tied to
//! them by id), in the order the server sent it.

use super::{Client, ClientError};
use crate::proto::chat::{ChatEvent, Join, Leave, Login, Msg, Rooms, Say, Who};
use crate::wire::{FrameReader, FrameWriter, Header, RemoteError};

/// A logged-in chat session.
pub struct ChatSession {
    /// Sends requests; may move to another task than the feed.
    pub sender: ChatSender,
    /// Reads what the server sends, requests' answers and others' messages alike.
    pub feed: ChatFeed,
    /// The nickname the server accepted.
    pub name: String,
}

/// The sending half of a chat session: each request returns the id its answer will carry.
pub struct ChatSender {
    writer: FrameWriter,
    next_id: u64,
}

/// The receiving half of a chat session.
pub struct ChatFeed {
    reader: FrameReader,
}

/// One thing the server sent: an event, or the refusal of one of our requests.
#[derive(Debug)]
pub enum ChatIncoming {
    /// An event; `id` is the request it answers, `None` for what others did.
    Event {
        /// The request answered, if any.
        id: Option<u64>,
        /// What happened.
        event: ChatEvent,
    },
    /// The server refused request `id`.
    Refused {
        /// The request refused.
        id: Option<u64>,
        /// Why.
        error: RemoteError,
    },
}

impl Client {
    /// Logs in to the chat service as `name`; fails with the server's `name_taken` error if
    /// someone online already has it.
    pub async fn chat_login(mut self, name: &str) -> Result<ChatSession, ClientError> {
        let reply = self.call(Login { name }.to_header(), b"").await?;
        let name = match reply.header.parse::<ChatEvent>() {
            Ok(ChatEvent::Welcome { name }) => name,
            _ => {
                return Err(ClientError::Protocol(format!(
                    "expected a welcome, got `{}`",
                    reply.header.cmd()
                )));
            }
        };
        let next_id = self.next_id();
        Ok(ChatSession {
            sender: ChatSender {
                writer: self.conn.writer,
                next_id,
            },
            feed: ChatFeed {
                reader: self.conn.reader,
            },
            name,
        })
    }
}

impl ChatSender {
    /// Joins `room`; the answer is the room's history, then its members.
    pub async fn join(&mut self, room: &str) -> Result<u64, ClientError> {
        self.send(Join { room }.to_header()).await
    }

    /// Leaves `room`; the answer is a `left` event.
    pub async fn leave(&mut self, room: &str) -> Result<u64, ClientError> {
        self.send(Leave { room }.to_header()).await
    }

    /// Posts `text` to `room`; everyone there, the sender included, receives it in order.
    pub async fn say(&mut self, room: &str, text: &str) -> Result<u64, ClientError> {
        self.send(Say { room, text }.to_header()).await
    }

    /// Sends `text` to `to` alone; the sender receives a copy as its receipt.
    pub async fn direct(&mut self, to: &str, text: &str) -> Result<u64, ClientError> {
        self.send(Msg { to, text }.to_header()).await
    }

    /// Asks for the first page of `room`'s members.
    pub async fn who(&mut self, room: &str) -> Result<u64, ClientError> {
        self.who_after(room, None).await
    }

    /// Asks for a page of `room`'s members: those named after `after` (a page's `next`).
    pub async fn who_after(&mut self, room: &str, after: Option<&str>) -> Result<u64, ClientError> {
        self.send(Who { room, after }.to_header()).await
    }

    /// Asks for the first page of the server's rooms.
    pub async fn rooms(&mut self) -> Result<u64, ClientError> {
        self.rooms_after(None).await
    }

    /// Asks for a page of the server's rooms: those named after `after` (a page's `next`).
    pub async fn rooms_after(&mut self, after: Option<&str>) -> Result<u64, ClientError> {
        self.send(Rooms { after }.to_header()).await
    }

    /// Closes our half of the connection: the server logs us out.
    pub async fn quit(mut self) {
        let _ = self.writer.shutdown().await;
    }

    async fn send(&mut self, header: Header) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        self.writer.send(header.with_id(Some(id)), b"").await?;
        Ok(id)
    }
}

impl ChatFeed {
    /// The next thing the server sent; `None` once it closed the connection.
    pub async fn next(&mut self) -> Result<Option<ChatIncoming>, ClientError> {
        let Some(message) = self.reader.read_message().await? else {
            return Ok(None);
        };
        let header = message.header;
        let id = header.id();
        if let Some(error) = RemoteError::from_header(&header) {
            return Ok(Some(ChatIncoming::Refused { id, error }));
        }
        if header.cmd() != ChatEvent::CMD {
            return Err(ClientError::Protocol(format!(
                "unexpected `{}` in a chat session",
                header.cmd()
            )));
        }
        let event = header
            .parse::<ChatEvent>()
            .map_err(|e| ClientError::Protocol(format!("bad chat event: {e}")))?;
        Ok(Some(ChatIncoming::Event { id, event }))
    }
}
