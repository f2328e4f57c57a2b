//! `echo`: the course's first server, which answers every message upper-cased.
//!
//! Request: `{"cmd":"echo","id":N,"body_len":L}` + L bytes. Reply: `{"cmd":"echo","id":N,
//! "body_len":L2}` + the bytes upper-cased (Unicode rules for UTF-8 text, ASCII rules for
//! anything else, so binary input comes back with only its ASCII letters changed).

use async_trait::async_trait;

use super::{BodyMode, CommandSpec, Request, Service, ServiceError, Session};
use crate::wire::{DEFAULT_MAX_BODY, Header};

pub(crate) struct Echo;

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
        session.writer.reply(reply, &upper(&request.body)).await?;
        Ok(())
    }
}

/// Upper-cases text: Unicode-aware for UTF-8, ASCII-only for other bytes.
pub(crate) fn upper(bytes: &[u8]) -> Vec<u8> {
    if bytes.is_ascii() {
        return bytes.to_ascii_uppercase();
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_uppercase().into_bytes(),
        Err(_) => bytes.to_ascii_uppercase(),
    }
}

/// Like [`upper`], but never longer than `bytes`: a character whose upper case takes more
/// bytes (`ΐ` → `Ϊ́`, 2 bytes → 6; `ȿ` → `Ȿ`, 2 → 3) stays as it is. For replies to datagrams,
/// whose source may be forged: an echo must not be an amplifier.
pub(crate) fn upper_no_longer(bytes: &[u8]) -> Vec<u8> {
    if bytes.is_ascii() {
        return bytes.to_ascii_uppercase();
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return bytes.to_ascii_uppercase();
    };
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let upper = c.to_uppercase();
        if upper.clone().map(char::len_utf8).sum::<usize>() <= c.len_utf8() {
            out.extend(upper);
        } else {
            out.push(c);
        }
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::{upper, upper_no_longer};

    #[test]
    fn upper_casing_for_datagrams_never_grows() {
        assert_eq!(
            upper_no_longer("straße ﬃ ü".as_bytes()),
            "STRASSE FFI Ü".as_bytes()
        );
        for grows in ["ΐ", "ȿ", "ﬗ", "ŉ"] {
            let request = grows.repeat(1000);
            assert!(upper(request.as_bytes()).len() > request.len(), "{grows}");
            assert_eq!(upper_no_longer(request.as_bytes()), request.as_bytes());
        }
        assert_eq!(upper_no_longer(b"\xffab"), b"\xffAB");
    }

    #[test]
    fn upper_cases_ascii_unicode_and_leaves_binary_intact() {
        assert_eq!(upper(b"hello, World 1"), b"HELLO, WORLD 1");
        assert_eq!(upper("straße ü".as_bytes()), "STRASSE Ü".as_bytes());
        assert_eq!(upper(b"\xffab\x00"), b"\xffAB\x00");
    }
}
