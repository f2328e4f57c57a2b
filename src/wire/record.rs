//! Encrypted records: how frames travel once a Noise session is up.
//!
//! A record is a `u16` little-endian length followed by one Noise transport message (ciphertext
//! plus a 16-byte tag). Noise caps a message at 65535 bytes, so a long frame spans several
//! records; the frame layer above never notices. Each direction keeps its own nonce counter, so
//! the reading and writing halves of a connection work independently.
//!
//! The records are Noise's own (AES-256-GCM under the keys of the handshake's split, the nonce
//! its 64-bit counter, big-endian after four zero bytes, no associated data), but sealed and
//! opened here, in place, rather than by `snow`'s transport state: that one copies every
//! message into a zero-filled buffer first, which cost a third of an encrypted transfer's time.

use bytes::{Buf, BytesMut};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use snow::HandshakeState;
use zeroize::Zeroize;

/// The largest Noise message, tag included.
pub(crate) const MAX_RECORD: usize = 65535;
const TAG_LEN: usize = 16;
/// The most plaintext one record carries.
pub(crate) const MAX_RECORD_PLAINTEXT: usize = MAX_RECORD - TAG_LEN;
/// The length prefix of a record.
pub(crate) const PREFIX_LEN: usize = 2;

/// A record failed authentication: the bytes were altered, reordered or not ours.
#[derive(Debug, thiserror::Error)]
#[error("an encrypted record failed authentication (altered in transit or not from our peer)")]
pub struct BadRecord;

/// The session ran out of nonces (after 2^64 records): it must end.
#[derive(Debug, thiserror::Error)]
#[error("the session has sent as many records as its key allows")]
pub struct NoncesExhausted;

/// Encrypts one direction of a session.
pub struct Sealer {
    key: LessSafeKey,
    nonce: u64,
}

/// Decrypts one direction of a session.
pub struct Opener {
    key: LessSafeKey,
    nonce: u64,
}

/// Splits a finished Noise handshake into its sending and receiving halves. Fails if the
/// handshake is not finished.
pub fn split(mut noise: HandshakeState) -> Result<(Sealer, Opener), snow::Error> {
    if !noise.is_handshake_finished() {
        return Err(snow::Error::State(
            snow::error::StateProblem::HandshakeNotFinished,
        ));
    }
    let (mut initiator_to_responder, mut responder_to_initiator) = noise.dangerously_get_raw_split();
    let (send, receive) = if noise.is_initiator() {
        (&initiator_to_responder, &responder_to_initiator)
    } else {
        (&responder_to_initiator, &initiator_to_responder)
    };
    let keys = aes_key(send).and_then(|send| Ok((send, aes_key(receive)?)));
    initiator_to_responder.zeroize();
    responder_to_initiator.zeroize();
    let (send, receive) = keys?;
    Ok((
        Sealer { key: send, nonce: 0 },
        Opener {
            key: receive,
            nonce: 0,
        },
    ))
}

fn aes_key(bytes: &[u8; 32]) -> Result<LessSafeKey, snow::Error> {
    UnboundKey::new(&AES_256_GCM, bytes)
        .map(LessSafeKey::new)
        .map_err(|_| snow::Error::Init(snow::error::InitStage::ValidateKeyLengths))
}

/// Noise's nonce for AES-GCM: four zero bytes, then the counter big-endian.
fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    let (_, tail) = bytes.split_at_mut(4);
    tail.copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

impl Sealer {
    /// Appends `plaintext` to `out` as one or more records.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut BytesMut) -> Result<(), NoncesExhausted> {
        for chunk in plaintext.chunks(MAX_RECORD_PLAINTEXT) {
            let start = out.len();
            out.reserve(PREFIX_LEN + chunk.len() + TAG_LEN);
            out.extend_from_slice(&[0; PREFIX_LEN]);
            out.extend_from_slice(chunk);
            self.seal_in_place(out, start)?;
        }
        Ok(())
    }

    /// Seals the record that starts at `start` in `out`: its two prefix bytes, then its
    /// plaintext up to the end of `out` (at most [`MAX_RECORD_PLAINTEXT`] bytes). The
    /// plaintext is encrypted where it lies, the tag appended and the prefix filled in.
    pub(crate) fn seal_in_place(&mut self, out: &mut BytesMut, start: usize) -> Result<(), NoncesExhausted> {
        let counter = self.nonce;
        self.nonce = counter.checked_add(1).ok_or(NoncesExhausted)?;
        let Some(plaintext) = out.get_mut(start + PREFIX_LEN..) else {
            return Ok(());
        };
        let len = plaintext.len();
        debug_assert!(len <= MAX_RECORD_PLAINTEXT);
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce(counter), Aad::empty(), plaintext)
            .map_err(|_| NoncesExhausted)?;
        out.extend_from_slice(tag.as_ref());
        if let Some(prefix) = out.get_mut(start..start + PREFIX_LEN) {
            prefix.copy_from_slice(&((len + TAG_LEN) as u16).to_le_bytes());
        }
        Ok(())
    }
}

impl Opener {
    /// Decrypts every complete record at the front of `sealed` onto the end of `plain`,
    /// leaving a partial record in `sealed` for the next read to complete. Each record is
    /// decrypted where it arrived; when `plain` is empty the record's bytes become `plain`
    /// without a copy, so a large transfer moves from the socket to the frame decoder whole.
    pub fn open(&mut self, sealed: &mut BytesMut, plain: &mut BytesMut) -> Result<(), BadRecord> {
        while let Some(prefix) = sealed.first_chunk::<PREFIX_LEN>() {
            let len = u16::from_le_bytes(*prefix) as usize;
            if len < TAG_LEN {
                return Err(BadRecord);
            }
            if sealed.len() < PREFIX_LEN + len {
                sealed.reserve(PREFIX_LEN + len - sealed.len());
                return Ok(());
            }
            let mut record = sealed.split_to(PREFIX_LEN + len);
            record.advance(PREFIX_LEN);
            let counter = self.nonce;
            self.nonce = counter.checked_add(1).ok_or(BadRecord)?;
            let opened = self
                .key
                .open_in_place(nonce(counter), Aad::empty(), &mut record)
                .map_err(|_| BadRecord)?
                .len();
            record.truncate(opened);
            if plain.is_empty() {
                *plain = record;
            } else {
                plain.extend_from_slice(&record);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::BufMut;

    /// A finished handshake: the initiator's and the responder's states.
    pub(crate) fn handshake() -> (HandshakeState, HandshakeState) {
        let psk = [7u8; 32];
        let params = "Noise_NNpsk0_25519_AESGCM_SHA256";
        let builder = || snow::Builder::new(params.parse().unwrap()).psk(0, &psk).unwrap();
        let mut initiator = builder().build_initiator().unwrap();
        let mut responder = builder().build_responder().unwrap();
        let (mut message, mut payload) = ([0u8; 256], [0u8; 256]);
        let n = initiator.write_message(b"", &mut message).unwrap();
        responder.read_message(&message[..n], &mut payload).unwrap();
        let n = responder.write_message(b"", &mut message).unwrap();
        initiator.read_message(&message[..n], &mut payload).unwrap();
        (initiator, responder)
    }

    /// Our records are snow's Noise transport messages, in both directions and across the
    /// record boundary, so a peer that seals and opens with snow (any earlier sockit) talks to
    /// one that uses this module.
    #[test]
    fn records_are_noise_transport_messages() {
        let (initiator, responder) = handshake();
        let snow = initiator.into_stateless_transport_mode().unwrap();
        let (mut sealer, mut opener) = split(responder).unwrap();
        let texts: [&[u8]; 3] = [b"first", &[0xAB; 70_000], b""];
        let mut their_nonce = 0;
        for text in texts {
            // Theirs to ours.
            let mut sealed = BytesMut::new();
            for chunk in text.chunks(MAX_RECORD_PLAINTEXT) {
                let mut message = vec![0u8; chunk.len() + TAG_LEN];
                snow.write_message(their_nonce, chunk, &mut message).unwrap();
                their_nonce += 1;
                sealed.extend_from_slice(&(message.len() as u16).to_le_bytes());
                sealed.extend_from_slice(&message);
            }
            let mut plain = BytesMut::new();
            opener.open(&mut sealed, &mut plain).unwrap();
            assert_eq!(&plain[..], text);
            assert!(sealed.is_empty());
        }
        let mut our_nonce = 0;
        for text in texts {
            // Ours to theirs.
            let mut sealed = BytesMut::new();
            sealer.seal(text, &mut sealed).unwrap();
            let mut opened = Vec::new();
            while !sealed.is_empty() {
                let len = u16::from_le_bytes([sealed[0], sealed[1]]) as usize;
                let mut out = vec![0u8; len];
                let n = snow
                    .read_message(our_nonce, &sealed[2..2 + len], &mut out)
                    .unwrap();
                our_nonce += 1;
                opened.extend_from_slice(&out[..n]);
                sealed.advance(2 + len);
            }
            assert_eq!(&opened[..], text);
        }
    }

    /// A record cut anywhere waits for the rest; one altered or replayed fails.
    #[test]
    fn partial_records_wait_and_altered_ones_fail() {
        let (initiator, responder) = handshake();
        let (mut sealer, _) = split(initiator).unwrap();
        let (_, mut opener) = split(responder).unwrap();
        let mut wire = BytesMut::new();
        sealer.seal(b"hello", &mut wire).unwrap();
        sealer.seal(b"again", &mut wire).unwrap();
        let second = wire.split_off(wire.len() / 2);
        let mut sealed = BytesMut::new();
        let mut plain = BytesMut::new();
        for byte in wire.iter().chain(second.iter()) {
            sealed.put_u8(*byte);
            opener.open(&mut sealed, &mut plain).unwrap();
        }
        assert_eq!(&plain[..], b"helloagain");
        let mut altered = BytesMut::new();
        sealer.seal(b"x", &mut altered).unwrap();
        altered[3] ^= 1;
        assert!(opener.open(&mut altered, &mut plain).is_err());
    }

    #[test]
    fn an_unfinished_handshake_has_no_keys() {
        let params = "Noise_NNpsk0_25519_AESGCM_SHA256";
        let noise = snow::Builder::new(params.parse().unwrap())
            .psk(0, &[1; 32])
            .unwrap()
            .build_initiator()
            .unwrap();
        assert!(split(noise).is_err());
    }
}
