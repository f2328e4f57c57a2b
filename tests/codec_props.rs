//! TCP may split or merge bytes anywhere. Whatever the cuts, the decoder must yield exactly the
//! frames that were encoded, and encrypted records must reassemble exactly.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proptest::sample::Index;
use sockit::wire::{DEFAULT_MAX_HEADER_LEN, Frame, FrameCodec, Header, encode_header, record};
use tokio_util::codec::Decoder;

fn frame_strategy() -> impl Strategy<Value = (Header, Vec<u8>)> {
    (
        "[a-z_]{1,12}",
        proptest::option::of(any::<u64>()),
        proptest::collection::btree_map("[a-z]{1,8}", "\\PC{0,20}", 0..4),
        proptest::collection::vec(any::<u8>(), 0..600),
    )
        .prop_map(|(cmd, id, fields, body)| {
            let mut header = Header::new(cmd).with_id(id).with_body_len(body.len() as u64);
            for (key, value) in fields {
                header = header.with(&key, value);
            }
            (header, body)
        })
}

/// Splits `bytes` at the given points (sorted, deduplicated) into consecutive chunks.
fn cut<'a>(bytes: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
    points.extend([0, bytes.len()]);
    points.sort_unstable();
    points.dedup();
    points.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
}

/// Feeds the chunks one by one and regroups decoded items into (header, whole body).
fn decode_chunks(chunks: &[&[u8]]) -> Vec<(Header, Vec<u8>)> {
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::new();
    let mut out: Vec<(Header, Vec<u8>)> = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        while let Some(frame) = codec.decode(&mut buf).expect("valid stream") {
            match frame {
                Frame::Header(header) => out.push((header, Vec::new())),
                Frame::Body(bytes) => out
                    .last_mut()
                    .expect("body after a header")
                    .1
                    .extend_from_slice(&bytes),
            }
        }
    }
    assert_eq!(
        codec.decode_eof(&mut buf).expect("ends on a frame boundary"),
        None
    );
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn frames_survive_any_split_and_merge(
        frames in proptest::collection::vec(frame_strategy(), 1..12),
        cuts in proptest::collection::vec(any::<Index>(), 0..40),
    ) {
        let mut stream = BytesMut::new();
        for (header, body) in &frames {
            encode_header(header, &mut stream, DEFAULT_MAX_HEADER_LEN).unwrap();
            stream.extend_from_slice(body);
        }
        prop_assert_eq!(&decode_chunks(&cut(&stream, &cuts)), &frames);
    }

    #[test]
    fn encrypted_records_survive_any_split(
        messages in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200_000), 1..4),
        cuts in proptest::collection::vec(any::<Index>(), 0..40),
    ) {
        let (mut sealer, mut opener) = noise_pair();
        let mut sealed = BytesMut::new();
        for message in &messages {
            sealer.seal(message, &mut sealed).unwrap();
        }
        let (mut pending, mut plain) = (BytesMut::new(), BytesMut::new());
        for chunk in cut(&sealed, &cuts) {
            pending.extend_from_slice(chunk);
            opener.open(&mut pending, &mut plain).unwrap();
        }
        prop_assert!(pending.is_empty());
        prop_assert_eq!(plain.freeze(), Bytes::from(messages.concat()));
    }
}

#[test]
fn a_frame_arriving_one_byte_at_a_time_decodes_once_complete() {
    let mut stream = BytesMut::new();
    let header = Header::new("echo").with_id(Some(9)).with_body_len(3);
    encode_header(&header, &mut stream, DEFAULT_MAX_HEADER_LEN).unwrap();
    stream.extend_from_slice(b"abc");
    let chunks: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(decode_chunks(&chunks), vec![(header, b"abc".to_vec())]);
}

#[test]
fn a_flipped_bit_in_any_record_is_detected() {
    let (mut sealer, mut opener) = noise_pair();
    let mut sealed = BytesMut::new();
    sealer.seal(b"attack at dawn", &mut sealed).unwrap();
    sealed[10] ^= 0x01;
    assert!(opener.open(&mut sealed, &mut BytesMut::new()).is_err());
}

/// Both ends of a real Noise session; returns the initiator's sealer and the responder's opener.
fn noise_pair() -> (record::Sealer, record::Opener) {
    let params: snow::params::NoiseParams = "Noise_NNpsk0_25519_AESGCM_SHA256".parse().unwrap();
    let psk = [7u8; 32];
    let mut initiator = snow::Builder::new(params.clone())
        .psk(0, &psk)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut responder = snow::Builder::new(params)
        .psk(0, &psk)
        .unwrap()
        .build_responder()
        .unwrap();
    let (mut a, mut b) = ([0u8; 256], [0u8; 256]);
    let n = initiator.write_message(&[], &mut a).unwrap();
    responder.read_message(&a[..n], &mut b).unwrap();
    let n = responder.write_message(&[], &mut a).unwrap();
    initiator.read_message(&a[..n], &mut b).unwrap();
    let (sealer, _) = record::split(initiator).unwrap();
    let (_, opener) = record::split(responder).unwrap();
    (sealer, opener)
}
