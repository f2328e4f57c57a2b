//! `sockit demo sticky`: the course's sticky-packet lesson, run live on loopback.
//!
//! Three rounds over fresh 127.0.0.1 connections: the course's messages sent with one `send()`
//! each and read late with `recv(1024)` (they arrive merged), then read with `recv(5)` (they
//! arrive split), then sent as sockit frames and read in small pieces through
//! [`FrameCodec`] (each arrives whole). Everything is blocking std sockets in one thread: the
//! messages are far smaller than a socket buffer, so no write ever waits for a read.
//!
//! The output is the same on every run because the receiver never reads before all the bytes
//! it expects are waiting in its kernel buffer (it "is busy", as a real receiver can be). That
//! makes the merge certain rather than likely, and the small reads cut at the same places.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::ops::Range;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use clap::{Args, Subcommand};
use sockit::wire::{Frame, FrameCodec, FrameError, Header};
use tokio_util::codec::{Decoder, Encoder};

use super::shared::print_line;

#[derive(Args)]
#[command(about = "Short local demonstrations of what the course teaches")]
pub struct DemoArgs {
    #[command(subcommand)]
    topic: Topic,
}

#[derive(Subcommand)]
enum Topic {
    /// Why TCP messages arrive merged or split ("sticky packets"), and how framing fixes it
    #[command(
        after_help = "Runs on 127.0.0.1 ephemeral ports, prints the same thing every time and exits within a couple of seconds."
    )]
    Sticky,
}

/// The course's example: three small `send()`s that its receiver got as two packets.
const MESSAGES: [&[u8]; 3] = [b"hello,", b"world,", b"yunyaGG!!"];
/// The course's receive size, and a small one that cannot hold a whole message.
const COURSE_READ_SIZE: usize = 1024;
const SMALL_READ_SIZE: usize = 5;
/// Small enough that the length prefix and the JSON header are split across reads too.
const FRAMED_READ_SIZE: usize = 7;
/// The `cmd` of the demo's frames; any name would do, nothing serves them.
const FRAME_CMD: &str = "msg";

/// How long the receiver is busy before it looks at its socket at all.
const BUSY_RECEIVER: Duration = Duration::from_millis(50);
/// How often, and how long at most, it then checks whether everything has arrived.
const ARRIVAL_POLL: Duration = Duration::from_millis(10);
const ARRIVAL_DEADLINE: Duration = Duration::from_millis(1500);
/// Bounds on each round, so a misbehaving network stack cannot keep the demo running.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_READS: usize = 100;

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    match args.topic {
        Topic::Sticky => sticky()?,
    }
    Ok(ExitCode::SUCCESS)
}

fn sticky() -> anyhow::Result<()> {
    print_line("The sticky-packet problem: TCP keeps the bytes in order, but not where each send() ended.");
    let sizes: Vec<String> = MESSAGES.iter().map(|message| message.len().to_string()).collect();
    print_line(format!(
        "The course's three messages: {} ({} = {} bytes) on 127.0.0.1.",
        messages_listed(),
        sizes.join(" + "),
        stream_len()
    ));
    print_line("[ ] mark where a message starts and ends; ... marks a piece cut from a message.");
    merged_round()?;
    split_round()?;
    framed_round()?;
    explain();
    Ok(())
}

/// Round 1: one `send()` per message, one late `recv(1024)` gets them all.
fn merged_round() -> io::Result<()> {
    print_line("");
    print_line(format!(
        "1. Merged: the receiver reads late, with recv({COURSE_READ_SIZE})"
    ));
    print_line(format!("   sender:   {}  close()", sends_listed()));
    print_line("             (TCP_NODELAY is on, so Nagle holds nothing back: each send() leaves at once)");
    let reads = raw_round(COURSE_READ_SIZE)?;
    let first = reads.first().map_or(0..0, |read| read.range.clone());
    let whole = message_spans().filter(|span| contains(&first, span)).count();
    if whole > 1 {
        print_line(format!(
            "   => one recv() returned {whole} messages stuck together: nothing in the bytes says where one ends."
        ));
    } else {
        // Only if the kernel took longer than ARRIVAL_DEADLINE to move bytes across loopback.
        print_line(format!(
            "   => this time the first recv() held {whole} whole message: the rest came late (a very busy machine?)."
        ));
    }
    Ok(())
}

/// Round 2: the same sends, read five bytes at a time.
fn split_round() -> io::Result<()> {
    print_line("");
    print_line(format!(
        "2. Split: the receiver reads with a small buffer, recv({SMALL_READ_SIZE})"
    ));
    print_line(format!("   sender:   {}  close()", sends_listed()));
    let reads = raw_round(SMALL_READ_SIZE)?;
    let pieces: Vec<String> = MESSAGES
        .iter()
        .zip(message_spans())
        .map(|(message, span)| {
            let count = reads.iter().filter(|read| overlaps(&read.range, &span)).count();
            format!("{} came in {count} reads", bytes_literal(message))
        })
        .collect();
    print_line(format!("   => {};", pieces.join(", ")));
    print_line("      reads cut anywhere, and one read can end one message and start the next.");
    Ok(())
}

/// Round 3: the same messages as frames, all in one `send()`, read in small pieces by the codec.
fn framed_round() -> anyhow::Result<()> {
    print_line("");
    print_line("3. Framed: the same messages through sockit's codec (sockit::wire::FrameCodec)");
    let frames = MESSAGES
        .into_iter()
        .map(encode_frame)
        .collect::<Result<Vec<_>, _>>()?;
    let first = &frames[0];
    let header_len = first.len() - 4 - MESSAGES[0].len();
    print_line(format!(
        "   a frame: 4-byte little-endian header length ({header_len}), JSON header, then body_len bytes of body:"
    ));
    print_line(format!("     {}", bytes_literal(first)));
    let wire = frames.concat();
    print_line(format!(
        "   sender:   all three frames in ONE send() of {} bytes (stuck together on purpose)  close()",
        wire.len()
    ));
    let (mut sender, mut receiver) = loopback_pair()?;
    sender.write_all(&wire)?;
    sender.shutdown(Shutdown::Write)?;
    wait_until_queued(&receiver, wire.len())?;
    let reads = read_until_closed(&mut receiver, FRAMED_READ_SIZE)?;
    print_line(format!(
        "   receiver: recv({FRAMED_READ_SIZE}) until the sender closes: {} reads, cutting even the length and the header;",
        reads.len()
    ));
    print_line("             each goes to the codec, which keeps an incomplete frame until the rest arrives");
    let arrivals = decode_reads(&reads)?;
    let width = arrivals
        .iter()
        .map(|arrival| bytes_literal(&arrival.body).len())
        .max()
        .unwrap_or(0);
    for (number, arrival) in arrivals.iter().enumerate() {
        let body = bytes_literal(&arrival.body);
        print_line(format!(
            "     message {} whole: {body:<width$}  (complete after read {})",
            number + 1,
            arrival.read
        ));
    }
    print_line(
        "   => merged by the sender, cut by the reads, yet the codec hands on each message once and whole.",
    );
    Ok(())
}

/// The five-line why, in the course's terms.
fn explain() {
    print_line("");
    print_line("Why:");
    for line in [
        "1. TCP is a byte stream: every byte arrives, in order, but where each send() ended is not kept.",
        "2. Nagle's algorithm may send small writes together; the receiver's buffer piles up whatever came.",
        "3. recv(1024) takes what is waiting, up to 1024 bytes: several messages (1), or part of one (2).",
        "4. recv(6), a bigger buffer or a sleep just move the problem: only the sender knows the boundaries.",
        "5. So the sender says it: a frame leads with its header's length, the header with body_len (3).",
    ] {
        print_line(format!("  {line}"));
    }
}

/// One read: its bytes, and where they sit in the stream the sender wrote.
struct Received {
    range: Range<usize>,
    bytes: Vec<u8>,
}

/// Sends each message with its own `send()`, reads with `recv(read_size)` once all have
/// arrived, prints each read with the message boundaries marked, and returns the reads.
fn raw_round(read_size: usize) -> io::Result<Vec<Received>> {
    let (mut sender, mut receiver) = loopback_pair()?;
    sender.set_nodelay(true)?;
    for message in MESSAGES {
        sender.write_all(message)?;
    }
    sender.shutdown(Shutdown::Write)?;
    let queued = wait_until_queued(&receiver, stream_len())?;
    if queued < stream_len() {
        print_line(format!(
            "   receiver: gave up waiting after {ARRIVAL_DEADLINE:?} with {queued} of {} bytes arrived",
            stream_len()
        ));
    } else {
        print_line(format!(
            "   receiver: busy for a moment; meanwhile all {queued} bytes wait in its kernel buffer"
        ));
    }
    let reads = located(read_until_closed(&mut receiver, read_size)?);
    print_reads(read_size, &reads);
    Ok(reads)
}

/// A connected pair on a fresh ephemeral port: (sender, receiver).
fn loopback_pair() -> io::Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    let sender = TcpStream::connect(listener.local_addr()?)?;
    // The handshake is complete once connect returns, so accept does not wait.
    let (receiver, _) = listener.accept()?;
    receiver.set_read_timeout(Some(READ_TIMEOUT))?;
    Ok((sender, receiver))
}

/// Plays a receiver busy elsewhere: does not read until `expected` bytes are waiting in the
/// kernel (checked with a non-blocking peek), or until the deadline. Returns how many were.
fn wait_until_queued(receiver: &TcpStream, expected: usize) -> io::Result<usize> {
    let deadline = Instant::now() + ARRIVAL_DEADLINE;
    let mut probe = vec![0; expected];
    std::thread::sleep(BUSY_RECEIVER);
    receiver.set_nonblocking(true)?;
    let queued = loop {
        let queued = match receiver.peek(&mut probe) {
            Ok(queued) => queued,
            Err(error) if error.kind() == ErrorKind::WouldBlock => 0,
            Err(error) => return Err(error),
        };
        if queued >= expected || Instant::now() >= deadline {
            break queued;
        }
        std::thread::sleep(ARRIVAL_POLL);
    };
    receiver.set_nonblocking(false)?;
    Ok(queued)
}

/// `recv(read_size)` until the sender closes: the bytes of each call, the final empty one
/// included, as the course prints its third, empty packet.
fn read_until_closed(receiver: &mut TcpStream, read_size: usize) -> io::Result<Vec<Vec<u8>>> {
    let mut buffer = vec![0; read_size];
    let mut reads = Vec::new();
    while reads.len() < MAX_READS {
        let n = receiver.read(&mut buffer)?;
        reads.push(buffer[..n].to_vec());
        if n == 0 {
            return Ok(reads);
        }
    }
    Err(io::Error::other(format!(
        "the sender had not closed after {MAX_READS} reads"
    )))
}

/// Gives each read its place in the stream.
fn located(reads: Vec<Vec<u8>>) -> Vec<Received> {
    let mut offset = 0;
    reads
        .into_iter()
        .map(|bytes| {
            let range = offset..offset + bytes.len();
            offset = range.end;
            Received { range, bytes }
        })
        .collect()
}

fn print_reads(read_size: usize, reads: &[Received]) {
    let width = reads
        .iter()
        .map(|read| bytes_literal(&read.bytes).len())
        .max()
        .unwrap_or(0);
    for read in reads {
        let count = read.bytes.len();
        let unit = if count == 1 { "byte " } else { "bytes" };
        let call = format!("recv({read_size}) -> {count:>2} {unit}");
        if read.bytes.is_empty() {
            print_line(format!("   {call}  (the sender closed)"));
        } else {
            let literal = bytes_literal(&read.bytes);
            print_line(format!("   {call}  {literal:<width$}  {}", marked(&read.range)));
        }
    }
}

/// The messages' bytes in `range` of the stream, each piece bracketed where its message
/// starts or ends and dotted where the read cut it: `...,][worl...`.
fn marked(range: &Range<usize>) -> String {
    let mut text = String::new();
    for (message, span) in MESSAGES.iter().zip(message_spans()) {
        if !overlaps(range, &span) {
            continue;
        }
        let start = range.start.max(span.start);
        let end = range.end.min(span.end);
        text.push_str(if start == span.start { "[" } else { "..." });
        text.push_str(&String::from_utf8_lossy(
            &message[start - span.start..end - span.start],
        ));
        text.push_str(if end == span.end { "]" } else { "..." });
    }
    text
}

/// The bytes of all the messages.
fn stream_len() -> usize {
    MESSAGES.iter().map(|message| message.len()).sum()
}

/// Where each message sits in the stream the sender wrote.
fn message_spans() -> impl Iterator<Item = Range<usize>> {
    MESSAGES.iter().scan(0, |offset, message| {
        let span = *offset..*offset + message.len();
        *offset = span.end;
        Some(span)
    })
}

fn overlaps(a: &Range<usize>, b: &Range<usize>) -> bool {
    a.start < b.end && b.start < a.end
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

/// One message as a frame: what `Connection::send` writes.
fn encode_frame(message: &'static [u8]) -> Result<BytesMut, FrameError> {
    let mut codec = FrameCodec::default();
    let mut frame = BytesMut::new();
    let header = Header::new(FRAME_CMD).with_body_len(message.len() as u64);
    codec.encode(header, &mut frame)?;
    codec.encode(Bytes::from_static(message), &mut frame)?;
    Ok(frame)
}

/// A message the codec completed, and the number of the read that completed it.
struct Arrival {
    body: Vec<u8>,
    read: usize,
}

/// Feeds the reads to the codec one by one, as `Connection` does with each read from its
/// socket, and gathers each frame's body chunks into its whole message.
fn decode_reads(reads: &[Vec<u8>]) -> Result<Vec<Arrival>, FrameError> {
    let mut codec = FrameCodec::default();
    let mut unread = BytesMut::new();
    let mut body: Option<Vec<u8>> = None;
    let mut arrivals = Vec::new();
    for (index, read) in reads.iter().enumerate() {
        unread.extend_from_slice(read);
        while let Some(frame) = codec.decode(&mut unread)? {
            match frame {
                Frame::Header(_) => body = Some(Vec::new()),
                Frame::Body(chunk) => body.get_or_insert_default().extend_from_slice(&chunk),
            }
            if codec.body_remaining() > 0 {
                continue;
            }
            if let Some(body) = body.take() {
                arrivals.push(Arrival {
                    body,
                    read: index + 1,
                });
            }
        }
    }
    if !unread.is_empty() || codec.body_remaining() > 0 {
        return Err(FrameError::Truncated);
    }
    Ok(arrivals)
}

/// Bytes as Python prints them (the course's language): `b'hello,'`.
fn bytes_literal(bytes: &[u8]) -> String {
    let mut text = String::from("b'");
    for &byte in bytes {
        match byte {
            b'\'' | b'\\' => text.extend(['\\', byte as char]),
            b' '..=b'~' => text.push(byte as char),
            _ => text.push_str(&format!("\\x{byte:02x}")),
        }
    }
    text.push('\'');
    text
}

fn messages_listed() -> String {
    let listed: Vec<String> = MESSAGES.iter().map(|message| bytes_literal(message)).collect();
    listed.join(" ")
}

fn sends_listed() -> String {
    let listed: Vec<String> = MESSAGES
        .iter()
        .map(|message| format!("send({})", bytes_literal(message)))
        .collect();
    listed.join("  ")
}
