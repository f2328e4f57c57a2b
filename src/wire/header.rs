//! The JSON object that opens every frame.
//!
//! Three keys are the protocol's own and are checked when a header is parsed: `cmd` names the
//! message (the course's key), `id` ties a reply to its request, and `body_len` says how many
//! body bytes follow. Every other key belongs to the message and is kept as JSON, so a service
//! can read it as a typed struct and a newer peer can add fields an older one ignores.

use std::borrow::Cow;
use std::fmt;

use bytes::{BufMut, BytesMut};
use serde::de::{self, DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::error::FrameError;

/// The decoded header of one frame.
#[derive(Clone, Debug, PartialEq)]
pub struct Header {
    cmd: String,
    id: Option<u64>,
    body_len: u64,
    fields: Map<String, Value>,
}

impl Header {
    /// A header for `cmd` with no id, no fields and no body.
    pub fn new(cmd: impl Into<String>) -> Header {
        Header {
            cmd: cmd.into(),
            id: None,
            body_len: 0,
            fields: Map::new(),
        }
    }

    /// A header whose fields are the serialized form of `message` (a struct or map).
    ///
    /// Keys named `cmd`, `id` or `body_len` in `message` are ignored: those belong to the frame.
    pub fn from_message(cmd: impl Into<String>, message: &impl Serialize) -> Header {
        let mut header = Header::new(cmd);
        if let Ok(Value::Object(fields)) = serde_json::to_value(message) {
            for (key, value) in fields {
                header = header.with(&key, value);
            }
        }
        header
    }

    /// Sets the request id its answers will carry; `None` for a message that needs no answer.
    pub fn with_id(mut self, id: Option<u64>) -> Header {
        self.id = id;
        self
    }

    /// Sets how many body bytes follow the header.
    pub fn with_body_len(mut self, body_len: u64) -> Header {
        self.body_len = body_len;
        self
    }

    /// Adds a message field. Reserved keys are ignored so a field can never forge framing.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Header {
        if !is_reserved(key) {
            self.fields.insert(key.to_owned(), value.into());
        }
        self
    }

    /// The command: what the frame asks or answers.
    pub fn cmd(&self) -> &str {
        &self.cmd
    }

    /// The request id, when the sender set one.
    pub fn id(&self) -> Option<u64> {
        self.id
    }

    /// Body bytes that follow the header.
    pub fn body_len(&self) -> u64 {
        self.body_len
    }

    /// The message's own fields, the reserved ones (`cmd`, `id`, `body_len`) left out.
    pub fn fields(&self) -> &Map<String, Value> {
        &self.fields
    }

    /// A field as a string, if present and a string.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.fields.get(key).and_then(Value::as_str)
    }

    /// A field as an unsigned integer, if present and one.
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.fields.get(key).and_then(Value::as_u64)
    }

    /// The message fields read as `T`; unknown fields are ignored, as the protocol promises.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, FrameError> {
        T::deserialize(Value::Object(self.fields.clone()))
            .map_err(|e| FrameError::BadHeader(format!("`{}` message: {e}", self.cmd)))
    }

    /// Parses the bytes between the length prefix and the body.
    pub fn from_json(bytes: &[u8]) -> Result<Header, FrameError> {
        let raw: RawHeader = serde_json::from_slice(bytes)
            .map_err(|e| FrameError::BadHeader(format!("header is not a JSON object: {e}")))?;
        let cmd = match raw.cmd {
            Some(Value::String(cmd)) if !cmd.is_empty() => cmd,
            Some(_) => return Err(bad_field("cmd", "a non-empty string")),
            None => return Err(FrameError::BadHeader("header has no `cmd`".into())),
        };
        let id = optional_u64(raw.id, "id")?;
        let body_len = optional_u64(raw.body_len, "body_len")?.unwrap_or(0);
        Ok(Header {
            cmd,
            id,
            body_len,
            fields: raw.fields,
        })
    }

    /// Appends the header as compact JSON: `cmd` first, `body_len` last (when non-zero).
    pub fn write_json(&self, out: &mut BytesMut) {
        out.extend_from_slice(b"{\"cmd\":");
        write_value(out, &self.cmd);
        if let Some(id) = self.id {
            out.extend_from_slice(b",\"id\":");
            write_u64(out, id);
        }
        for (key, value) in &self.fields {
            out.put_u8(b',');
            write_value(out, key);
            out.put_u8(b':');
            write_value(out, value);
        }
        if self.body_len > 0 {
            out.extend_from_slice(b",\"body_len\":");
            write_u64(out, self.body_len);
        }
        out.put_u8(b'}');
    }
}

/// A header as it arrives: the frame's own keys taken out as they are read, so they never go
/// into (and come back out of) the map of message fields.
struct RawHeader {
    cmd: Option<Value>,
    id: Option<Value>,
    body_len: Option<Value>,
    fields: Map<String, Value>,
}

impl<'de> Deserialize<'de> for RawHeader {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<RawHeader, D::Error> {
        deserializer.deserialize_map(RawHeaderVisitor)
    }
}

struct RawHeaderVisitor;

impl<'de> Visitor<'de> for RawHeaderVisitor {
    type Value = RawHeader;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHeader, A::Error> {
        let mut raw = RawHeader {
            cmd: None,
            id: None,
            body_len: None,
            fields: Map::new(),
        };
        // As in a JSON object read into a map, a key given twice keeps its last value.
        while let Some(Key(key)) = map.next_key()? {
            match &*key {
                "cmd" => raw.cmd = Some(map.next_value()?),
                "id" => raw.id = Some(map.next_value()?),
                "body_len" => raw.body_len = Some(map.next_value()?),
                _ => {
                    raw.fields.insert(key.into_owned(), map.next_value()?);
                }
            }
        }
        Ok(raw)
    }
}

/// An object key, borrowed from the input when it holds no escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Key<'de>, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(key)))
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(key.to_owned())))
            }
            fn visit_string<E: de::Error>(self, key: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(key)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Appends a number in decimal, without the string `to_string` would allocate.
fn write_u64(out: &mut BytesMut, n: u64) {
    use std::fmt::Write;
    let _ = write!(out, "{n}");
}

fn is_reserved(key: &str) -> bool {
    matches!(key, "cmd" | "id" | "body_len")
}

#[allow(
    clippy::expect_used,
    reason = "its callers pass a String or a serde_json::Value, which always serialize, into memory"
)]
fn write_value(out: &mut BytesMut, value: &(impl Serialize + ?Sized)) {
    serde_json::to_writer(out.writer(), value).expect("JSON value serializes");
}

fn optional_u64(value: Option<Value>, key: &str) -> Result<Option<u64>, FrameError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_u64()
            .map(Some)
            .ok_or_else(|| bad_field(key, "an unsigned integer")),
    }
}

fn bad_field(key: &str, expected: &str) -> FrameError {
    FrameError::BadHeader(format!("header field `{key}` must be {expected}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_through_json() {
        let header = Header::new("echo")
            .with_id(Some(7))
            .with_body_len(5)
            .with("lang", "en");
        let mut json = BytesMut::new();
        header.write_json(&mut json);
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"cmd":"echo","id":7,"lang":"en","body_len":5}"#
        );
        assert_eq!(Header::from_json(&json).unwrap(), header);
    }

    #[test]
    fn reserved_keys_cannot_be_forged_through_fields() {
        let header = Header::from_message("x", &json!({"body_len": 99, "cmd": "y", "ok": 1}));
        assert_eq!(header.body_len(), 0);
        assert_eq!(header.cmd(), "x");
        assert_eq!(header.u64("ok"), Some(1));
    }

    #[test]
    fn rejects_headers_without_a_usable_cmd() {
        for bad in [
            &b"[]"[..],
            b"{}",
            b"{\"cmd\":3}",
            b"{\"cmd\":\"\"}",
            b"{\"cmd\":\"a\",\"body_len\":-1}",
            b"{\"cmd\":\"a\",\"id\":\"x\"}",
            b"not json",
        ] {
            assert!(
                Header::from_json(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// The frame's keys are found wherever they are, escaped or not, the last of a repeated
    /// key wins, and the other keys (escaped ones too) stay the message's.
    #[test]
    fn reserved_keys_are_read_in_any_order_and_spelling() {
        let header =
            Header::from_json(br#"{"b\u006fdy_len":3,"x":1,"id":1,"\u0063md":"put","id":9,"k\"q":"v"}"#)
                .unwrap();
        assert_eq!(
            (header.cmd(), header.id(), header.body_len()),
            ("put", Some(9), 3)
        );
        assert_eq!(header.u64("x"), Some(1));
        assert_eq!(header.str("k\"q"), Some("v"));
        assert_eq!(header.fields().len(), 2);
    }

    #[test]
    fn unknown_fields_are_kept_and_ignored_by_typed_reads() {
        #[derive(serde::Deserialize)]
        struct Hello {
            version: u32,
        }
        let header = Header::from_json(br#"{"cmd":"hello","version":1,"future":true}"#).unwrap();
        assert_eq!(header.parse::<Hello>().unwrap().version, 1);
    }
}
