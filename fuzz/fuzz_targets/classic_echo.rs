//! The course's upper-case echoes over TCP, UDP and behind the HMAC challenge: no panic, no hang,
//! the input upper-cased back, a wrong digest answered with the challenge alone.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sockit::services::classic::fuzzing::check_classic_echo(data));
