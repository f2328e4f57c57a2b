//! A connection that reads and writes frames, in the clear or inside encrypted records.
//!
//! Every service, native or not, talks through this type. It is split into a reader and a
//! writer from the start so a service that must read and write at once (exec streams output
//! while it forwards stdin) borrows both halves without locks.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use prometheus_client::metrics::counter::Counter;
use snow::HandshakeState;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream, tcp, unix};
use tokio::sync::{Mutex, MutexGuard};
use tokio_util::codec::Decoder;

use super::codec::{Frame, FrameCodec, Limits, encode_header};
use super::error::{FrameError, RemoteError};
use super::header::Header;
use super::record::{self, Opener, Sealer};

/// The first read into an empty buffer; grows while reads keep filling the buffer.
const MIN_READ: usize = 4 * 1024;
const MAX_READ: usize = 256 * 1024;
/// Pending output beyond this is written out before more is queued.
const WRITE_HIGH_WATER: usize = 128 * 1024;

/// A header together with its whole body, for messages small enough to hold in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// The frame's header.
    pub header: Header,
    /// Its whole body.
    pub body: Bytes,
}

/// Both halves of a connection.
pub struct Connection {
    /// Reads frames; a half of its own so that one task can read while another writes.
    pub reader: FrameReader,
    /// Writes frames.
    pub writer: FrameWriter,
}

impl Connection {
    /// A connection over TCP, plaintext until the handshake encrypts it.
    pub fn tcp(stream: TcpStream, limits: Limits) -> Connection {
        let (read, write) = stream.into_split();
        Connection::new(ReadIo::Tcp(read), Box::new(write), limits)
    }

    pub(crate) fn unix(stream: UnixStream, limits: Limits) -> Connection {
        let (read, write) = stream.into_split();
        Connection::new(ReadIo::Unix(read), Box::new(write), limits)
    }

    /// Any byte stream: useful for tests and for wrapping other transports.
    pub fn from_io(io: impl AsyncRead + AsyncWrite + Send + 'static, limits: Limits) -> Connection {
        let (read, write) = tokio::io::split(io);
        Connection::new(ReadIo::Other(Box::new(read)), Box::new(write), limits)
    }

    fn new(read: ReadIo, write: BoxWrite, limits: Limits) -> Connection {
        let max_header_len = limits.max_header_len();
        Connection {
            reader: FrameReader {
                io: read,
                codec: FrameCodec::new(limits),
                plain: BytesMut::new(),
                sealed: BytesMut::new(),
                opener: None,
                read_size: MIN_READ,
                eof: false,
                received: None,
                stall_timeout: None,
            },
            writer: FrameWriter {
                io: write,
                out: BytesMut::new(),
                open_record: None,
                sealer: None,
                scratch: BytesMut::new(),
                max_header_len,
                sent: None,
            },
        }
    }

    /// Replaces the size limits of both directions, for instance once a peer has
    /// authenticated and may send (and be sent) full-size headers.
    pub(crate) fn set_limits(&mut self, limits: Limits) {
        self.writer.max_header_len = limits.max_header_len();
        self.reader.set_limits(limits);
    }

    /// Switches both directions to encrypted records, after a completed Noise handshake.
    /// Frames queued before this call still go out in the clear, in the same write as the
    /// first encrypted ones. Fails if the handshake is not finished.
    pub(crate) fn encrypt(&mut self, noise: HandshakeState) -> Result<(), snow::Error> {
        let (sealer, opener) = record::split(noise)?;
        self.writer.open_record = None;
        self.writer.sealer = Some(sealer);
        self.reader.start_decrypting(opener);
        Ok(())
    }

    /// Adds every byte read from and written to the socket (ciphertext in an encrypted
    /// session) to these counters: the server's traffic metrics.
    pub(crate) fn count_bytes(&mut self, received: Counter, sent: Counter) {
        self.reader.received = Some(received);
        self.writer.sent = Some(sent);
    }

    /// Whether the handshake has turned encryption on.
    pub fn is_encrypted(&self) -> bool {
        self.writer.sealer.is_some()
    }

    /// The next header or body chunk; `None` at a clean end between frames.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        self.reader.read_frame().await
    }

    /// The next message with its whole body; `None` at a clean end between frames.
    pub async fn read_message(&mut self) -> Result<Option<Message>, FrameError> {
        self.reader.read_message().await
    }

    /// Sends one frame.
    pub async fn send(&mut self, header: Header, body: &[u8]) -> Result<(), FrameError> {
        self.writer.send(header, body).await
    }

    /// The reader, and a writer that many tasks can share (what a server session uses).
    pub(crate) fn into_shared(self) -> (FrameReader, SharedWriter) {
        (self.reader, SharedWriter(Arc::new(Mutex::new(self.writer))))
    }
}

/// The reading half: turns bytes (decrypting them first, in an encrypted session) into frames.
pub struct FrameReader {
    io: ReadIo,
    codec: FrameCodec,
    /// Plaintext not yet decoded.
    plain: BytesMut,
    /// Ciphertext not yet decrypted (a partial record).
    sealed: BytesMut,
    opener: Option<Opener>,
    read_size: usize,
    eof: bool,
    received: Option<Counter>,
    /// How long the peer may leave a frame half sent; `None`: as long as it likes.
    stall_timeout: Option<Duration>,
}

impl FrameReader {
    /// The next header or body chunk; `None` when the peer closed cleanly between frames.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            if let Some(frame) = self.codec.decode(&mut self.plain)? {
                return Ok(Some(frame));
            }
            if self.eof {
                if !self.sealed.is_empty() || !self.plain.is_empty() || self.codec.body_remaining() > 0 {
                    return Err(FrameError::Truncated);
                }
                return Ok(None);
            }
            self.fill().await?;
        }
    }

    /// The next message with its whole body (bounded by the codec's limit for its `cmd`).
    pub async fn read_message(&mut self) -> Result<Option<Message>, FrameError> {
        let header = match self.read_frame().await? {
            None => return Ok(None),
            Some(Frame::Header(header)) => header,
            Some(Frame::Body(_)) => {
                return Err(FrameError::BadHeader(
                    "body bytes where a header was expected".into(),
                ));
            }
        };
        let body = self.read_whole_body().await?;
        Ok(Some(Message { header, body }))
    }

    /// The next chunk of the current frame's body; `None` once the body is complete.
    pub async fn read_body_chunk(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.codec.body_remaining() == 0 {
            return Ok(None);
        }
        match self.read_frame().await? {
            Some(Frame::Body(chunk)) => Ok(Some(chunk)),
            _ => Err(FrameError::Truncated),
        }
    }

    /// The rest of the current frame's body, gathered in memory.
    pub(crate) async fn read_whole_body(&mut self) -> Result<Bytes, FrameError> {
        let Some(first) = self.read_body_chunk().await? else {
            return Ok(Bytes::new());
        };
        if self.codec.body_remaining() == 0 {
            return Ok(first);
        }
        // Grow with what arrives rather than trusting the declared size up front.
        let expected = self.codec.body_remaining().min(MAX_READ as u64) as usize;
        let mut body = BytesMut::with_capacity(first.len() + expected);
        body.extend_from_slice(&first);
        while let Some(chunk) = self.read_body_chunk().await? {
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }

    /// The next header or body chunk if it has already arrived whole; never waits. A session
    /// that finds none flushes its replies before it waits for the peer.
    pub(crate) fn buffered_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(opener) = &mut self.opener {
            opener.open(&mut self.sealed, &mut self.plain)?;
        }
        self.codec.decode(&mut self.plain)
    }

    /// Whether bytes of a further frame have already arrived (so the peer is pipelining).
    pub(crate) fn has_buffered_input(&self) -> bool {
        !self.plain.is_empty() || !self.sealed.is_empty()
    }

    /// Ends the read with [`FrameError::Stalled`] when a peer that has sent part of a frame
    /// (a header, a body, a record) sends nothing more for `limit`: an idle timeout that
    /// cannot be dodged by stopping in the middle of a request.
    pub(crate) fn set_stall_timeout(&mut self, limit: Option<Duration>) {
        self.stall_timeout = limit;
    }

    /// Whether part of a frame has arrived and the rest has not.
    fn mid_frame(&self) -> bool {
        self.has_buffered_input() || self.codec.body_remaining() > 0
    }

    /// Replaces the size limits, for instance once a peer has authenticated.
    pub(crate) fn set_limits(&mut self, limits: Limits) {
        self.codec = FrameCodec::new(limits);
    }

    fn start_decrypting(&mut self, opener: Opener) {
        // Anything already read past the handshake is ciphertext.
        self.sealed.extend_from_slice(&self.plain);
        self.plain.clear();
        self.opener = Some(opener);
    }

    /// Reads once from the socket into the buffer that reading fills: the ciphertext once
    /// encrypted, the plaintext before.
    async fn read_some(&mut self) -> io::Result<usize> {
        let encrypted = self.opener.is_some();
        if self.sealed.is_empty() && (encrypted || self.plain.is_empty()) {
            let ready = self.io.ready();
            tokio::pin!(ready);
            if let std::task::Poll::Ready(ready) = futures_util::poll!(&mut ready) {
                ready?;
            } else {
                // Idle connections wait here without holding a read buffer.
                if self.plain.is_empty() {
                    self.plain = BytesMut::new();
                }
                self.sealed = BytesMut::new();
                ready.await?;
            }
        }
        let buf = if encrypted {
            &mut self.sealed
        } else {
            &mut self.plain
        };
        buf.reserve(self.read_size);
        self.io.read_buf(buf).await
    }

    /// Reads once from the socket and decrypts what arrived.
    async fn fill(&mut self) -> Result<(), FrameError> {
        if let Some(opener) = &mut self.opener {
            // Records that arrived with the handshake may already be complete.
            let before = self.plain.len();
            opener.open(&mut self.sealed, &mut self.plain)?;
            if self.plain.len() > before {
                return Ok(());
            }
        }
        let n = match self.stall_timeout.filter(|_| self.mid_frame()) {
            Some(limit) => tokio::time::timeout(limit, self.read_some())
                .await
                .map_err(|_| FrameError::Stalled(limit))??,
            None => self.read_some().await?,
        };
        count(&self.received, n);
        if n == 0 {
            self.eof = true;
        } else if n >= self.read_size {
            self.read_size = (self.read_size * 2).min(MAX_READ);
        }
        if let Some(opener) = &mut self.opener {
            opener.open(&mut self.sealed, &mut self.plain)?;
        }
        Ok(())
    }
}

/// The writing half: frames go out in as few writes as possible (one per small message), which
/// with TCP_NODELAY avoids the course's 40 ms Nagle/delayed-ACK stall.
///
/// In an encrypted session, queued bytes are written straight into the record that will carry
/// them and sealed where they lie: a body is copied once, from its source into this buffer.
pub struct FrameWriter {
    io: BoxWrite,
    /// What the next flush writes: bytes queued in the clear (before the handshake turned
    /// encryption on), then sealed records, then the record being filled.
    out: BytesMut,
    /// Where the record being filled starts in `out` (at its length prefix); `None` when the
    /// next byte starts a new record, or the session is not encrypted.
    open_record: Option<usize>,
    sealer: Option<Sealer>,
    /// A header being encoded, before it goes into a record.
    scratch: BytesMut,
    max_header_len: usize,
    sent: Option<Counter>,
}

impl FrameWriter {
    /// Sends a whole message in one write; `body_len` is set from `body`.
    pub async fn send(&mut self, header: Header, body: &[u8]) -> Result<(), FrameError> {
        self.queue_header(&header.with_body_len(body.len() as u64))?;
        self.send_body(body).await?;
        self.flush().await
    }

    /// Sends an error frame. One whose message makes it too large to send (it quotes what a
    /// peer sent, say) goes out with the message cut short instead, so that answering a bad
    /// request never ends the session.
    pub(crate) async fn send_error(
        &mut self,
        id: Option<u64>,
        error: &RemoteError,
    ) -> Result<(), FrameError> {
        self.queue_error(id, error)?;
        self.flush().await
    }

    /// Queues an error frame, cut short if it is too large to send (see [`FrameWriter::send_error`]).
    fn queue_error(&mut self, id: Option<u64>, error: &RemoteError) -> Result<(), FrameError> {
        match self.queue(error.to_header(id), b"") {
            Err(unsent) if unsent.is_unsent() => self.queue(error.shortened().to_header(id), b""),
            queued => queued,
        }
    }

    /// Queues a whole message, writing out only once enough has gathered: for replies, which
    /// the session flushes before it next waits for its peer.
    async fn queue_reply(&mut self, header: Header, body: &[u8]) -> Result<(), FrameError> {
        self.queue(header, body)?;
        self.flush_if_full().await
    }

    async fn flush_if_full(&mut self) -> Result<(), FrameError> {
        if self.out.len() >= WRITE_HIGH_WATER {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends a header as it is, with the body it declares left to [`FrameWriter::send_body`]
    /// (none for a bodyless message): for one message shared by many connections.
    pub(crate) async fn send_header(&mut self, header: &Header) -> Result<(), FrameError> {
        self.queue_header(header)?;
        self.flush().await
    }

    /// Queues a whole message to go out with the next flush.
    pub fn queue(&mut self, header: Header, body: &[u8]) -> Result<(), FrameError> {
        self.queue_header(&header.with_body_len(body.len() as u64))?;
        self.append(body)
    }

    /// Queues a header whose body will follow through [`FrameWriter::send_body`]. A header too
    /// large to send leaves nothing queued.
    pub fn queue_header(&mut self, header: &Header) -> Result<(), FrameError> {
        if self.sealer.is_none() {
            return encode_header(header, &mut self.out, self.max_header_len);
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let queued =
            encode_header(header, &mut scratch, self.max_header_len).and_then(|()| self.append(&scratch));
        self.scratch = scratch;
        queued
    }

    /// Queues body bytes, writing out once enough has gathered. A large body goes in pieces
    /// below the high-water mark, so the queue keeps the size it is released at rather than
    /// growing to the body's size and being dropped after every write.
    pub async fn send_body(&mut self, body: &[u8]) -> Result<(), FrameError> {
        for piece in body.chunks(WRITE_HIGH_WATER / 2) {
            self.append(piece)?;
            self.flush_if_full().await?;
        }
        Ok(())
    }

    /// Queues bytes: into the records being filled once encrypted, each sealed as it fills.
    fn append(&mut self, mut bytes: &[u8]) -> Result<(), FrameError> {
        let Some(sealer) = &mut self.sealer else {
            self.out.extend_from_slice(bytes);
            return Ok(());
        };
        while !bytes.is_empty() {
            let start = *self.open_record.get_or_insert_with(|| {
                let start = self.out.len();
                self.out.extend_from_slice(&[0; record::PREFIX_LEN]);
                start
            });
            let filled = self.out.len() - start - record::PREFIX_LEN;
            let (now, later) = bytes.split_at(bytes.len().min(record::MAX_RECORD_PLAINTEXT - filled));
            self.out.extend_from_slice(now);
            bytes = later;
            if filled + now.len() == record::MAX_RECORD_PLAINTEXT {
                self.open_record = None;
                sealer
                    .seal_in_place(&mut self.out, start)
                    .map_err(io::Error::other)?;
            }
        }
        Ok(())
    }

    /// Writes out everything queued.
    pub async fn flush(&mut self) -> Result<(), FrameError> {
        if let (Some(start), Some(sealer)) = (self.open_record.take(), &mut self.sealer) {
            sealer
                .seal_in_place(&mut self.out, start)
                .map_err(io::Error::other)?;
        }
        if self.out.is_empty() {
            return Ok(());
        }
        self.io.write_all(&self.out).await?;
        count(&self.sent, self.out.len());
        self.out.clear();
        self.io.flush().await?;
        release_if_large(&mut self.out);
        Ok(())
    }

    /// Half-closes the connection: the peer reads EOF after everything already sent.
    pub async fn shutdown(&mut self) -> io::Result<()> {
        self.io.shutdown().await
    }
}

/// A writer shared by the tasks serving one connection (a command's output, chat messages,
/// replies). Whoever holds the lock writes whole frames, so frames never interleave; a task
/// streaming a long body holds [`SharedWriter::lock`] for the whole body.
#[derive(Clone)]
pub(crate) struct SharedWriter(Arc<Mutex<FrameWriter>>);

impl SharedWriter {
    pub(crate) async fn send(&self, header: Header, body: &[u8]) -> Result<(), FrameError> {
        self.0.lock().await.send(header, body).await
    }

    pub(crate) async fn send_error(&self, id: Option<u64>, error: &RemoteError) -> Result<(), FrameError> {
        self.0.lock().await.send_error(id, error).await
    }

    /// Answers a request: the frame is queued, and goes out with the next flush (the session
    /// flushes before it waits for the next request), or at once if much is queued. Replies to
    /// requests that arrived together so leave in one write. A handler that then waits for its
    /// client must [`SharedWriter::send`] instead, or the client may wait for the reply.
    pub(crate) async fn reply(&self, header: Header, body: &[u8]) -> Result<(), FrameError> {
        self.0.lock().await.queue_reply(header, body).await
    }

    /// [`SharedWriter::reply`] with an error frame.
    pub(crate) async fn reply_error(&self, id: Option<u64>, error: &RemoteError) -> Result<(), FrameError> {
        let mut writer = self.0.lock().await;
        writer.queue_error(id, error)?;
        writer.flush_if_full().await
    }

    /// Writes out whatever replies are queued, unless another task holds the writer: every
    /// holder but a [`SharedWriter::reply`] ends with a flush, which takes the replies along.
    /// So a session never waits here behind a chat feed blocked on a peer that stopped
    /// reading, and goes on reading the requests that will find it too slow.
    pub(crate) async fn flush(&self) -> Result<(), FrameError> {
        match self.0.try_lock() {
            Ok(mut writer) => writer.flush().await,
            Err(_) => Ok(()),
        }
    }

    /// [`FrameWriter::send_header`].
    pub(crate) async fn send_header(&self, header: &Header) -> Result<(), FrameError> {
        self.0.lock().await.send_header(header).await
    }

    /// Exclusive use of the writer until the guard drops.
    pub(crate) async fn lock(&self) -> MutexGuard<'_, FrameWriter> {
        self.0.lock().await
    }
}

fn count(counter: &Option<Counter>, bytes: usize) {
    if let Some(counter) = counter {
        counter.inc_by(bytes as u64);
    }
}

/// Keeps one large transfer from pinning its buffer for the rest of the connection's life.
fn release_if_large(buf: &mut BytesMut) {
    if buf.capacity() > 2 * WRITE_HIGH_WATER + 2 * record::MAX_RECORD {
        *buf = BytesMut::new();
    }
}

type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// The read half of the transports sockit accepts. Sockets can wait for readability without
/// a buffer, which keeps 10,000 idle connections cheap.
enum ReadIo {
    Tcp(tcp::OwnedReadHalf),
    Unix(unix::OwnedReadHalf),
    Other(Box<dyn AsyncRead + Send + Unpin>),
}

impl ReadIo {
    async fn ready(&mut self) -> io::Result<()> {
        match self {
            ReadIo::Tcp(read) => read.readable().await,
            ReadIo::Unix(read) => read.readable().await,
            ReadIo::Other(_) => Ok(()),
        }
    }
}

impl AsyncRead for ReadIo {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            ReadIo::Tcp(read) => std::pin::Pin::new(read).poll_read(cx, buf),
            ReadIo::Unix(read) => std::pin::Pin::new(read).poll_read(cx, buf),
            ReadIo::Other(read) => std::pin::Pin::new(read).poll_read(cx, buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ErrorCode;

    /// A header over the limit fails that one message, leaves nothing half-written, and the
    /// connection carries the next message intact; the peer can be told why.
    #[tokio::test]
    async fn a_header_too_large_to_send_fails_only_itself() {
        let (near, far) = tokio::io::duplex(1 << 20);
        let limits = Limits::default().with_max_header_len(256);
        let mut sender = Connection::from_io(near, limits.clone());
        let mut receiver = Connection::from_io(far, limits);
        let oversized = Header::new("chat_event").with("members", "x".repeat(300));
        let error = sender.send(oversized, b"").await.unwrap_err();
        assert!(error.is_unsent(), "{error}");
        let refusal = error
            .to_remote()
            .expect("an unsent message has an answer for the peer");
        assert_eq!(refusal.code, ErrorCode::HeaderTooLarge);
        sender
            .send(Header::new("echo").with_id(Some(2)), b"ok")
            .await
            .unwrap();
        let message = receiver.read_message().await.unwrap().unwrap();
        assert_eq!((message.header.cmd(), message.header.id()), ("echo", Some(2)));
        assert_eq!(&message.body[..], b"ok");
    }

    /// Many messages queued at once fill records back to back, headers and bodies crossing
    /// record boundaries, and arrive whole and in order; a body larger than a record too.
    #[tokio::test]
    async fn encrypted_messages_cross_record_boundaries_intact() {
        let (near, far) = tokio::io::duplex(8 << 20);
        let (initiator, responder) = super::super::record::tests::handshake();
        let mut sender = Connection::from_io(near, Limits::default());
        let mut receiver = Connection::from_io(far, Limits::default());
        sender.encrypt(initiator).unwrap();
        receiver.encrypt(responder).unwrap();
        let body = |i: usize| vec![i as u8; 997 + i % 7];
        for i in 0..300 {
            sender
                .writer
                .queue(Header::new("echo").with_id(Some(i as u64)), &body(i))
                .unwrap();
        }
        sender.send(Header::new("big"), &[9; 200_000]).await.unwrap();
        for i in 0..300 {
            let message = receiver.read_message().await.unwrap().unwrap();
            assert_eq!(message.header.id(), Some(i as u64));
            assert_eq!(&message.body[..], &body(i)[..]);
        }
        let big = receiver.read_message().await.unwrap().unwrap();
        assert_eq!((big.header.cmd(), big.body.len()), ("big", 200_000));
        assert!(big.body.iter().all(|&b| b == 9));
    }

    #[test]
    fn other_frame_errors_are_not_unsent() {
        let error = FrameError::HeaderTooLarge {
            len: 1 << 20,
            max: 65536,
        };
        assert!(!error.is_unsent());
    }
}
