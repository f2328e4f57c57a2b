//! Encrypted records: how frames travel once a Noise session is up.
//!
//! A record is a `u16` little-endian length followed by one Noise transport message (ciphertext
//! plus a 16-byte tag). Noise caps a message at 65535 bytes, so a long frame spans several
//! records; the frame layer above never notices. Each direction keeps its own nonce counter, so
//! the reading and writing halves of a connection work independently.

use std::io;
use std::sync::Arc;

use bytes::{Buf, BufMut, BytesMut};
use snow::StatelessTransportState;

/// The largest Noise message, tag included.
pub(crate) const MAX_RECORD: usize = 65535;
const TAG_LEN: usize = 16;
/// The most plaintext one record carries.
pub(crate) const MAX_RECORD_PLAINTEXT: usize = MAX_RECORD - TAG_LEN;

/// A record failed authentication: the bytes were altered, reordered or not ours.
#[derive(Debug, thiserror::Error)]
#[error("an encrypted record failed authentication (altered in transit or not from our peer)")]
pub struct BadRecord;

/// Encrypts one direction of a session.
pub struct Sealer {
    state: Arc<StatelessTransportState>,
    nonce: u64,
}

/// Decrypts one direction of a session.
pub struct Opener {
    state: Arc<StatelessTransportState>,
    nonce: u64,
}

/// Splits a finished Noise handshake into its sending and receiving halves.
pub fn split(state: StatelessTransportState) -> (Sealer, Opener) {
    let state = Arc::new(state);
    let sealer = Sealer {
        state: state.clone(),
        nonce: 0,
    };
    (sealer, Opener { state, nonce: 0 })
}

impl Sealer {
    /// Appends `plaintext` to `out` as one or more records. Records are sized within Noise's
    /// limit, so this fails only once the nonce runs out (after 2^64 records): the session ends.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut BytesMut) -> io::Result<()> {
        for chunk in plaintext.chunks(MAX_RECORD_PLAINTEXT) {
            let len = chunk.len() + TAG_LEN;
            out.put_u16_le(len as u16);
            self.state
                .write_message(self.nonce, chunk, grow(out, len))
                .map_err(|error| io::Error::other(format!("noise: {error}")))?;
            self.nonce += 1;
        }
        Ok(())
    }
}

impl Opener {
    /// Decrypts every complete record at the front of `sealed` onto the end of `plain`,
    /// leaving a partial record in `sealed` for the next read to complete.
    pub fn open(&mut self, sealed: &mut BytesMut, plain: &mut BytesMut) -> Result<(), BadRecord> {
        while let Some(prefix) = sealed.first_chunk::<2>() {
            let len = u16::from_le_bytes(*prefix) as usize;
            if len < TAG_LEN {
                return Err(BadRecord);
            }
            let Some(record) = sealed.get(2..2 + len) else {
                sealed.reserve(2 + len - sealed.len());
                return Ok(());
            };
            self.state
                .read_message(self.nonce, record, grow(plain, len - TAG_LEN))
                .map_err(|_| BadRecord)?;
            self.nonce += 1;
            sealed.advance(2 + len);
        }
        Ok(())
    }
}

/// Extends `buf` by `len` zero bytes and returns them, for a record to be written in place.
#[allow(
    clippy::indexing_slicing,
    reason = "`buf` was just resized to `start + len` bytes"
)]
fn grow(buf: &mut BytesMut, len: usize) -> &mut [u8] {
    let start = buf.len();
    buf.resize(start + len, 0);
    &mut buf[start..]
}
