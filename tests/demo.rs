//! `sockit demo sticky` end to end: the real binary, its output checked for what the demo
//! promises: a late `recv(1024)` gets several messages at once, `recv(5)` cuts them, the codec
//! delivers each once and whole, five lines of why, exit 0 within a time bound, and the same
//! text on every run.

mod common;

use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

use common::{sockit_command, wait_with_timeout};

/// The course's messages, as the demo sends them.
const MESSAGES: [&str; 3] = ["hello,", "world,", "yunyaGG!!"];
/// The demo takes well under a second; this leaves room for a loaded machine.
const TIME_LIMIT: Duration = Duration::from_secs(10);

/// Runs `sockit demo sticky` and returns its stdout, once it has exited 0 within the limit.
fn run_demo() -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut child = sockit_command(dir.path())
        .args(["demo", "sticky"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The output is a few kilobytes, far below a pipe's capacity: waiting first cannot block it.
    let status = wait_with_timeout(&mut child, TIME_LIMIT);
    let mut stdout = String::new();
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert!(
        status.success(),
        "exit {status}; stderr: {stderr}; stdout:\n{stdout}"
    );
    assert_eq!(stderr, "");
    stdout
}

/// The lines of the section whose heading starts with `heading`, up to the next blank line.
fn section<'a>(output: &'a str, heading: &str) -> Vec<&'a str> {
    let lines: Vec<&str> = output
        .lines()
        .skip_while(|line| !line.starts_with(heading))
        .take_while(|line| !line.is_empty())
        .collect();
    assert!(!lines.is_empty(), "no section {heading:?} in:\n{output}");
    lines
}

/// One `recv(N) -> K bytes  b'...'` line: the buffer size and the bytes returned.
struct Recv {
    size: usize,
    bytes: String,
}

fn recv_calls(lines: &[&str]) -> Vec<Recv> {
    lines
        .iter()
        .filter_map(|line| line.trim_start().strip_prefix("recv("))
        .map(|call| {
            let (size, rest) = call.split_once(')').unwrap();
            let count: usize = rest
                .trim_start_matches(" ->")
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap();
            let bytes = match rest.split_once("b'") {
                Some((_, literal)) => literal.split_once('\'').unwrap().0.to_owned(),
                None => String::new(),
            };
            assert_eq!(count, bytes.len(), "byte count of {call:?}");
            Recv {
                size: size.parse().unwrap(),
                bytes,
            }
        })
        .collect()
}

/// Offsets in the stream where a message ends.
fn message_ends() -> Vec<usize> {
    MESSAGES
        .iter()
        .scan(0, |end, message| {
            *end += message.len();
            Some(*end)
        })
        .collect()
}

/// Checks that the reads returned the whole stream in order, then the sender's close.
fn assert_whole_stream(reads: &[Recv], size: usize) {
    assert!(
        reads
            .iter()
            .all(|read| read.size == size && read.bytes.len() <= size)
    );
    let joined: String = reads.iter().map(|read| read.bytes.as_str()).collect();
    assert_eq!(joined, MESSAGES.concat());
    assert_eq!(
        reads.last().map(|read| read.bytes.as_str()),
        Some(""),
        "ends with the close"
    );
}

#[test]
fn a_late_recv_1024_gets_several_messages_in_one_read() {
    let output = run_demo();
    let reads = recv_calls(&section(&output, "1. Merged"));
    assert_whole_stream(&reads, 1024);
    let first = &reads[0].bytes;
    let whole = message_ends().iter().filter(|&&end| end <= first.len()).count();
    assert!(
        whole > 1,
        "the first recv(1024) returned only {first:?}:\n{output}"
    );
    assert!(output.contains("returned 3 messages stuck together"), "{output}");
}

#[test]
fn recv_5_cuts_messages_across_reads() {
    let output = run_demo();
    let reads = recv_calls(&section(&output, "2. Split"));
    assert_whole_stream(&reads, 5);
    let ends = message_ends();
    let mut offset = 0;
    let mut cut = 0;
    for read in &reads {
        offset += read.bytes.len();
        if !read.bytes.is_empty() && !ends.contains(&offset) {
            cut += 1;
        }
    }
    assert!(cut > 0, "no read ended inside a message:\n{output}");
}

#[test]
fn the_codec_delivers_each_message_once_and_whole_from_small_reads() {
    let output = run_demo();
    let lines = section(&output, "3. Framed");
    let arrivals: Vec<(&str, usize)> = lines
        .iter()
        .filter_map(|line| line.split_once(" whole: b'"))
        .map(|(_, rest)| {
            let (body, rest) = rest.split_once('\'').unwrap();
            let read = rest
                .trim()
                .trim_start_matches("(complete after read ")
                .trim_end_matches(')');
            (body, read.parse().unwrap())
        })
        .collect();
    let bodies: Vec<&str> = arrivals.iter().map(|(body, _)| *body).collect();
    assert_eq!(bodies, MESSAGES, "{output}");
    // Messages were completed by different reads, in order: the codec really put pieces together.
    let reads: Vec<usize> = arrivals.iter().map(|(_, read)| *read).collect();
    assert!(reads.windows(2).all(|pair| pair[0] < pair[1]), "{reads:?}");
    assert!(
        reads[0] > 1,
        "the first frame fits no single 7-byte read: {reads:?}"
    );
    assert!(lines.iter().any(|line| line.contains("ONE send()")), "{output}");
}

#[test]
fn explains_why_in_five_lines() {
    let output = run_demo();
    let why = section(&output, "Why:");
    assert_eq!(why.len(), 6, "a heading and five lines:\n{output}");
    for (number, line) in why[1..].iter().enumerate() {
        assert!(
            line.trim_start().starts_with(&format!("{}. ", number + 1)),
            "{line}"
        );
    }
    let text = why.join("\n");
    for idea in ["byte stream", "Nagle", "recv(1024)", "length"] {
        assert!(text.contains(idea), "{idea} missing from:\n{text}");
    }
}

#[test]
fn prints_the_same_text_every_run() {
    let first = run_demo();
    for _ in 0..2 {
        assert_eq!(run_demo(), first);
    }
}
