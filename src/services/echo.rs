//! `echo`: the course's first server, which answers every message upper-cased.
//!
//! Request: `{"cmd":"echo","id":N,"body_len":L}` + L bytes. Reply: `{"cmd":"echo","id":N,
//! "body_len":L2}` + the bytes upper-cased (Unicode rules for UTF-8 text, ASCII rules for
//! anything else, so binary input comes back with only its ASCII letters changed).

use async_trait::async_trait;

use super::{BodyMode, CommandSpec, Request, Service, ServiceError, Session};
use crate::wire::{DEFAULT_MAX_BODY, Header};

pub struct Echo;

const COMMANDS: &[CommandSpec] = &[CommandSpec {
    cmd: "echo",
    max_body: DEFAULT_MAX_BODY,
    body: BodyMode::Whole,
}];

#[async_trait]
impl Service for Echo {
    fn name(&self) -> &'static str {
        "echo"
    }

    fn commands(&self) -> &[CommandSpec] {
        COMMANDS
    }

    async fn handle(&self, request: Request, session: &mut Session) -> Result<(), ServiceError> {
        let reply = Header::new("echo").with_id(request.id());
        session.writer.send(reply, &upper(&request.body)).await?;
        Ok(())
    }
}

/// Upper-cases text: Unicode-aware for UTF-8, ASCII-only for other bytes.
pub fn upper(bytes: &[u8]) -> Vec<u8> {
    if bytes.is_ascii() {
        return bytes.to_ascii_uppercase();
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_uppercase().into_bytes(),
        Err(_) => bytes.to_ascii_uppercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::upper;

    #[test]
    fn upper_cases_ascii_unicode_and_leaves_binary_intact() {
        assert_eq!(upper(b"hello, World 1"), b"HELLO, WORLD 1");
        assert_eq!(upper("straße ü".as_bytes()), "STRASSE Ü".as_bytes());
        assert_eq!(upper(b"\xffab\x00"), b"\xffAB\x00");
    }
}
