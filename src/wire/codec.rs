//! The frame codec: `u32` little-endian header length, JSON header, then `body_len` raw bytes.
//!
//! TCP delivers a byte stream, not messages (the course's "sticky packet" lesson), so the
//! decoder never assumes a read holds one frame: it waits for the 4-byte prefix, then for the
//! whole header, then hands the body on in chunks as the bytes arrive. Bodies are never
//! buffered whole, which is what lets a 10 GiB body pass in constant memory.
//!
//! Limits are checked against the declared sizes before any allocation, so a peer that
//! announces a 4 GiB header costs nothing but an error.
//!
//! The codec implements [`tokio_util::codec::Decoder`] and [`Encoder`], so other programs can
//! speak the protocol with `Framed`:
//!
//! ```
//! use bytes::BytesMut;
//! use sockit::wire::{Frame, FrameCodec, Header};
//! use tokio_util::codec::{Decoder, Encoder};
//!
//! let mut codec = FrameCodec::default();
//! let mut wire = BytesMut::new();
//! codec.encode(Header::new("echo").with_body_len(2), &mut wire).unwrap();
//! wire.extend_from_slice(b"hi");
//! assert_eq!(&wire[..4], &27u32.to_le_bytes()); // {"cmd":"echo","body_len":2}
//!
//! let Some(Frame::Header(header)) = codec.decode(&mut wire).unwrap() else { panic!() };
//! assert_eq!((header.cmd(), header.body_len()), ("echo", 2));
//! assert_eq!(codec.decode(&mut wire).unwrap(), Some(Frame::Body("hi".into())));
//! ```

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::error::FrameError;
use super::header::Header;

/// The largest header accepted unless configured otherwise.
pub const DEFAULT_MAX_HEADER_LEN: usize = 64 * 1024;
/// The largest body accepted for a `cmd` that declares no limit of its own.
pub const DEFAULT_MAX_BODY: u64 = 1024 * 1024;

/// Size limits enforced by the decoder. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Limits {
    max_header_len: usize,
    default_max_body: u64,
    max_body: Arc<HashMap<String, u64>>,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_header_len: DEFAULT_MAX_HEADER_LEN,
            default_max_body: DEFAULT_MAX_BODY,
            max_body: Arc::default(),
        }
    }
}

impl Limits {
    /// Sets the largest header accepted, in bytes.
    pub fn with_max_header_len(mut self, max: usize) -> Limits {
        self.max_header_len = max;
        self
    }

    /// Sets the largest body for a `cmd` with no limit of its own.
    pub fn with_default_body_limit(mut self, max: u64) -> Limits {
        self.default_max_body = max;
        self
    }

    /// Sets the largest body a frame with this `cmd` may declare.
    pub fn with_body_limit(mut self, cmd: &str, max: u64) -> Limits {
        Arc::make_mut(&mut self.max_body).insert(cmd.to_owned(), max);
        self
    }

    /// The largest header accepted, in bytes.
    pub fn max_header_len(&self) -> usize {
        self.max_header_len
    }

    /// The largest body a frame with this `cmd` may declare.
    pub fn body_limit(&self, cmd: &str) -> u64 {
        self.max_body.get(cmd).copied().unwrap_or(self.default_max_body)
    }
}

/// One item of the decoded stream: a header, then its body in one or more chunks.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// A frame's header, always first.
    Header(Header),
    /// A chunk of the body the header announced; an empty body yields none.
    Body(Bytes),
}

/// Decodes and encodes frames. Stateful: it remembers how much of a body is still to come.
#[derive(Clone, Debug, Default)]
pub struct FrameCodec {
    limits: Limits,
    body_remaining: u64,
}

impl FrameCodec {
    /// A decoder and encoder enforcing `limits`.
    pub fn new(limits: Limits) -> FrameCodec {
        FrameCodec {
            limits,
            body_remaining: 0,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Body bytes of the current frame not yet decoded; 0 between frames.
    pub fn body_remaining(&self) -> u64 {
        self.body_remaining
    }

    fn decode_header(&mut self, src: &mut BytesMut) -> Result<Option<Header>, FrameError> {
        let Some(prefix) = src.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(*prefix) as usize;
        if len > self.limits.max_header_len {
            return Err(FrameError::HeaderTooLarge {
                len: len as u64,
                max: self.limits.max_header_len,
            });
        }
        let Some(json) = src.get(4..4 + len) else {
            src.reserve(4 + len - src.len());
            return Ok(None);
        };
        let header = Header::from_json(json)?;
        let max = self.limits.body_limit(header.cmd());
        if header.body_len() > max {
            return Err(FrameError::BodyTooLarge {
                cmd: header.cmd().to_owned(),
                len: header.body_len(),
                max,
            });
        }
        src.advance(4 + len);
        self.body_remaining = header.body_len();
        Ok(Some(header))
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if self.body_remaining == 0 {
            return Ok(self.decode_header(src)?.map(Frame::Header));
        }
        if src.is_empty() {
            return Ok(None);
        }
        let n = self.body_remaining.min(src.len() as u64) as usize;
        self.body_remaining -= n as u64;
        Ok(Some(Frame::Body(src.split_to(n).freeze())))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() && self.body_remaining == 0 => Ok(None),
            None => Err(FrameError::Truncated),
        }
    }
}

impl Encoder<Header> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, header: Header, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode(&header, dst)
    }
}

impl Encoder<&Header> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, header: &Header, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_header(header, dst, self.limits.max_header_len)
    }
}

/// Body bytes: written as they are, after the header that declared them.
impl Encoder<Bytes> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, body: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        dst.extend_from_slice(&body);
        Ok(())
    }
}

/// Appends the length prefix and JSON of `header` to `dst`.
pub fn encode_header(header: &Header, dst: &mut BytesMut, max_len: usize) -> Result<(), FrameError> {
    let start = dst.len();
    dst.put_u32_le(0);
    header.write_json(dst);
    let len = dst.len() - start - 4;
    if len > max_len {
        dst.truncate(start);
        return Err(FrameError::TooLargeToSend {
            len: len as u64,
            max: max_len,
        });
    }
    #[allow(
        clippy::indexing_slicing,
        reason = "`put_u32_le` above wrote these four bytes"
    )]
    dst[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(header: &Header, body: &[u8]) -> BytesMut {
        let mut wire = BytesMut::new();
        encode_header(header, &mut wire, DEFAULT_MAX_HEADER_LEN).unwrap();
        wire.extend_from_slice(body);
        wire
    }

    #[test]
    fn oversized_header_is_refused_before_it_arrives() {
        let mut codec = FrameCodec::default();
        let mut wire = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
        assert!(matches!(
            codec.decode(&mut wire),
            Err(FrameError::HeaderTooLarge { .. })
        ));
        assert!(wire.capacity() < 1024, "no allocation of the declared size");
    }

    #[test]
    fn oversized_body_is_refused_from_the_header_alone() {
        let limits = Limits::default().with_body_limit("put", u64::MAX);
        let mut codec = FrameCodec::new(limits);
        let mut wire = encoded(&Header::new("echo").with_body_len(1 << 40), b"");
        let error = codec.decode(&mut wire).unwrap_err();
        assert!(matches!(error, FrameError::BodyTooLarge { .. }), "{error}");
        let mut wire = encoded(&Header::new("put").with_body_len(1 << 40), b"");
        assert!(matches!(codec.decode(&mut wire), Ok(Some(Frame::Header(_)))));
    }

    #[test]
    fn eof_inside_a_frame_is_an_error_and_between_frames_is_not() {
        let mut codec = FrameCodec::default();
        let mut wire = encoded(&Header::new("echo").with_body_len(3), b"ab");
        assert!(matches!(codec.decode_eof(&mut wire), Ok(Some(Frame::Header(_)))));
        assert!(matches!(codec.decode_eof(&mut wire), Ok(Some(Frame::Body(_)))));
        assert!(matches!(codec.decode_eof(&mut wire), Err(FrameError::Truncated)));
        let mut codec = FrameCodec::default();
        let mut wire = encoded(&Header::new("echo"), b"");
        assert!(matches!(codec.decode_eof(&mut wire), Ok(Some(Frame::Header(_)))));
        assert!(matches!(codec.decode_eof(&mut wire), Ok(None)));
    }

    #[test]
    fn split_at_every_position_decodes_the_same() {
        let mut whole = encoded(&Header::new("echo").with_id(Some(1)).with_body_len(5), b"hello");
        whole.extend_from_slice(&encoded(&Header::new("time"), b""));
        for cut in 0..=whole.len() {
            let mut codec = FrameCodec::default();
            let mut buf = BytesMut::from(&whole[..cut]);
            let mut frames = Vec::new();
            while let Some(frame) = codec.decode(&mut buf).unwrap() {
                frames.push(frame);
            }
            buf.extend_from_slice(&whole[cut..]);
            while let Some(frame) = codec.decode(&mut buf).unwrap() {
                frames.push(frame);
            }
            let body: Vec<u8> = frames
                .iter()
                .filter_map(|f| match f {
                    Frame::Body(b) => Some(b.to_vec()),
                    _ => None,
                })
                .flatten()
                .collect();
            assert_eq!(body, b"hello", "cut at {cut}");
            let cmds: Vec<&str> = frames
                .iter()
                .filter_map(|f| match f {
                    Frame::Header(h) => Some(h.cmd()),
                    _ => None,
                })
                .collect();
            assert_eq!(cmds, ["echo", "time"], "cut at {cut}");
        }
    }
}
