//! The files service's requests, replies and limits (docs/protocol.md, "Files").
//!
//! One type per message, written by [`FileMessage::to_header`] on the sending side and read by
//! [`FileMessage::from_header`] on the receiving one, so that the client and the service cannot
//! spell a field two ways. Paths travel as the text the user typed: the service checks them
//! with [`RootPath`](super::path::RootPath), so a refusal (`bad_path`) comes from the side that
//! owns the root, and the bytes on the wire are what they always were.
//!
//! ```text
//! small file, one round trip (pipelined for trees):
//! client  {"cmd":"put","id":1,"path":"a.txt","size":3,"blake3":H,"body_len":3} + 3 bytes
//! server  {"cmd":"put_ok","id":1,"size":3,"blake3":H}
//! large file, resumable:
//! client  {"cmd":"put","id":2,"path":"big","size":S,"resume":true}
//! server  {"cmd":"put_ready","id":2,"offset":K,"prefix_blake3":h}     K bytes already here
//! client  {"cmd":"put_data","id":2,"offset":K,"body_len":S-K} + bytes   (offset 0 restarts)
//! client  {"cmd":"put_end","id":2,"blake3":H}
//! server  {"cmd":"put_ok","id":2,"size":S,"blake3":H}
//! download (offset K to resume):
//! client  {"cmd":"get","id":3,"path":"big","offset":K}
//! server  {"cmd":"get_data","id":3,"size":S,"offset":K,"mtime":T,"mode":M,"body_len":S-K} + bytes
//! server  {"cmd":"get_end","id":3,"blake3":H}                            hash of the whole file
//! ```

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::wire::{ErrorCode, Header, RemoteError};

/// How a `put` refused with `exists` ends its message: it names the request's field that
/// replaces the file, so any client can word its own fix (the `sockit` command says
/// `--force`).
pub const EXISTS_NOTE: &str = "(a `put` with `force` replaces it)";

/// Files up to this size travel inline in their `put` frame; larger ones are streamed.
pub const INLINE_MAX: u64 = 1024 * 1024;

/// Entries in one `ls` reply, at most: a directory of any size is listed a page at a time.
pub const LIST_PAGE: usize = 1000;

/// The mode bits `-p` carries across, either way: permissions only. A setuid, setgid or
/// sticky bit is never set from the other side's word.
pub const PRESERVED_MODE_BITS: u32 = 0o777;

/// A message whose fields could not be read as its type; answered as `bad_request`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

impl From<BadRequest> for RemoteError {
    fn from(error: BadRequest) -> RemoteError {
        RemoteError::new(ErrorCode::BadRequest, error.0)
    }
}

/// One message of the file protocol: its `cmd` and its fields, which both sides read and
/// write through this one type. Unknown fields are ignored, as the protocol promises, and a
/// missing optional field takes its default.
pub trait FileMessage: Serialize + DeserializeOwned {
    /// The command this message is the request or the answer of.
    const CMD: &'static str;

    /// The message's header, without an id (the caller adds it) or a body length.
    fn to_header(&self) -> Header {
        Header::from_message(Self::CMD, self)
    }

    /// Reads the message from a header whose `cmd` is [`Self::CMD`].
    fn from_header(header: &Header) -> Result<Self, BadRequest> {
        header.parse().map_err(|e| BadRequest(e.to_string()))
    }
}

/// `ls`: one page of a directory's entries, sorted by name; answered by a [`ListPage`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct List {
    /// `""` is the root.
    pub path: String,
    /// The page starts after this name (the previous page's `next`).
    #[serde(default)]
    pub after: String,
    /// Entries wanted, at most [`LIST_PAGE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

impl FileMessage for List {
    const CMD: &'static str = "ls";
}

/// `stat`: one entry, answered by its [`Entry`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    /// Relative to the server's file root, in the syntax of [`super::path`].
    pub path: String,
}

impl FileMessage for Stat {
    const CMD: &'static str = "stat";
}

/// `mkdir`, answered by an empty `mkdir`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Mkdir {
    /// Relative to the server's file root, in the syntax of [`super::path`].
    pub path: String,
    /// Create the missing directories above it too.
    #[serde(default)]
    pub parents: bool,
}

impl FileMessage for Mkdir {
    const CMD: &'static str = "mkdir";
}

/// `rm`, answered by an empty `rm`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Remove {
    /// Relative to the server's file root, in the syntax of [`super::path`].
    pub path: String,
    /// Needed for a directory that is not empty; removes a tree of any depth.
    #[serde(default)]
    pub recursive: bool,
}

impl FileMessage for Remove {
    const CMD: &'static str = "rm";
}

/// `mv`, answered by an empty `mv`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Move {
    /// Relative to the server's file root, in the syntax of [`super::path`].
    pub from: String,
    /// Where it goes, also under the root.
    pub to: String,
    /// Replace an existing `to`.
    #[serde(default)]
    pub force: bool,
}

impl FileMessage for Move {
    const CMD: &'static str = "mv";
}

/// `get`: a file from `offset`, answered by [`GetData`] and its bytes, then [`GetEnd`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Get {
    /// Relative to the server's file root, in the syntax of [`super::path`].
    pub path: String,
    /// Bytes the client already has (its partial download); the hash still covers them.
    #[serde(default)]
    pub offset: u64,
}

impl FileMessage for Get {
    const CMD: &'static str = "get";
}

/// `put`: an upload. With `blake3` the body is the whole file (at most [`INLINE_MAX`]) and the
/// answer is [`PutOk`]; without it the answer is [`PutReady`] and the data follows in
/// [`PutData`] frames, closed by [`PutEnd`]. A `put` needs an id: the later frames and the
/// answers name the upload by it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Put {
    /// Relative to the server's file root, in the syntax of [`super::path`].
    pub path: String,
    /// Bytes of the whole file; the quota is checked against it before any data is taken.
    pub size: u64,
    /// Replace an existing file.
    #[serde(default)]
    pub force: bool,
    /// Permission bits to set (with `-p`; see [`PRESERVED_MODE_BITS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// Modification time to set, in seconds since the Unix epoch (with `-p`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<i64>,
    /// Continue a partial upload of the same path if one is there.
    #[serde(default, skip_serializing_if = "is_false")]
    pub resume: bool,
    /// Present on inline puts (the body is the whole file): the hex BLAKE3 of the whole file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
}

impl FileMessage for Put {
    const CMD: &'static str = "put";
}

impl Put {
    /// Whether a `put` header carries its file inline: such puts are answered in batches, so
    /// the service must know before it reads anything else.
    pub fn is_inline(header: &Header) -> bool {
        header.cmd() == Put::CMD && header.fields().contains_key("blake3")
    }
}

fn is_false(value: &bool) -> bool {
    !value
}

/// `put_data`: the next bytes of a streamed upload (the frame's body), at `offset`; `0`
/// restarts the upload, any other offset must be where the data so far ends.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PutData {
    /// Where this frame's bytes go in the file.
    pub offset: u64,
}

impl FileMessage for PutData {
    const CMD: &'static str = "put_data";

    /// Never refused: an offset that is missing or not a number counts as `0`.
    fn from_header(header: &Header) -> Result<PutData, BadRequest> {
        Ok(PutData {
            offset: header.u64("offset").unwrap_or(0),
        })
    }
}

/// `put_end`: a streamed upload is complete; `blake3` is the hash of the whole file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PutEnd {
    /// Hex BLAKE3 of the whole file, compared with what the server received.
    pub blake3: String,
}

impl FileMessage for PutEnd {
    const CMD: &'static str = "put_end";

    /// Never refused: a hash that is missing or not a string is empty, which matches no data,
    /// so the upload ends in `hash_mismatch` as any wrong hash does.
    fn from_header(header: &Header) -> Result<PutEnd, BadRequest> {
        Ok(PutEnd {
            blake3: header.str("blake3").unwrap_or_default().to_owned(),
        })
    }
}

/// Every request of the files service, read once from a header: the service matches on this
/// and never on command names. The uploads carry their request id, which names them.
#[derive(Clone, Debug, PartialEq)]
pub enum FileRequest {
    /// `ls`.
    List(List),
    /// `stat`.
    Stat(Stat),
    /// `mkdir`.
    Mkdir(Mkdir),
    /// `rm`.
    Remove(Remove),
    /// `mv`.
    Move(Move),
    /// `get`.
    Get(Get),
    /// `put`, with the request id that names the upload.
    Put {
        /// The upload's request id.
        id: u64,
        /// The request.
        put: Put,
    },
    /// `put_data` of the upload `id`.
    PutData {
        /// The upload's request id.
        id: u64,
        /// The request.
        data: PutData,
    },
    /// `put_end` of the upload `id`.
    PutEnd {
        /// The upload's request id.
        id: u64,
        /// The request.
        end: PutEnd,
    },
}

impl FileRequest {
    /// Reads a request. A `put` without an id is refused; a `put_data` or `put_end` without
    /// one names upload 0.
    pub fn from_header(header: &Header) -> Result<FileRequest, BadRequest> {
        let id = header.id().unwrap_or(0);
        Ok(match header.cmd() {
            List::CMD => FileRequest::List(List::from_header(header)?),
            Stat::CMD => FileRequest::Stat(Stat::from_header(header)?),
            Mkdir::CMD => FileRequest::Mkdir(Mkdir::from_header(header)?),
            Remove::CMD => FileRequest::Remove(Remove::from_header(header)?),
            Move::CMD => FileRequest::Move(Move::from_header(header)?),
            Get::CMD => FileRequest::Get(Get::from_header(header)?),
            Put::CMD => {
                let id = header
                    .id()
                    .ok_or_else(|| BadRequest("`put` needs an `id`".into()))?;
                let put = Put::from_header(header)?;
                FileRequest::Put { id, put }
            }
            PutData::CMD => FileRequest::PutData {
                id,
                data: PutData::from_header(header)?,
            },
            PutEnd::CMD => FileRequest::PutEnd {
                id,
                end: PutEnd::from_header(header)?,
            },
            other => return Err(BadRequest(format!("`{other}` is not a files command"))),
        })
    }
}

/// `put_ready`: the answer to a streamed `put`. `offset` bytes of a partial upload are there
/// already, and `prefix_blake3` is their hash, re-read from disk: the client sends from
/// `offset` if its own first bytes hash the same, from 0 otherwise.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PutReady {
    /// Bytes of the partial upload kept; 0 when there is none.
    #[serde(default)]
    pub offset: u64,
    /// Hex BLAKE3 of those bytes.
    #[serde(default)]
    pub prefix_blake3: String,
}

impl FileMessage for PutReady {
    const CMD: &'static str = "put_ready";
}

/// `put_ok`: an upload is complete, verified and in place.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PutOk {
    /// Bytes written.
    #[serde(default)]
    pub size: u64,
    /// Hex BLAKE3 of the file as written, re-read from disk.
    #[serde(default)]
    pub blake3: String,
}

impl FileMessage for PutOk {
    const CMD: &'static str = "put_ok";
}

/// `get_data`: a download starts; `size - offset` bytes follow in the frame's body.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GetData {
    /// The whole file's size.
    #[serde(default)]
    pub size: u64,
    /// Where the bytes in the body start: the request's offset.
    #[serde(default)]
    pub offset: u64,
    /// Modification time, in seconds since the Unix epoch, for `-p` to set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime: Option<i64>,
    /// Permission bits, for `-p` to set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

impl FileMessage for GetData {
    const CMD: &'static str = "get_data";
}

/// `get_end`: the hash of the whole file, the part the client resumed from included.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GetEnd {
    /// Hex BLAKE3 of the whole file.
    #[serde(default)]
    pub blake3: String,
}

impl FileMessage for GetEnd {
    const CMD: &'static str = "get_end";
}

/// One directory entry, as `ls` and `stat` report it: the `stat` reply's fields, and one item
/// of an `ls` page's body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// The name within its directory (for `stat`, the last part of the path).
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Bytes; 0 for a directory.
    pub size: u64,
    /// Seconds since the Unix epoch.
    pub mtime: i64,
    /// Permission bits.
    pub mode: u32,
}

impl FileMessage for Entry {
    const CMD: &'static str = Stat::CMD;
}

/// The answer to `ls`: entries in the body (a JSON array), `more` in the header when the
/// directory holds more, with `next`, the name to send as the next request's `after`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ListPage {
    /// This page's entries, in name order.
    pub entries: Vec<Entry>,
    /// More entries follow this page.
    pub more: bool,
    /// The `after` that asks for the next page, when `more`.
    pub next: Option<String>,
}

impl ListPage {
    /// A page whose cursor, when more follow, is its last entry.
    pub fn new(entries: Vec<Entry>, more: bool) -> ListPage {
        let next = entries.last().filter(|_| more).map(|last| last.name.clone());
        ListPage { entries, more, next }
    }

    /// The reply's header (without its id) and body.
    pub fn to_message(&self) -> Result<(Header, Vec<u8>), serde_json::Error> {
        let body = serde_json::to_vec(&self.entries)?;
        let mut header = Header::new(List::CMD).with("more", self.more);
        if let Some(next) = &self.next {
            header = header.with("next", next.as_str());
        }
        Ok((header, body))
    }

    /// Reads an `ls` reply; a body that is not a list of entries is refused.
    pub fn from_message(header: &Header, body: &[u8]) -> Result<ListPage, BadRequest> {
        let entries = serde_json::from_slice(body).map_err(|e| BadRequest(format!("listing: {e}")))?;
        Ok(ListPage {
            entries,
            more: header.fields().get("more").and_then(|more| more.as_bool()) == Some(true),
            next: header.str("next").map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::json;

    /// The bytes every message had before these types existed, one per line.
    #[test]
    #[rustfmt::skip]
    fn every_message_is_written_as_it_always_was() {
        let (f, h) = (String::from("f"), String::from("H"));
        let inline = Put { path: f.clone(), size: 3, blake3: Some(h.clone()), ..Put::default() };
        let streamed = Put { resume: true, mode: Some(0o644), mtime: Some(-1), blake3: None, ..inline.clone() };
        let cases = [
            (List { path: f.clone(), ..List::default() }.to_header(), r#"{"cmd":"ls","after":"","path":"f"}"#),
            (Stat { path: f.clone() }.to_header(), r#"{"cmd":"stat","path":"f"}"#),
            (Mkdir { path: f.clone(), parents: true }.to_header(), r#"{"cmd":"mkdir","parents":true,"path":"f"}"#),
            (Remove { path: f.clone(), recursive: false }.to_header(), r#"{"cmd":"rm","path":"f","recursive":false}"#),
            (Move { from: f.clone(), to: "g".into(), force: false }.to_header(),
                r#"{"cmd":"mv","force":false,"from":"f","to":"g"}"#),
            (Get { path: f.clone(), offset: 5 }.to_header().with_id(Some(1)), r#"{"cmd":"get","id":1,"offset":5,"path":"f"}"#),
            (inline.to_header(), r#"{"cmd":"put","blake3":"H","force":false,"path":"f","size":3}"#),
            (streamed.to_header(), r#"{"cmd":"put","force":false,"mode":420,"mtime":-1,"path":"f","resume":true,"size":3}"#),
            (PutData { offset: 2 }.to_header().with_body_len(1), r#"{"cmd":"put_data","offset":2,"body_len":1}"#),
            (PutEnd { blake3: h.clone() }.to_header(), r#"{"cmd":"put_end","blake3":"H"}"#),
            (PutReady { offset: 2, prefix_blake3: h.clone() }.to_header(),
                r#"{"cmd":"put_ready","offset":2,"prefix_blake3":"H"}"#),
            (PutOk { size: 3, blake3: h.clone() }.to_header(), r#"{"cmd":"put_ok","blake3":"H","size":3}"#),
            (GetData { size: 3, offset: 1, mtime: Some(7), mode: Some(0o755) }.to_header(),
                r#"{"cmd":"get_data","mode":493,"mtime":7,"offset":1,"size":3}"#),
            (GetEnd { blake3: h }.to_header(), r#"{"cmd":"get_end","blake3":"H"}"#),
        ];
        for (header, expected) in cases {
            assert_eq!(json(&header), expected);
        }
    }

    #[test]
    fn requests_read_back_as_written_and_refuse_wrong_fields() {
        let moved = Move {
            from: "a".into(),
            to: "b".into(),
            force: true,
        };
        let read = FileRequest::from_header(&moved.to_header()).unwrap();
        assert_eq!(read, FileRequest::Move(moved));
        let bad = Header::new("mkdir").with("path", 3);
        let error = FileRequest::from_header(&bad).unwrap_err();
        assert!(error.0.contains("`mkdir` message"), "{error}");
        let anonymous = Put::default().to_header();
        assert_eq!(
            FileRequest::from_header(&anonymous).unwrap_err().0,
            "`put` needs an `id`"
        );
    }

    #[test]
    fn upload_frames_are_never_refused() {
        let data = Header::new("put_data").with_id(Some(4)).with("offset", "x");
        assert_eq!(
            FileRequest::from_header(&data).unwrap(),
            FileRequest::PutData {
                id: 4,
                data: PutData { offset: 0 }
            }
        );
        let end = Header::new("put_end").with_id(Some(4)).with("blake3", 7);
        assert_eq!(
            FileRequest::from_header(&end).unwrap(),
            FileRequest::PutEnd {
                id: 4,
                end: PutEnd::default()
            }
        );
    }

    #[test]
    fn a_list_page_names_its_cursor_only_when_more_follow() {
        let entry = |name: &str| Entry {
            name: name.into(),
            kind: "file".into(),
            size: 1,
            mtime: 0,
            mode: 0o644,
        };
        let page = ListPage::new(vec![entry("a"), entry("b")], true);
        let (header, body) = page.to_message().unwrap();
        assert_eq!(json(&header), r#"{"cmd":"ls","more":true,"next":"b"}"#);
        assert_eq!(ListPage::from_message(&header, &body).unwrap(), page);
        let last = ListPage::new(vec![entry("c")], false);
        assert_eq!(
            json(&last.to_message().unwrap().0),
            r#"{"cmd":"ls","more":false}"#
        );
    }
}
