//! The course's remote shells (TCP and UDP, execution disabled): every request gets a reply in
//! the course's struct + JSON framing, and UDP answers loopback sources only.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sockit::services::classic::fuzzing::check_classic_exec(data));
