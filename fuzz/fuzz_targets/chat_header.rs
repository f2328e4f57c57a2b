//! A header as a chat request (server) and as a chat event (client): never panics, refusals
//! stay short, events re-encode to themselves and show no control characters.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sockit::services::fuzzing::check_chat_header(data));
