//! Attacks on the file service: uploads opened by the thousand on one connection (M1), the
//! quota outrun by abandoned and concurrent uploads (M2), and a listing of a huge directory (L7).

use std::path::{Path, PathBuf};
use std::time::Instant;

use sockit::ClientError;
use sockit::wire::{Connection, Header};

use super::super::dial::Reading;
use super::attacker::{Attacker, Held};
use super::link::{burst, call};

/// Bytes per body write of an upload.
const CHUNK: usize = 256 * 1024;

/// A resumable upload's opening request, declaring `size` bytes.
fn put(path: &str, size: u64) -> Header {
    Header::new("put")
        .with("path", path)
        .with("size", size)
        .with("resume", true)
}

/// M1: thousands of `put`s pipelined on one connection, each opening an upload (a descriptor)
/// that is never fed; the server's descriptor peak shows in the phase's figures.
pub async fn pipelined_puts(me: Attacker) -> Held {
    let count = me.arena.scaled(20_000);
    me.add("attempts: puts", count as u64);
    match me.session(0, Reading::Normally).await {
        Ok(conn) => {
            let puts = (0..count).map(|n| put(&format!("hostile-m1-{n}.bin"), 1 << 20));
            let lived = burst(&me, conn, puts).await;
            me.count(if lived {
                "session lived"
            } else {
                "session ended by the server"
            });
        }
        Err(error) => me.count_outcome("session", &Err::<(), _>(error)),
    }
    None
}

/// M2, against the small-quota server: uploads of the whole quota abandoned one byte short,
/// then six uploads of 40 % of it at once. Held if the root never holds more than the quota.
pub async fn quota(me: Attacker) -> Held {
    let Some(target) = &me.arena.quota else {
        return None;
    };
    let (addr, quota) = (target.addr, target.quota);
    let mut most = 0;
    for n in 0..me.arena.scaled(20).max(2) {
        me.count("attempts: abandoned uploads");
        let result = upload(&me, addr, n, &format!("m2-abandoned-{n}"), quota, quota - 1).await;
        me.count_outcome("abandoned upload", &result);
        most = most.max(tree_bytes(&target.root).await);
    }
    let concurrent = (0..6).map(|n| {
        let me = &me;
        async move {
            let name = format!("m2-concurrent-{n}");
            let result = upload(me, addr, 10 + n, &name, quota * 2 / 5, quota * 2 / 5).await;
            me.count_outcome("concurrent upload", &result);
        }
    });
    futures_util::future::join_all(concurrent).await;
    most = most.max(tree_bytes(&target.root).await);
    me.add("most bytes in the root", most);
    me.add("quota", quota);
    Some(most <= quota)
}

/// One upload of `declared` bytes from its own session, of which `sent` go out; it is
/// finished with `put_end` only when all of them did, abandoned otherwise.
async fn upload(
    me: &Attacker,
    server: std::net::SocketAddr,
    lane: usize,
    path: &str,
    declared: u64,
    sent: u64,
) -> Result<(), ClientError> {
    let mut conn = me.session_with(server, lane, Reading::Normally).await?;
    let ready = call(&mut conn, put(path, declared)).await?;
    let data = Header::new("put_data")
        .with_id(ready.header.id())
        .with("offset", 0)
        .with_body_len(declared);
    conn.writer.queue_header(&data)?;
    let chunk = vec![b'm'; CHUNK];
    let mut hasher = blake3::Hasher::new();
    let mut left = sent;
    while left > 0 {
        let piece = &chunk[..CHUNK.min(left as usize)];
        conn.writer.send_body(piece).await?;
        hasher.update(piece);
        left -= piece.len() as u64;
    }
    if sent < declared {
        return Ok(());
    }
    finish(&mut conn, ready.header.id(), &hasher).await
}

async fn finish(conn: &mut Connection, id: Option<u64>, hasher: &blake3::Hasher) -> Result<(), ClientError> {
    let end = Header::new("put_end")
        .with_id(id)
        .with("blake3", hasher.finalize().to_hex().as_str());
    conn.send(end, b"").await?;
    let reply = conn.read_message().await?.ok_or(ClientError::Closed)?;
    match sockit::wire::RemoteError::from_header(&reply.header) {
        Some(error) => Err(ClientError::Remote(error)),
        None => Ok(()),
    }
}

/// The bytes of every file under `root`, partial uploads included.
async fn tree_bytes(root: &Path) -> u64 {
    let root = root.to_owned();
    tokio::task::spawn_blocking(move || {
        let (mut total, mut pending) = (0, vec![root]);
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                match entry.metadata() {
                    Ok(meta) if meta.is_dir() => pending.push(entry.path()),
                    Ok(meta) => total += meta.len(),
                    Err(_) => {}
                }
            }
        }
        total
    })
    .await
    .unwrap_or(0)
}

/// L7: a directory of many empty files (laid out on disk directly: faster than uploading
/// them), listed a few times; each listing's size and time is the figure.
pub async fn big_listing(me: Attacker) -> Held {
    let entries = me.arena.scaled(100_000);
    let dir = me.arena.root.join("hostile-l7");
    if let Err(error) = lay_out(dir, entries).await {
        me.count(&format!("could not lay out the directory: {error}"));
        return None;
    }
    me.add("entries in the directory", entries as u64);
    let Ok(mut conn) = me.session(0, Reading::Normally).await else {
        me.count("session failed");
        return None;
    };
    for _ in 0..5 {
        me.count("attempts: ls");
        let begin = Instant::now();
        let result = call(&mut conn, Header::new("ls").with("path", "hostile-l7")).await;
        if let Ok(reply) = &result {
            me.add("bytes listed (all listings)", reply.body.len() as u64);
            me.add("ms listing (all listings)", begin.elapsed().as_millis() as u64);
        }
        me.count_outcome("ls", &result);
        if result.is_err() {
            break;
        }
    }
    None
}

async fn lay_out(dir: PathBuf, entries: usize) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        for n in 0..entries {
            std::fs::File::create(dir.join(format!("entry-{n:07}")))?;
        }
        Ok(())
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}
