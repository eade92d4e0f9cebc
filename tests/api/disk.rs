//! The disk under the journal, through the built binary: full to the last byte,
//! and cut back below saved positions (the state a power loss leaves).

use crate::binary::{RunningBinary, stats_of};
use crate::forward::Downstream;
use crate::helpers::{AFTER_AN_OUTAGE, COMMAND_PATH, TcpProxy, packet, skip, wait_until};
use serde_json::Value;
use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn logged_ids(lines: &[Value]) -> Vec<String> {
    let messages = lines.iter().filter(|line| line["target"] == "message");
    messages.map(|line| line["serverMsgID"].as_str().unwrap().to_owned()).collect()
}

/// One HTTP client for the whole test binary (making one is far slower than a request).
fn client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(crate::helpers::http_client)
}

async fn post(address: SocketAddr, server_msg_id: &str, content_bytes: usize) -> Value {
    let mut body = packet("alice", "bob", 101);
    body["serverMsgID"] = server_msg_id.into();
    body["content"] = "x".repeat(content_bytes).into();
    let answer = client()
        .post(format!("http://{address}{COMMAND_PATH}"))
        .header("operationID", "op-disk")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    let mut envelope: Value = answer.json().await.unwrap();
    envelope["status"] = status.into();
    envelope
}

async fn readiness(address: SocketAddr) -> u16 {
    client().get(format!("http://{address}/readyz")).send().await.unwrap().status().as_u16()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "seg"))
        .collect();
    found.sort();
    found
}

#[tokio::test]
async fn a_journal_cut_back_below_saved_positions_gives_no_sequence_number_twice() {
    let workdir = tempfile::tempdir().unwrap();
    let mut first = RunningBinary::start(workdir.path(), &[]).await;
    for index in 0..20 {
        assert_eq!(post(first.address, &format!("before-{index}"), 10).await["status"], 200);
    }
    assert_eq!(first.terminate().await.code(), Some(0));
    // A power loss with sync = "os": the positions (saved at 21) reached the disk, the
    // journal's last records did not. Cut the segment back to about half.
    let journal = workdir.path().join("data/journal");
    let segment = segments(&journal).pop().unwrap();
    let length = std::fs::metadata(&segment).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&segment).unwrap().set_len(length / 2).unwrap();

    let mut second = RunningBinary::start(workdir.path(), &[]).await;
    for index in 0..5 {
        assert_eq!(post(second.address, &format!("after-{index}"), 10).await["status"], 200);
    }
    let stats = wait_until(Duration::from_secs(60), async || {
        let stats = stats_of(second.address).await;
        let caught_up = stats["sinks"].as_object().unwrap().values().all(|sink| sink["lag_records"] == 0);
        if caught_up { Ok(stats) } else { Err(format!("behind: {}", stats["sinks"])) }
    })
    .await;
    assert_eq!(second.terminate().await.code(), Some(0));
    let logged = logged_ids(&second.lines.await.unwrap());
    let expected: Vec<String> = (0..5).map(|index| format!("after-{index}")).collect();
    assert_eq!(logged, expected, "the new messages, each once, and nothing of the first run again");
    assert_eq!(stats["messages"]["total"], 25, "20 counted before, 5 new: none twice, none dropped");
    assert!(
        stats["journal"]["last_seq"].as_u64() >= Some(25),
        "new records numbered past the saved positions"
    );
}

/// A tmpfs of `megabytes`, mounted for the test's life (it needs root, as CI has).
pub(crate) struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    pub(crate) fn mount(megabytes: u32) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={megabytes}m"), "tmpfs"])
            .arg(dir.path())
            .output();
        match mounted {
            Ok(output) if output.status.success() => Some(SmallDisk { dir }),
            Ok(output) => {
                skip(&format!(
                    "cannot mount a tmpfs (root is needed): {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                ));
                None
            }
            Err(error) => {
                skip(&format!("cannot run mount: {error}"));
                None
            }
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Takes every byte still free on the disk, as another program's file would.
    fn fill_to_the_last_byte(&self) {
        let mut filler = std::fs::File::create(self.path().join("filler")).unwrap();
        for chunk in [65536, 4096, 1] {
            let bytes = vec![0u8; chunk];
            while filler.write_all(&bytes).is_ok() {}
        }
        let _ = filler.sync_all();
    }

    fn free_bytes(&self) -> u64 {
        let stat = rustix::fs::statvfs(self.path()).unwrap();
        stat.f_bavail * stat.f_frsize
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_full_to_the_last_byte_is_reported_and_recovered_from() {
    let Some(disk) = SmallDisk::mount(24) else { return };
    let downstream = Downstream::start(0).await;
    let target = downstream.url.trim_start_matches("http://").trim_end_matches("/hook").to_owned();
    let proxy = TcpProxy::start(&target).await;
    proxy.cut(); // the relay target is down: its sink holds every segment
    let workdir = tempfile::tempdir().unwrap();
    let on_disk = |name: &str| disk.path().join(name).to_str().unwrap().to_owned();
    let (journal, snapshot) = (on_disk("journal"), on_disk("stats.snapshot"));
    let relay = format!("http://{}/hook", proxy.address);
    let env = [
        ("OPENIM_CALLBACK__JOURNAL__DIR", journal.as_str()),
        ("OPENIM_CALLBACK__STATS__SNAPSHOT_PATH", snapshot.as_str()),
        ("OPENIM_CALLBACK__STATS__SNAPSHOT_INTERVAL", "200ms"),
        ("OPENIM_CALLBACK__JOURNAL__SEGMENT_BYTES", "1MiB"),
        ("OPENIM_CALLBACK__JOURNAL__RESERVE_BYTES", "2MiB"),
        ("OPENIM_CALLBACK__SINKS__LOG__INCLUDE_CONTENT", "false"),
        ("OPENIM_CALLBACK__SINKS__FORWARD__T__URL", relay.as_str()),
        ("OPENIM_CALLBACK__SINKS__FORWARD__T__CONCURRENCY", "1"),
    ];
    let mut binary = RunningBinary::start(workdir.path(), &env).await;
    let address = binary.address;
    let mut answered = HashSet::new();
    let mut refused = None;
    for index in 0..4000 {
        let id = format!("fill-{index}");
        let answer = post(address, &id, 16 * 1024).await;
        if answer["status"] == 200 {
            answered.insert(id);
        } else {
            refused = Some(answer);
            break;
        }
    }
    let refused = refused.expect("the disk filled up");
    assert_eq!(
        (refused["status"].as_u64(), refused["errCode"].as_u64()),
        (Some(503), Some(5034)),
        "{refused}"
    );
    assert_eq!(readiness(address).await, 503, "a journal that cannot take writes is not ready");
    let metrics = crate::binary::metrics_of(address).await;
    assert!(metrics.contains("\nopenim_callback_journal_writable 0\n"), "for the alert");
    disk.fill_to_the_last_byte();
    assert_eq!(disk.free_bytes(), 0);
    assert_eq!(post(address, "while-full", 10).await["status"], 503);

    // The target comes back: the relay catches up, saves its position in place (no free byte
    // needed), segments are deleted, and the receiver is ready again by itself.
    proxy.restore();
    wait_until(AFTER_AN_OUTAGE, async || {
        let ready = readiness(address).await;
        if ready == 200 {
            Ok(())
        } else {
            Err(format!("/readyz {ready}: {}", stats_of(address).await["sinks"]))
        }
    })
    .await;
    for index in 0..10 {
        let id = format!("after-{index}");
        assert_eq!(post(address, &id, 16 * 1024).await["status"], 200);
        answered.insert(id);
    }
    let report = wait_until(AFTER_AN_OUTAGE, async || {
        let report = stats_of(address).await["sinks"]["forward.t"].clone();
        if report["lag_records"] == 0 { Ok(report) } else { Err(format!("relay behind: {report}")) }
    })
    .await;
    let relayed: HashSet<String> = downstream.keys().into_iter().collect();
    assert_eq!(relayed, answered, "every message answered 200 reached the target");
    assert_eq!((report["failed"].as_u64(), report["damaged"].as_u64()), (Some(0), Some(0)), "{report}");
    assert_eq!(binary.terminate().await.code(), Some(0));
}

/// A segment is allocated ahead only where that leaves the disk at least as much free beside
/// it: room the journal took ahead must never be what fills the disk for the files beside it.
#[tokio::test]
async fn a_segment_is_allocated_ahead_only_where_the_disk_keeps_as_much_free() {
    let Some(disk) = SmallDisk::mount(24) else { return };
    let live_file_len = |journal: &str, segment_bytes: &str| {
        let dir = disk.path().join(journal);
        let settings = crate::helpers::settings(&[
            ("JOURNAL__DIR", dir.to_str().unwrap()),
            ("JOURNAL__SEGMENT_BYTES", segment_bytes),
            ("JOURNAL__RESERVE_BYTES", "0"),
        ]);
        let journal = openim_callback_receiver::MessageJournal::open(&settings.journal).unwrap();
        let (_, live) = openim_callback_receiver::journal::segment::list(&dir).unwrap().pop().unwrap();
        let len = std::fs::metadata(live).unwrap().len();
        journal.close();
        len
    };
    assert_eq!(live_file_len("small", "1MiB"), 1 << 20, "1 MiB of 24 free: allocated ahead");
    assert_eq!(live_file_len("large", "16MiB"), 0, "16 MiB of 23 free: grows as written");
}

/// Copies the directory tree at `from` into `to`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[tokio::test]
async fn a_journal_the_previous_release_wrote_is_read_and_upgraded_in_place() {
    let workdir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/previous-release");
    copy_tree(&fixture.join("data"), &workdir.path().join("data"));
    let cursor = workdir.path().join("data/journal/cursors/log");
    assert_eq!(std::fs::read_to_string(&cursor).unwrap().trim(), "4", "the old text cursor");

    let mut binary = RunningBinary::start(workdir.path(), &[]).await;
    assert_eq!(post(binary.address, "after-upgrade", 10).await["status"], 200);
    let stats = wait_until(Duration::from_secs(60), async || {
        let stats = stats_of(binary.address).await;
        let caught_up = stats["sinks"].as_object().unwrap().values().all(|sink| sink["lag_records"] == 0);
        if caught_up && stats["journal"]["last_seq"] == 6 { Ok(stats) } else { Err(format!("{stats}")) }
    })
    .await;
    assert_eq!(binary.terminate().await.code(), Some(0));
    let logged = logged_ids(&binary.lines.await.unwrap());
    assert_eq!(logged, ["fixture-4", "fixture-5", "after-upgrade"], "the unread records, then the new one");
    assert_eq!(stats["messages"]["total"], 6, "the snapshot's five, and the new one");
    assert_eq!(std::fs::metadata(&cursor).unwrap().len(), 64, "rewritten in the new, fixed-size form");
}

#[tokio::test]
async fn a_journal_from_before_callback_kinds_is_read_and_goes_on_with_groups_and_revokes() {
    let workdir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/before-callback-kinds");
    copy_tree(&fixture.join("data"), &workdir.path().join("data"));

    let mut binary = RunningBinary::start(workdir.path(), &[]).await;
    let sample =
        |name: &str| std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("samples").join(name)).unwrap();
    for (command, body) in [
        ("callbackAfterSendGroupMsgCommand", sample("group.json")),
        ("callbackBeforeAfterMsgCommand", sample("revoke.json")),
    ] {
        let answer = client()
            .post(format!("http://{}/callbackExample/{command}", binary.address))
            .header("operationID", "op-upgrade")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    let stats = wait_until(Duration::from_secs(60), async || {
        let stats = stats_of(binary.address).await;
        let caught_up = stats["sinks"].as_object().unwrap().values().all(|sink| sink["lag_records"] == 0);
        if caught_up && stats["journal"]["last_seq"] == 7 { Ok(stats) } else { Err(format!("{stats}")) }
    })
    .await;
    assert_eq!(binary.terminate().await.code(), Some(0));
    let lines = binary.lines.await.unwrap();
    let records: Vec<&Value> = lines.iter().filter(|line| line["target"] == "message").collect();
    let commands: Vec<(&str, &str)> = records
        .iter()
        .map(|record| {
            (record["callbackCommand"].as_str().unwrap(), record["serverMsgID"].as_str().unwrap_or(""))
        })
        .collect();
    assert_eq!(
        commands,
        [
            ("callbackAfterSendSingleMsgCommand", "fixture-4"),
            ("callbackAfterSendSingleMsgCommand", "fixture-5"),
            ("callbackAfterSendGroupMsgCommand", "5e0c2a9b7d1f4e3a8b6c0d2e4f6a8b1c"),
            ("callbackBeforeAfterMsgCommand", ""),
        ],
        "the old records unread by the log, as single chats, then the new ones"
    );
    assert_eq!(stats["messages"]["total"], 6, "the snapshot's five, and the group's message");
    assert_eq!((stats["groups"].as_u64(), stats["revoked"].as_u64()), (Some(1), Some(1)), "{stats}");
}

/// Rows in the SQLite archive at `url`.
async fn archived(url: &str) -> i64 {
    let pool = sqlx::SqlitePool::connect(url).await.unwrap();
    sqlx::query_scalar("SELECT COUNT(*) FROM openim_messages").fetch_one(&pool).await.unwrap()
}

#[tokio::test]
async fn the_sqlite_archive_stops_writing_below_its_free_space_floor_and_resumes_by_itself() {
    let Some(disk) = SmallDisk::mount(24) else { return };
    let url = format!("sqlite://{}/archive.sqlite3", disk.path().display());
    let receiver = crate::helpers::TestReceiver::start_with(
        crate::helpers::settings(&[("SINKS__SQL__URL", &url), ("SINKS__SQL__MIN_FREE_BYTES", "12MiB")]),
        |_| {},
    )
    .await;
    receiver.post_packet("op-room", &crate::helpers::packet("alice", "bob", 101)).await.assert_accepted();
    receiver.caught_up("sql", 1).await;
    // Another program takes the disk down to about 8 MiB free.
    std::fs::write(disk.path().join("other-program"), vec![0u8; 16 * 1024 * 1024]).unwrap();
    for index in 0..3 {
        let packet = crate::helpers::packet(&format!("user-{index}"), "bob", 101);
        receiver.post_packet(&format!("op-low-{index}"), &packet).await.assert_accepted();
    }
    let report = receiver
        .sink_report("sql", |report| {
            report["state"] == "degraded"
                && report["last_error"]
                    .as_str()
                    .is_some_and(|error| error.contains("sinks.sql.min_free_bytes"))
        })
        .await;
    assert_eq!(report["lag_records"], 3, "{report}");
    assert_eq!(archived(&url).await, 1, "nothing written below the floor");
    let ready = receiver.client.get(receiver.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "callbacks go on: the journal holds the messages");
    std::fs::remove_file(disk.path().join("other-program")).unwrap();
    let report = receiver.caught_up("sql", 4).await;
    assert_eq!(report["state"], "running", "{report}");
    assert_eq!(archived(&url).await, 4);
    assert!(receiver.stop().await.is_clean());
}
