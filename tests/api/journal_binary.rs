//! The journal's promises, tested on the built binary the way they matter:
//! SIGKILL under load, damaged files, a second receiver, a closed or stuck stdout.

use crate::binary::{BINARY, RunningBinary, post_to, stats_of};
use crate::helpers::{COMMAND_PATH, packet, wait_until};
use serde_json::Value;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::process::Command;

/// 8 clients posting messages with unique serverMsgIDs until `stop` or until
/// the receiver stops answering; each returns the ids answered 200.
pub fn load(
    address: SocketAddr,
    prefix: &'static str,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    (0..8)
        .map(|client_index| {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let client = crate::helpers::http_client();
                let mut answered_200 = Vec::new();
                for index in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let server_msg_id = format!("{prefix}-c{client_index}-{index}");
                    let mut body = packet(&format!("user-{client_index}"), "bob", 101);
                    body["serverMsgID"] = server_msg_id.clone().into();
                    let sent = client
                        .post(format!("http://{address}{COMMAND_PATH}"))
                        .header("operationID", "op-load")
                        .body(body.to_string())
                        .send()
                        .await;
                    match sent {
                        Ok(response) if response.status() == 200 => answered_200.push(server_msg_id),
                        // The process stopped (or died) mid-request: nothing promised.
                        Ok(_) | Err(_) => break,
                    }
                }
                answered_200
            })
        })
        .collect()
}

fn logged_ids(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .filter(|line| line["target"] == "message")
        .map(|line| line["serverMsgID"].as_str().unwrap().to_owned())
        .collect()
}

/// `/stats` once every sink has caught up with the journal.
pub(crate) async fn caught_up(address: SocketAddr) -> Value {
    wait_until(Duration::from_secs(60), async || {
        let stats = stats_of(address).await;
        let sinks = stats["sinks"].as_object().unwrap();
        if sinks.values().all(|sink| sink["lag_records"] == 0) {
            Ok(stats)
        } else {
            Err(format!("the sinks never caught up: {}", stats["sinks"]))
        }
    })
    .await
}

async fn sigkill_under_load_then_restart(sync: &str) {
    let workdir = tempfile::tempdir().unwrap();
    let env = [("OPENIM_CALLBACK__JOURNAL__SYNC", sync)];
    let mut first = RunningBinary::start(workdir.path(), &env).await;
    let stop = Arc::new(AtomicBool::new(false));
    let clients = load(first.address, "kill", Arc::clone(&stop));
    // Kill it in the middle of the load, once a good part of it is accepted.
    crate::binary::wait_for_accepted(first.address, 300).await;
    first.child.start_kill().unwrap(); // SIGKILL: no drain, no final save
    let _ = first.child.wait().await;
    stop.store(true, Ordering::Relaxed);
    let mut answered = HashSet::new();
    for client in clients {
        answered.extend(client.await.unwrap());
    }
    let first_lines = first.lines.await.unwrap();
    assert!(answered.len() >= 300, "the load ran: {} answered 200", answered.len());

    let mut second = RunningBinary::start(workdir.path(), &env).await;
    let stats = caught_up(second.address).await;
    assert_eq!(second.terminate().await.code(), Some(0));
    let second_lines = second.lines.await.unwrap();

    let mut logged: Vec<String> = logged_ids(&first_lines);
    logged.extend(logged_ids(&second_lines));
    let logged_once: HashSet<String> = logged.iter().cloned().collect();
    let lost: Vec<_> = answered.difference(&logged_once).collect();
    assert!(lost.is_empty(), "answered 200 but in neither run's log: {lost:?}");
    // In the journal: every 200, plus at most the 8 requests the kill cut off
    // between their append and their answer.
    let journaled = stats["journal"]["last_seq"].as_u64().unwrap();
    assert_eq!(logged_once.len() as u64, journaled, "the log holds each journal record");
    assert!(
        journaled >= answered.len() as u64 && journaled <= answered.len() as u64 + 8,
        "{journaled} vs {}",
        answered.len()
    );
    assert_eq!(
        stats["messages"]["total"].as_u64(),
        Some(journaled),
        "stats count each journal record exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_message_answered_200_with_sync_os() {
    sigkill_under_load_then_restart("os").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_message_answered_200_with_sync_always() {
    sigkill_under_load_then_restart("always").await;
}

/// Offsets of the records in a segment file (each frame: u32 length, u32 CRC, payload).
fn record_offsets(segment: &Path) -> Vec<usize> {
    let bytes = std::fs::read(segment).unwrap();
    let mut offsets = Vec::new();
    let mut offset = 0;
    while offset + 8 <= bytes.len() {
        offsets.push(offset);
        offset += 8 + u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap()) as usize;
    }
    offsets
}

fn only_segment(journal: &Path) -> PathBuf {
    let segments: Vec<PathBuf> = std::fs::read_dir(journal)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "seg"))
        .collect();
    assert_eq!(segments.len(), 1, "{segments:?}");
    segments.into_iter().next().unwrap()
}

#[tokio::test]
async fn a_torn_tail_and_a_damaged_record_are_reported_and_every_other_record_is_delivered() {
    let workdir = tempfile::tempdir().unwrap();
    let mut first = RunningBinary::start(workdir.path(), &[]).await;
    for index in 0..20 {
        post_to(first.address, &format!("user-{index}")).await;
    }
    assert_eq!(first.terminate().await.code(), Some(0));
    // Damage: a flipped byte inside record 10, and record 20 cut in half as a crash mid-write would.
    let journal = workdir.path().join("data/journal");
    let segment = only_segment(&journal);
    let offsets = record_offsets(&segment);
    assert_eq!(offsets.len(), 20);
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[offsets[9] + 30] ^= 0x01;
    let torn_at = offsets[19] + (bytes.len() - offsets[19]) / 2;
    bytes.truncate(torn_at);
    std::fs::write(&segment, &bytes).unwrap();
    // Forget every sink's position, so they read the whole journal again.
    std::fs::remove_dir_all(journal.join("cursors")).unwrap();
    std::fs::remove_file(workdir.path().join("data/stats.snapshot")).unwrap();

    let mut second = RunningBinary::start(workdir.path(), &[]).await;
    let stats = caught_up(second.address).await;
    assert_eq!(stats["messages"]["total"], 18, "records 1-9 and 11-19");
    assert_eq!(stats["sinks"]["log"]["handled"], 18);
    post_to(second.address, "after").await;
    let stats = caught_up(second.address).await;
    assert_eq!(stats["journal"]["last_seq"], 20, "the torn record's number is used again");
    assert_eq!(second.terminate().await.code(), Some(0));
    let lines = second.lines.await.unwrap();
    let torn = lines
        .iter()
        .find(|line| line["level"] == "WARN" && line["message"].as_str().unwrap().contains("torn"));
    let torn = torn.expect("the torn tail is reported at WARN");
    assert_eq!(torn["offset"], offsets[19] as u64);
    let damaged = lines
        .iter()
        .find(|line| line["level"] == "ERROR" && line["message"].as_str().unwrap().contains("damaged"));
    let damaged = damaged.expect("the damaged record is reported at ERROR");
    assert_eq!(damaged["offset"], offsets[9] as u64);
    assert!(damaged["segment"].as_str().unwrap().ends_with(".seg"), "{damaged}");
    let senders: Vec<String> = lines
        .iter()
        .filter(|line| line["target"] == "message")
        .map(|line| line["sendID"].as_str().unwrap().to_owned())
        .collect();
    let mut expected: Vec<String> =
        (0..19).filter(|index| *index != 9).map(|index| format!("user-{index}")).collect();
    expected.push("after".to_owned());
    assert_eq!(senders, expected);
}

#[tokio::test]
async fn a_second_receiver_on_the_same_journal_or_snapshot_refuses_to_start_and_the_first_is_unharmed() {
    let workdir = tempfile::tempdir().unwrap();
    let mut first = RunningBinary::start(workdir.path(), &[]).await;
    let second = crate::binary::receiver_command(workdir.path()).output().await.unwrap();
    assert_eq!(second.status.code(), Some(2), "a start-up error");
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(said.contains("data/journal is in use by another receiver"), "{said}");
    // Another journal, the same stats snapshot: refused too, naming the snapshot.
    let same_snapshot = crate::binary::receiver_command(workdir.path())
        .env("OPENIM_CALLBACK__JOURNAL__DIR", "other-journal")
        .output()
        .await
        .unwrap();
    assert_eq!(same_snapshot.status.code(), Some(2));
    let said = String::from_utf8_lossy(&same_snapshot.stderr);
    assert!(said.contains("stats snapshot data/stats.snapshot is in use by another receiver"), "{said}");
    post_to(first.address, "alice").await;
    assert_eq!(caught_up(first.address).await["messages"]["total"], 1);
    assert_eq!(first.terminate().await.code(), Some(0));
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// The binary, listening on `address`, with stdout as the caller wants it.
fn spawn_at(workdir: &Path, address: SocketAddr, stdout: Stdio) -> tokio::process::Child {
    Command::new(BINARY)
        .current_dir(workdir)
        .env_clear()
        .env("OPENIM_CALLBACK__SERVER__LISTEN", address.to_string())
        .env("OPENIM_CALLBACK__TELEMETRY__FORMAT", "json")
        .env("OPENIM_CALLBACK__SERVER__SHUTDOWN_TIMEOUT", "1s")
        .stdout(stdout)
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn wait_until_serving(address: SocketAddr) {
    wait_until(Duration::from_secs(60), async || {
        match crate::helpers::http_get(format!("http://{address}/healthz")).await {
            Ok(_) => Ok(()),
            Err(error) => Err(format!("the receiver never served on {address}: {error}")),
        }
    })
    .await
}

#[tokio::test]
async fn a_closed_stdout_is_a_failing_log_sink_not_ready_and_a_non_zero_exit() {
    let workdir = tempfile::tempdir().unwrap();
    let address = free_port();
    let mut child = spawn_at(workdir.path(), address, Stdio::piped());
    drop(child.stdout.take()); // `receiver | true`: nobody reads, the pipe is closed
    wait_until_serving(address).await;
    for index in 0..3 {
        post_to(address, &format!("user-{index}")).await;
    }
    let ready = wait_until(Duration::from_secs(60), async || {
        let answer = crate::helpers::http_get(format!("http://{address}/readyz")).await.unwrap();
        match answer.status().as_u16() {
            503 => Ok(answer.json::<Value>().await.unwrap()),
            status => Err(format!("/readyz still answers {status}")),
        }
    })
    .await;
    assert_eq!(ready["errCode"], 5032);
    assert!(ready["errMsg"].as_str().unwrap().contains("sink log is failing"), "{ready}");
    let stats = stats_of(address).await;
    let log = &stats["sinks"]["log"];
    assert_eq!(log["state"], "retrying");
    assert!(log["retries"].as_u64().unwrap() >= 1, "{log}");
    assert_eq!(log["handled"], 0, "nothing counted as written");
    assert!(log["last_error"].as_str().unwrap().contains("Broken pipe"), "{log}");
    assert_eq!(stats["messages"]["total"], 3, "the stats sink is not affected");

    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().await.unwrap().success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(1), "records left unwritten: a non-zero exit");
}

#[tokio::test]
async fn a_stuck_stdout_does_not_keep_the_process_past_its_shutdown_timeout() {
    let workdir = tempfile::tempdir().unwrap();
    let address = free_port();
    // Piped and never read: once the pipe's buffer is full, every write blocks.
    let mut child = spawn_at(workdir.path(), address, Stdio::piped());
    wait_until_serving(address).await;
    let client = crate::helpers::http_client();
    for index in 0..100 {
        let mut body = packet(&format!("user-{index}"), "bob", 101);
        body["content"] = "y".repeat(4096).into();
        let answer = client
            .post(format!("http://{address}{COMMAND_PATH}"))
            .header("operationID", "op-stuck")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "accepted although the log sink is stuck");
    }
    let stats = caught_up_except_log(address).await;
    assert_eq!(stats["messages"]["total"], 100);
    assert!(
        stats["sinks"]["log"]["lag_records"].as_u64().unwrap() > 0,
        "the log sink is stuck: {}",
        stats["sinks"]
    );
    let pid = child.id().unwrap().to_string();
    let signalled = std::time::Instant::now();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().await.unwrap().success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "exited near its 1 s timeout: {:?}",
        signalled.elapsed()
    );
    // The records it could not write are in the journal for the next start.
    let cursor = std::fs::read_to_string(workdir.path().join("data/journal/cursors/log")).unwrap_or_default();
    let saved: u64 = cursor.trim().parse().unwrap_or(1);
    assert!(saved <= 100, "the log cursor stops before the unwritten records: {cursor:?}");
}

async fn caught_up_except_log(address: SocketAddr) -> Value {
    wait_until(Duration::from_secs(60), async || {
        let stats = stats_of(address).await;
        if stats["sinks"]["stats"]["lag_records"] == 0 {
            Ok(stats)
        } else {
            Err(format!("the stats sink never caught up: {}", stats["sinks"]["stats"]))
        }
    })
    .await
}
