//! The frame decoder on arbitrary bytes, whole and in chunks: it must never panic, never
//! allocate beyond its limits, and give the same frames however the bytes are split.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sockit::wire::fuzzing::check_decoder(data));
