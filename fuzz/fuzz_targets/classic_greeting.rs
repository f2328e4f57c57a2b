//! The threaded greeting server: a welcome, then greetings, whatever the client sends.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sockit::services::classic::fuzzing::check_classic_greeting(data));
