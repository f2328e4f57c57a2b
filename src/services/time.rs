//! Time: the course's UDP time server and the native `time` command.
//!
//! The course's server receives a datagram holding a `strftime` format and replies with its
//! local time in that format; an empty datagram means `%Y-%m-%d %X`. Here a format is parsed
//! before it is used, so a bad one is an error reply and never a crash (chrono's
//! `format().to_string()` panics on bad formats), and both the format and the reply are capped.
//!
//! UDP replies: the time text as UTF-8, or [`ERROR_PREFIX`] followed by a message. A format
//! whose text would itself begin with that prefix is refused, so a client can always tell
//! the two apart. An error reply is a fixed message that never repeats the request.
//!
//! A UDP source can be forged, so the service must not be a mirror another service can be
//! set talking to. A format must convert something: one whose only `%`s are `%%`, `%n` or
//! `%t` is refused (its text would be the request itself), and a non-empty datagram with no
//! `%` at all is not a format and gets no reply. Every reply holds no `%` but those of `%%`,
//! so what another service sends back gets fewer answers each round and soon none. No reply
//! is more than `MAX_REPLY_GROWTH` bytes longer than its request.
//!
//! Native: `{"cmd":"time","id":N,"format":"..."}` (format optional) is answered with
//! `{"cmd":"time","id":N,"time":"...","unix_ms":...}`, or a `bad_request` error.

use std::fmt::Write;
use std::net::SocketAddr;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::format::{DelayedFormat, Item, StrftimeItems};
use chrono::{DateTime, Local, TimeZone};

use super::unframed::DatagramService;
use super::{BodyMode, CommandSpec, Request, Service, ServiceError, Session};
use crate::proto::time::{TIME, TimeReply, TimeRequest};

/// The course's format, used when a request names none.
pub(crate) const DEFAULT_FORMAT: &str = "%Y-%m-%d %X";
/// Longest format accepted, in bytes.
pub const MAX_FORMAT_LEN: usize = 256;
/// Longest time text sent, in bytes: the course client reads replies with `recv(1024)`.
pub(crate) const MAX_REPLY_LEN: usize = 1024;
/// What every UDP error reply begins with.
pub const ERROR_PREFIX: &str = "error: ";
/// A UDP reply is at most this many bytes longer than its request: the course's default
/// text answers an empty datagram, and `%c` (2 bytes) gives 24.
pub(crate) const MAX_REPLY_GROWTH: usize = 64;

/// Why a format gives no time text. The messages are short: they are UDP error replies, and
/// a reply to a small request should be small too.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TimeFormatError {
    #[error("format longer than {MAX_FORMAT_LEN} bytes")]
    TooLong,
    #[error("format is not UTF-8")]
    NotUtf8,
    /// A `%` that starts no conversion chrono knows (`%Q`, a lone `%`, `%5Y`).
    #[error("invalid strftime format")]
    Invalid,
    #[error("time text longer than {MAX_REPLY_LEN} bytes")]
    ReplyTooLong,
    #[error("time text would begin with `{ERROR_PREFIX}`")]
    LooksLikeError,
    /// Only literal text, `%%`, `%n` or `%t`: the reply would be the request.
    #[error("format has no strftime conversion")]
    NoConversion,
    /// Over UDP, more than [`MAX_REPLY_GROWTH`] bytes longer than the format.
    #[error("time text too long for its format")]
    GrowsTooMuch,
}

/// Error replies are at most this long, whatever the request.
pub const MAX_ERROR_REPLY_LEN: usize = 48;

/// The server's local time now, in `format` (empty means [`DEFAULT_FORMAT`]).
pub(crate) fn format_time(format: &str) -> Result<String, TimeFormatError> {
    format_at(&Local::now(), format)
}

/// `time` in `format` (empty means [`DEFAULT_FORMAT`]), never longer than [`MAX_REPLY_LEN`].
pub(crate) fn format_at<Tz: TimeZone>(time: &DateTime<Tz>, format: &str) -> Result<String, TimeFormatError>
where
    Tz::Offset: std::fmt::Display,
{
    if format.len() > MAX_FORMAT_LEN {
        return Err(TimeFormatError::TooLong);
    }
    let format = if format.is_empty() { DEFAULT_FORMAT } else { format };
    let items = StrftimeItems::new(format)
        .parse()
        .map_err(|_| TimeFormatError::Invalid)?;
    if items.iter().all(is_literal) {
        return Err(TimeFormatError::NoConversion);
    }
    let formatted: DelayedFormat<_> = time.format_with_items(items.iter());
    let mut text = CappedString::default();
    match write!(text, "{formatted}") {
        Ok(()) => Ok(text.text),
        Err(_) if text.overflowed => Err(TimeFormatError::ReplyTooLong),
        // Every item parsed, so this is a conversion chrono cannot fill in for this time.
        Err(_) => Err(TimeFormatError::Invalid),
    }
}

/// An item that converts nothing: text, `%%`, `%n`, `%t`.
fn is_literal(item: &Item<'_>) -> bool {
    matches!(
        item,
        Item::Literal(_) | Item::OwnedLiteral(_) | Item::Space(_) | Item::OwnedSpace(_)
    )
}

/// A String that refuses to grow past [`MAX_REPLY_LEN`], so a format like `%c` repeated
/// never builds a large text only to throw it away.
#[derive(Default)]
struct CappedString {
    text: String,
    overflowed: bool,
}

impl Write for CappedString {
    fn write_str(&mut self, piece: &str) -> std::fmt::Result {
        if self.text.len() + piece.len() > MAX_REPLY_LEN {
            self.overflowed = true;
            return Err(std::fmt::Error);
        }
        self.text.push_str(piece);
        Ok(())
    }
}

/// Whether the UDP service answers `request` at all: empty (the default format), or holding
/// a `%`. Anything else is not a format, but most likely another service's reply.
pub fn is_answered(request: &[u8]) -> bool {
    request.is_empty() || request.contains(&b'%')
}

/// The UDP reply to one datagram: the time text, or an error reply; none for a datagram
/// that is not [`is_answered`].
pub(crate) fn datagram_reply(request: &[u8]) -> Option<Bytes> {
    if !is_answered(request) {
        return None;
    }
    Some(match datagram_time(request) {
        Ok(text) => Bytes::from(text),
        Err(error) => Bytes::from(format!("{ERROR_PREFIX}{error}")),
    })
}

fn datagram_time(request: &[u8]) -> Result<String, TimeFormatError> {
    if request.len() > MAX_FORMAT_LEN {
        return Err(TimeFormatError::TooLong);
    }
    let format = std::str::from_utf8(request).map_err(|_| TimeFormatError::NotUtf8)?;
    let text = format_time(format)?;
    if text.starts_with(ERROR_PREFIX) {
        return Err(TimeFormatError::LooksLikeError);
    }
    if text.len() > request.len() + MAX_REPLY_GROWTH {
        return Err(TimeFormatError::GrowsTooMuch);
    }
    Ok(text)
}

/// Reads a UDP reply: the time text, or the server's error message.
pub fn parse_datagram_reply(reply: &[u8]) -> Result<String, String> {
    let text = String::from_utf8_lossy(reply);
    match text.strip_prefix(ERROR_PREFIX) {
        Some(message) => Err(message.to_owned()),
        None => Ok(text.into_owned()),
    }
}

/// The course's time server over UDP.
pub(crate) struct TimeDatagrams;

#[async_trait]
impl DatagramService for TimeDatagrams {
    async fn answer(&self, request: &[u8], _from: SocketAddr) -> Vec<Bytes> {
        datagram_reply(request).into_iter().collect()
    }
}

/// The native `time` command.
pub(crate) struct Time;

const COMMANDS: &[CommandSpec] = &[CommandSpec {
    cmd: TIME,
    max_body: 0,
    body: BodyMode::Whole,
}];

#[async_trait]
impl Service for Time {
    fn name(&self) -> &'static str {
        TIME
    }

    fn commands(&self) -> &[CommandSpec] {
        COMMANDS
    }

    async fn handle(&self, request: Request, session: &mut Session) -> Result<(), ServiceError> {
        let asked = TimeRequest::from_header(&request.header)?;
        let now = Local::now();
        let format = asked.format.as_deref().unwrap_or_default();
        let time = format_at(&now, format).map_err(|e| ServiceError::bad_request(e.to_string()))?;
        let reply = TimeReply {
            time,
            unix_ms: now.timestamp_millis(),
        };
        session.writer.reply(reply.to_header(request.id()), &[]).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{FixedOffset, NaiveDate};

    fn moment() -> DateTime<FixedOffset> {
        let naive = NaiveDate::from_ymd_opt(2024, 2, 29)
            .unwrap()
            .and_hms_opt(13, 5, 9)
            .unwrap();
        FixedOffset::east_opt(8 * 3600)
            .unwrap()
            .from_local_datetime(&naive)
            .unwrap()
    }

    #[test]
    fn formats_like_strftime_with_the_course_default() {
        assert_eq!(format_at(&moment(), "").unwrap(), "2024-02-29 13:05:09");
        assert_eq!(format_at(&moment(), "%Y %m %d").unwrap(), "2024 02 29");
        assert_eq!(
            format_at(&moment(), "%a %H:%M %z 100%%").unwrap(),
            "Thu 13:05 +0800 100%"
        );
        assert_eq!(format_at(&moment(), "时间 %X").unwrap(), "时间 13:05:09");
    }

    #[test]
    fn bad_formats_are_errors_not_panics() {
        for format in ["%Q", "%", "abc%", "%999999999Y", "%-Z", "%.j", "%😽"] {
            assert_eq!(
                format_at(&moment(), format),
                Err(TimeFormatError::Invalid),
                "{format}"
            );
        }
    }

    #[test]
    fn format_and_reply_are_capped() {
        let long = "x".repeat(MAX_FORMAT_LEN + 1);
        assert_eq!(format_at(&moment(), &long), Err(TimeFormatError::TooLong));
        assert!(format_at(&moment(), &format!("%Y{}", "x".repeat(MAX_FORMAT_LEN - 2))).is_ok());
        // 128 × `%c` is 256 bytes of format and about 3 KB of text.
        let wide = "%c".repeat(128);
        assert_eq!(format_at(&moment(), &wide), Err(TimeFormatError::ReplyTooLong));
    }

    fn reply(request: &[u8]) -> Bytes {
        datagram_reply(request).expect("a reply")
    }

    #[test]
    fn datagram_replies_are_text_or_short_prefixed_errors() {
        let year = parse_datagram_reply(&reply(b"%Y")).unwrap();
        assert!(year.len() == 4 && year.parse::<u32>().is_ok(), "{year}");
        let default = parse_datagram_reply(&reply(b"")).unwrap();
        assert_eq!(default.len(), "2024-02-29 13:05:09".len(), "{default}");
        let long = [b'%'; 300];
        let wide = "%c".repeat(128);
        for request in [&b"%Q"[..], b"\xff\xfe%", &long, wide.as_bytes(), b"error: %Y"] {
            let reply = reply(request);
            let message = parse_datagram_reply(&reply).unwrap_err();
            assert!(reply.len() <= MAX_ERROR_REPLY_LEN, "{message}");
            assert!(
                !message.contains('%'),
                "a reflected error must not read as a format"
            );
        }
        assert_eq!(parse_datagram_reply(b"2024"), Ok("2024".to_owned()));
    }

    #[test]
    fn a_format_must_convert_something() {
        for format in ["100%%", "%n%t", "a%%b %n"] {
            assert_eq!(
                format_at(&moment(), format),
                Err(TimeFormatError::NoConversion),
                "{format}"
            );
            let refused = parse_datagram_reply(&reply(format.as_bytes())).unwrap_err();
            assert_eq!(refused, "format has no strftime conversion");
        }
        // Text with no `%` is no format: most likely another service's reply. No answer.
        for text in [
            &b"hello"[..],
            b"2024-02-29 13:05:09",
            b"ERROR: INVALID STRFTIME FORMAT",
            b"\xff",
        ] {
            assert_eq!(datagram_reply(text), None, "{text:?}");
        }
    }

    #[test]
    fn a_reply_is_never_much_longer_than_its_request() {
        let requests = [
            "",
            "%c",
            "%C",
            "%c%c",
            "%c %c %c",
            "%A %B %c",
            "%Q",
            "%%%c",
            "%+",
            "%a%b%c%d%e%f%Y%Z",
        ];
        let wide = "%c".repeat(30);
        for request in requests.iter().copied().chain([wide.as_str()]) {
            let reply = reply(request.as_bytes());
            assert!(
                reply.len() <= request.len() + MAX_REPLY_GROWTH,
                "{request:?} drew {} bytes",
                reply.len()
            );
        }
        assert_eq!(
            parse_datagram_reply(&reply(b"%c %c %c")).unwrap_err(),
            "time text too long for its format"
        );
    }
}
