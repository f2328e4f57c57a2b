//! File transfer end to end: the real `sockit put/get/ls/rm/mkdir/mv` against a real server
//! with its own file root, checked byte for byte on disk.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{InProcessServer, file_server, stderr, stdout};
use sockit::Client;
use sockit::auth::{self, AuthMode, SessionKeys};
use sockit::client::TransferOptions;
use sockit::wire::{Connection, ErrorCode, Header, Limits, RemoteError};

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 11) as u8)
        .collect()
}

fn hash(path: &Path) -> String {
    let mut hasher = blake3::Hasher::new();
    std::io::copy(&mut std::fs::File::open(path).unwrap(), &mut hasher).unwrap();
    hasher.finalize().to_hex().to_string()
}

#[test]
fn files_of_every_size_round_trip_byte_exact() {
    let (server, root) = file_server("");
    let local = server.dir.path().join("local");
    std::fs::create_dir(&local).unwrap();
    let mut names = Vec::new();
    for (name, len) in [
        ("empty", 0),
        ("one", 1),
        ("odd", 1_048_577),
        ("inline", 1_048_576),
        ("multi", 5_000_003),
    ] {
        std::fs::write(local.join(name), pattern(len, len as u32)).unwrap();
        names.push(local.join(name).to_str().unwrap().to_owned());
    }
    // A sparse file past 2 GiB, to cross every 32-bit boundary.
    let sparse = local.join("sparse");
    let file = std::fs::File::create(&sparse).unwrap();
    file.set_len((2 << 30) + 7).unwrap();
    drop(file);
    names.push(sparse.to_str().unwrap().to_owned());
    let mut put = vec!["put", &server.addr];
    put.extend(names.iter().map(String::as_str));
    let output = server.cli(&put);
    assert!(output.status.success(), "{}", stderr(&output));
    let back = server.dir.path().join("back");
    std::fs::create_dir(&back).unwrap();
    let mut get = vec![
        "get",
        &server.addr,
        "empty",
        "one",
        "odd",
        "inline",
        "multi",
        "sparse",
        "-o",
    ];
    get.push(back.to_str().unwrap());
    let output = server.cli(&get);
    assert!(output.status.success(), "{}", stderr(&output));
    for name in ["empty", "one", "odd", "inline", "multi", "sparse"] {
        assert_eq!(
            hash(&local.join(name)),
            hash(&root.join(name)),
            "{name} on the server"
        );
        assert_eq!(
            hash(&local.join(name)),
            hash(&back.join(name)),
            "{name} downloaded"
        );
    }
    assert!(
        std::fs::read_dir(&root).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("sockit-part"))
    );
}

#[test]
fn trees_go_both_ways_with_modes_and_times() {
    let (server, root) = file_server("");
    let tree = server.dir.path().join("tree");
    for i in 0..200 {
        let dir = tree.join(format!("d{}", i % 7)).join(format!("e{}", i % 3));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("f{i}.txt")), pattern(i * 37, i as u32)).unwrap();
    }
    let script = tree.join("run.sh");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&script).unwrap().permissions(),
        0o755,
    );
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o750)).unwrap();
    let output = server.cli(&[
        "put",
        "-r",
        "-p",
        &server.addr,
        tree.to_str().unwrap(),
        "--to",
        "up",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let copy = server.dir.path().join("copy");
    let output = server.cli(&[
        "get",
        "-r",
        "-p",
        &server.addr,
        "up/tree",
        "-o",
        copy.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let mut compared = 0;
    for entry in walk(&tree) {
        let relative = entry.strip_prefix(&tree).unwrap();
        assert_eq!(
            std::fs::read(&entry).unwrap(),
            std::fs::read(root.join("up/tree").join(relative)).unwrap()
        );
        assert_eq!(
            std::fs::read(&entry).unwrap(),
            std::fs::read(copy.join("tree").join(relative)).unwrap()
        );
        compared += 1;
    }
    assert_eq!(compared, 201);
    let mode = |p: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions()) & 0o777
    };
    assert_eq!(mode(&root.join("up/tree/run.sh")), 0o750);
    assert_eq!(mode(&copy.join("tree/run.sh")), 0o750);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_path_escapes_the_root() {
    let (server, root) = file_server("");
    let outside = root.parent().unwrap().join("outside.txt");
    std::fs::write(&outside, "secret outside").unwrap();
    std::os::unix::fs::symlink(root.parent().unwrap(), root.join("out")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("link.txt")).unwrap();
    let local = server.dir.path().join("payload");
    std::fs::write(&local, "payload").unwrap();
    let mut client = Client::connect(&server.addr, &server.client_config())
        .await
        .unwrap();
    let attempts = [
        "../x",
        "/etc/passwd",
        "a/../../x",
        "out/outside.txt",
        "link.txt",
        "nul\0name",
        "new\nline",
        "esc\x1b[31m",
        "..",
        "out/../../x",
    ];
    for path in attempts {
        let got = client
            .get_file(
                path,
                &server.dir.path().join("got"),
                TransferOptions::default(),
                &mut |_| {},
            )
            .await;
        let error = got.expect_err(path).to_string();
        assert!(
            !error.contains('\x1b') && !error.contains('\0'),
            "unescaped: {error:?}"
        );
        assert!(!error.contains("secret outside"));
        let put = client
            .put_file(
                &local,
                path,
                TransferOptions {
                    force: true,
                    ..Default::default()
                },
                &mut |_| {},
            )
            .await;
        // A forced put over a symlink replaces the link itself, inside the root.
        assert!(put.is_err() || path == "link.txt", "put to {path:?} was accepted");
        assert!(
            client.list(path).await.is_err() || path == "out/../../x",
            "ls {path:?}"
        );
    }
    let error = client.stat("../x").await.unwrap_err().to_string();
    assert!(error.contains("../x") && error.contains("bad_path"), "{error}");
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "secret outside");
    assert!(
        std::fs::symlink_metadata(root.join("link.txt"))
            .unwrap()
            .is_file()
    );
    assert!(!root.parent().unwrap().join("x").exists());
    // The client refuses unsafe names a server might send.
    for name in ["../x", "a/b", "/abs", "esc\x1b", ""] {
        assert!(sockit::client::safe_local_name(name).is_err(), "{name:?}");
    }
}

#[test]
fn an_interrupted_upload_resumes_and_the_old_version_survives_until_done() {
    let (server, root) = file_server("");
    let local = server.dir.path().join("data.bin");
    std::fs::write(&local, b"version one").unwrap();
    assert!(
        server
            .cli(&["put", &server.addr, local.to_str().unwrap()])
            .status
            .success()
    );
    let v2 = pattern(64 << 20, 2);
    std::fs::write(&local, &v2).unwrap();
    let partial = root.join(".data.bin.sockit-part");
    // Kill the uploader once part of the new version has arrived.
    let mut uploader = common::sockit_command(server.dir.path())
        .args(server.cli_args(&["put", "--force", &server.addr, local.to_str().unwrap()]))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0) < (8 << 20) {
        assert!(Instant::now() < deadline, "the upload never got going");
        assert!(
            uploader.try_wait().unwrap().is_none(),
            "the upload finished before it could be cut"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    uploader.kill().unwrap();
    uploader.wait().unwrap();
    assert_eq!(
        std::fs::read(root.join("data.bin")).unwrap(),
        b"version one",
        "old version intact"
    );
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(kept > 0);
    let output = server.cli(&["put", "--force", &server.addr, local.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("resumed after"), "{}", stderr(&output));
    assert!(
        std::fs::read(root.join("data.bin")).unwrap() == v2,
        "byte-exact after resuming"
    );
    assert!(!partial.exists());
}

#[test]
fn corrupted_partial_data_is_detected_on_resume() {
    let (server, root) = file_server("");
    let local = server.dir.path().join("data.bin");
    let data = pattern(3 << 20, 3);
    std::fs::write(&local, &data).unwrap();
    // A partial upload whose bytes differ from the local file: resuming must not trust it.
    let mut bad = data[..1 << 20].to_vec();
    bad[1000] ^= 0xff;
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join(".data.bin.sockit-part"), &bad).unwrap();
    let output = server.cli(&["put", &server.addr, local.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        !stderr(&output).contains("resumed"),
        "a corrupt partial is not resumed from"
    );
    assert!(std::fs::read(root.join("data.bin")).unwrap() == data);

    // Downloads likewise: a corrupt local partial fails the final check and is discarded.
    let target = server.dir.path().join("down.bin");
    std::fs::write(sockit::client::partial_path(&target), &bad).unwrap();
    let output = server.cli(&["get", &server.addr, "data.bin", "-o", target.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(255));
    assert!(stderr(&output).contains("BLAKE3"), "{}", stderr(&output));
    assert!(!target.exists() && !sockit::client::partial_path(&target).exists());
    let output = server.cli(&["get", &server.addr, "data.bin", "-o", target.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(std::fs::read(&target).unwrap() == data);
}

#[test]
fn quota_and_free_space_are_checked_before_any_byte() {
    let (server, root) = file_server("quota = 1000000");
    let local = server.dir.path().join("big");
    std::fs::write(&local, pattern(2_000_000, 4)).unwrap();
    let output = server.cli(&["put", &server.addr, local.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(255));
    assert!(stderr(&output).contains("quota"), "{}", stderr(&output));
    let sparse = server.dir.path().join("huge");
    std::fs::File::create(&sparse).unwrap().set_len(1 << 43).unwrap();
    let output = server.cli(&["put", &server.addr, sparse.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(255));
    assert!(stderr(&output).contains("free"), "{}", stderr(&output));
    assert!(
        std::fs::read_dir(&root).unwrap().next().is_none(),
        "nothing was written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_filling_up_mid_transfer_is_reported_and_cleaned_up() {
    let mount = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=8m",
            "tmpfs",
            mount.path().to_str().unwrap(),
        ])
        .status()
        .expect("mount runs");
    assert!(status.success(), "this test needs a tmpfs mount (root on Linux)");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mount.path().to_owned());
    let root = mount.path().join("root");
    let server = InProcessServer::start(&format!("root = {:?}", root.to_str().unwrap()));
    let stream = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    let mut conn = Connection::tcp(stream, Limits::default());
    auth::connect(&mut conn, &SessionKeys::new(server.secret(), AuthMode::Noise))
        .await
        .unwrap();
    let size = 6u64 << 20;
    conn.send(
        Header::new("put")
            .with_id(Some(1))
            .with("path", "f")
            .with("size", size),
        b"",
    )
    .await
    .unwrap();
    let ready = conn.read_message().await.unwrap().unwrap();
    assert_eq!(ready.header.cmd(), "put_ready");
    // Someone else fills the disk after the size was accepted.
    std::fs::write(mount.path().join("filler"), vec![7u8; 5 << 20]).unwrap();
    let data = vec![1u8; size as usize];
    conn.send(Header::new("put_data").with_id(Some(1)).with("offset", 0), &data)
        .await
        .unwrap();
    let answer = conn.read_message().await.unwrap().unwrap();
    let error = RemoteError::from_header(&answer.header).expect("an error");
    assert_eq!(error.code, ErrorCode::NoSpace, "{error}");
    conn.send(Header::new("put_end").with_id(Some(1)).with("blake3", "x"), b"")
        .await
        .unwrap();
    let _ = conn.read_message().await;
    drop(conn);
    std::fs::remove_file(mount.path().join("filler")).unwrap();
    assert!(!root.join("f").exists());
    server.assert_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clients_upload_different_files_at_once() {
    let (server, root) = file_server("");
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..20u32 {
        let local = server.dir.path().join(format!("c{n}"));
        std::fs::write(&local, pattern(300_000 + n as usize * 1000, n)).unwrap();
        let (addr, config) = (server.addr.clone(), server.client_config());
        tasks.spawn(async move {
            let mut client = Client::connect(&addr, &config).await.unwrap();
            let remote = format!("c{n}");
            client
                .put_file(&local, &remote, TransferOptions::default(), &mut |_| {})
                .await
                .unwrap();
            local
        });
    }
    while let Some(local) = tasks.join_next().await {
        let local = local.unwrap();
        assert_eq!(
            std::fs::read(&local).unwrap(),
            std::fs::read(root.join(local.file_name().unwrap())).unwrap()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_of_a_file_being_replaced_yields_one_whole_version() {
    let (server, root) = file_server("");
    std::fs::create_dir_all(&root).unwrap();
    let (v1, v2) = (pattern(32 << 20, 1), pattern(32 << 20, 2));
    std::fs::write(root.join("doc"), &v1).unwrap();
    let local_v2 = server.dir.path().join("v2");
    std::fs::write(&local_v2, &v2).unwrap();
    let mut reader = Client::connect(&server.addr, &server.client_config())
        .await
        .unwrap();
    let mut writer = Client::connect(&server.addr, &server.client_config())
        .await
        .unwrap();
    let target = server.dir.path().join("got");
    let (mut quiet_reader, mut quiet_writer) = (|_| {}, |_| {});
    let download = reader.get_file("doc", &target, TransferOptions::default(), &mut quiet_reader);
    let force = TransferOptions {
        force: true,
        ..Default::default()
    };
    let replace = writer.put_file(&local_v2, "doc", force, &mut quiet_writer);
    let (got, put) = tokio::join!(download, replace);
    got.unwrap();
    put.unwrap();
    let got = std::fs::read(&target).unwrap();
    assert!(got == v1 || got == v2, "a mix of versions");
    assert!(std::fs::read(root.join("doc")).unwrap() == v2);
}

#[test]
fn directory_operations_and_overwrite_protection() {
    let (server, root) = file_server("");
    let run = |args: &[&str]| server.cli(args);
    assert!(run(&["mkdir", "-p", &server.addr, "a/b/c"]).status.success());
    let local = server.dir.path().join("f.txt");
    std::fs::write(&local, "one").unwrap();
    assert!(
        run(&["put", &server.addr, local.to_str().unwrap(), "--to", "a/b"])
            .status
            .success()
    );
    let again = run(&["put", &server.addr, local.to_str().unwrap(), "--to", "a/b"]);
    assert_eq!(again.status.code(), Some(255));
    assert!(stderr(&again).contains("--force"), "{}", stderr(&again));
    let listing = stdout(&run(&["ls", &server.addr, "a/b"]));
    assert!(
        listing.contains(" c\n") && listing.contains(" f.txt\n"),
        "{listing}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&run(&["ls", "--json", &server.addr, "a/b"]))).unwrap();
    assert_eq!(json[1]["name"], "f.txt");
    assert_eq!(json[1]["size"], 3);
    assert!(
        run(&["mv", &server.addr, "a/b/f.txt", "a/g.txt"])
            .status
            .success()
    );
    assert_eq!(std::fs::read_to_string(root.join("a/g.txt")).unwrap(), "one");
    let refused = run(&["rm", &server.addr, "a"]);
    assert_eq!(refused.status.code(), Some(255));
    assert!(stderr(&refused).contains("not empty") || stderr(&refused).contains("not_empty"));
    assert!(run(&["rm", "-r", &server.addr, "a"]).status.success());
    assert!(!root.join("a").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_small_puts_are_committed_together_and_answered_in_order() {
    let (server, root) = file_server("");
    let stream = tokio::net::TcpStream::connect(&server.addr).await.unwrap();
    let mut conn = Connection::tcp(stream, Limits::default());
    auth::connect(&mut conn, &SessionKeys::new(server.secret(), AuthMode::Noise))
        .await
        .unwrap();
    let data = b"small file";
    let hash = blake3::hash(data).to_hex().to_string();
    for id in 1..=3u64 {
        let put = Header::new("put")
            .with_id(Some(id))
            .with("path", format!("p{id}"))
            .with("size", data.len())
            .with("blake3", hash.as_str());
        conn.writer.queue(put, data).unwrap();
    }
    let bad = Header::new("put")
        .with_id(Some(4))
        .with("path", "p4")
        .with("size", data.len())
        .with("blake3", "0");
    conn.writer.queue(bad, data).unwrap();
    conn.writer
        .queue(Header::new("echo").with_id(Some(5)), b"between")
        .unwrap();
    conn.writer
        .queue(Header::new("stat").with_id(Some(6)).with("path", "p2"), b"")
        .unwrap();
    conn.writer.flush().await.unwrap();
    let mut answers = Vec::new();
    for _ in 0..6 {
        let message = conn.read_message().await.unwrap().unwrap();
        answers.push((
            message.header.id(),
            message.header.cmd().to_owned(),
            message.header.str("code").map(str::to_owned),
        ));
    }
    let expected = [
        (Some(1), "put_ok".to_owned(), None),
        (Some(2), "put_ok".to_owned(), None),
        (Some(3), "put_ok".to_owned(), None),
        (
            Some(4),
            "error".to_owned(),
            Some(ErrorCode::HashMismatch.as_str().to_owned()),
        ),
        (Some(5), "echo".to_owned(), None),
        (Some(6), "stat".to_owned(), None),
    ];
    assert_eq!(answers, expected);
    for id in 1..=3 {
        assert_eq!(std::fs::read(root.join(format!("p{id}"))).unwrap(), data);
    }
    assert!(!root.join("p4").exists());
}
