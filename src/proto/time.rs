//! The native `time` command: the server's local time in a strftime format. (The course's UDP
//! time service speaks bare datagrams, not frames; its format is in docs/protocol.md's
//! appendix.)

use serde::{Deserialize, Serialize};

use crate::wire::{ErrorCode, Header, RemoteError};

/// The command's name, of the request and of its reply.
pub const TIME: &str = "time";

/// `{"cmd":"time","format":"..."}`: without a format the server uses the course's
/// `%Y-%m-%d %X`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeRequest {
    /// A strftime format; the server refuses one it cannot render with `bad_request`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// `{"cmd":"time","time":"...","unix_ms":...}`: the answer to a [`TimeRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeReply {
    /// The server's local time in the format asked for.
    pub time: String,
    /// The same moment as milliseconds since 1970 (UTC).
    pub unix_ms: i64,
}

impl TimeRequest {
    /// The request's header, without an id (the caller adds it).
    pub fn to_header(&self) -> Header {
        Header::from_message(TIME, self)
    }

    /// Reads a `time` request; fields of the wrong type are a `bad_request`.
    pub fn from_header(header: &Header) -> Result<TimeRequest, RemoteError> {
        header
            .parse()
            .map_err(|e| RemoteError::new(ErrorCode::BadRequest, e.to_string()))
    }
}

impl TimeReply {
    /// The reply's header, answering the request with `id`.
    pub fn to_header(&self, id: Option<u64>) -> Header {
        Header::from_message(TIME, self).with_id(id)
    }

    /// Reads a `time` reply; the error says what is missing or malformed.
    pub fn from_header(header: &Header) -> Result<TimeReply, String> {
        header
            .parse()
            .map_err(|e| format!("a malformed `time` reply: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::json;

    #[test]
    fn requests_and_replies_are_the_documented_json() {
        let bare = TimeRequest::default().to_header();
        assert_eq!(json(&bare), r#"{"cmd":"time"}"#);
        let formatted = TimeRequest {
            format: Some("%H:%M".into()),
        };
        let header = formatted.to_header().with_id(Some(1));
        assert_eq!(json(&header), r#"{"cmd":"time","id":1,"format":"%H:%M"}"#);
        assert_eq!(TimeRequest::from_header(&header).unwrap(), formatted);
        let reply = TimeReply {
            time: "12:00".into(),
            unix_ms: 1_700_000_000_000,
        };
        let header = reply.to_header(Some(1));
        assert_eq!(TimeReply::from_header(&header).unwrap(), reply);
    }

    #[test]
    fn a_format_of_the_wrong_type_is_a_bad_request() {
        let header = Header::new(TIME).with("format", 5);
        let error = TimeRequest::from_header(&header).unwrap_err();
        assert_eq!(error.code, ErrorCode::BadRequest);
    }
}
