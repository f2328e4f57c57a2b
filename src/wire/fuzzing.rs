//! Checks run by the fuzz targets (fuzz/) and by the test that replays their corpus, kept in
//! the library so both run exactly the same code.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    reason = "a fuzz check panics on purpose when an invariant breaks"
)]

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use super::codec::{DEFAULT_MAX_HEADER_LEN, Frame, FrameCodec, Limits};
use super::header::Header;

/// Decodes `data` as a frame stream twice, whole and in chunks sized by its first byte, and
/// asserts both give the same frames and the same verdict. Never panics on its own: a panic
/// here is a decoder bug.
pub fn check_decoder(data: &[u8]) {
    let chunk = data.first().map_or(1, |b| usize::from(b % 32) + 1);
    let limits = Limits::default()
        .with_max_header_len(4096)
        .with_body_limit("big", 1 << 20);
    let whole = decode(data, data.len().max(1), &limits);
    let chunked = decode(data, chunk, &limits);
    assert_eq!(whole, chunked, "chunking changed the result");
}

/// Parses `data` as a header; whatever parses must re-encode to something that parses the same.
pub fn check_header(data: &[u8]) {
    if let Ok(header) = Header::from_json(data) {
        let mut json = BytesMut::new();
        header.write_json(&mut json);
        assert_eq!(Header::from_json(&json).ok(), Some(header));
    }
}

/// Decoded frames as `(cmd, whole body)`, and how the stream ended.
type Outcome = (Vec<(String, Vec<u8>)>, Result<(), String>);

/// The frames decoded from `data` fed `chunk` bytes at a time, with bodies joined, and whether
/// the stream ended cleanly.
fn decode(data: &[u8], chunk: usize, limits: &Limits) -> Outcome {
    let mut codec = FrameCodec::new(limits.clone());
    let mut buf = BytesMut::new();
    let mut frames: Vec<(String, Vec<u8>)> = Vec::new();
    let mut push = |frame| match frame {
        Frame::Header(header) => frames.push((header.cmd().to_owned(), Vec::new())),
        Frame::Body(bytes) => frames
            .last_mut()
            .expect("body follows a header")
            .1
            .extend_from_slice(&bytes),
    };
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => push(frame),
                Ok(None) => break,
                Err(error) => return (frames, Err(error.to_string())),
            }
        }
        assert!(buf.capacity() <= 2 * (DEFAULT_MAX_HEADER_LEN + data.len()) + 8192);
    }
    let end = match codec.decode_eof(&mut buf) {
        Ok(None) => Ok(()),
        Ok(Some(frame)) => {
            push(frame);
            Ok(())
        }
        Err(error) => Err(error.to_string()),
    };
    (frames, end)
}
