//! Header parsing on arbitrary bytes: never panics, and what parses re-encodes to the same.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sockit::wire::fuzzing::check_header(data));
