//! Replays every input the fuzzers kept (fuzz/corpus/) through the same checks the fuzz
//! targets run, so a regression on any of them fails `cargo test` without cargo-fuzz.

use std::path::Path;

use sockit::client::fuzzing::check_http_response;
use sockit::services::classic::fuzzing::{
    check_classic_echo, check_classic_exec, check_classic_ftp, check_classic_greeting,
};
use sockit::services::fuzzing::{check_chat_header, check_time_datagram};
use sockit::wire::fuzzing::{check_decoder, check_header};

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{} fails the {target} check", path.display());
        count += 1;
    }
    assert!(count >= 10, "the {target} corpus has only {count} inputs");
}

#[test]
fn frame_decoder_corpus_replays_cleanly() {
    replay("frame_decoder", check_decoder);
}

#[test]
fn header_json_corpus_replays_cleanly() {
    replay("header_json", check_header);
}

#[test]
fn time_datagram_corpus_replays_cleanly() {
    replay("time_datagram", check_time_datagram);
}

#[test]
fn chat_header_corpus_replays_cleanly() {
    replay("chat_header", check_chat_header);
}

/// Serves each input to the real Fetcher from a loopback server in this process.
#[test]
fn http_response_corpus_replays_cleanly() {
    replay("http_response", check_http_response);
}

/// The classic checks serve each input to the real service over loopback in this process.
#[test]
fn classic_echo_corpus_replays_cleanly() {
    replay("classic_echo", check_classic_echo);
}

#[test]
fn classic_exec_corpus_replays_cleanly() {
    replay("classic_exec", check_classic_exec);
}

#[test]
fn classic_ftp_corpus_replays_cleanly() {
    replay("classic_ftp", check_classic_ftp);
}

#[test]
fn classic_greeting_corpus_replays_cleanly() {
    replay("classic_greeting", check_classic_greeting);
}
