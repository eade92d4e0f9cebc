//! The built binary, run the way the container runs it: configured by
//! environment only, from an empty working directory, stopped with SIGTERM.

use crate::helpers::{COMMAND_PATH, sample, wait_until};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};

pub const BINARY: &str = env!("CARGO_BIN_EXE_openim-callback-receiver");

pub fn receiver_command(workdir: &std::path::Path) -> Command {
    let mut command = Command::new(BINARY);
    command
        .current_dir(workdir)
        .env_clear()
        .env("OPENIM_CALLBACK__SERVER__LISTEN", "127.0.0.1:0")
        .env("OPENIM_CALLBACK__TELEMETRY__FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Reads JSON log lines until one satisfies `wanted`.
pub async fn next_line_where(
    lines: &mut Lines<BufReader<ChildStdout>>,
    mut wanted: impl FnMut(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let reading = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let value: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|_| panic!("stdout line is not JSON: {line}"));
            if wanted(&value) {
                return value;
            }
        }
        panic!("stdout ended before the expected line");
    };
    tokio::time::timeout(Duration::from_secs(30), reading).await.expect("the expected log line in time")
}

#[tokio::test]
async fn the_binary_serves_logs_and_stops_cleanly_on_sigterm() {
    let workdir = tempfile::tempdir().unwrap();
    let mut child = receiver_command(workdir.path()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let started = next_line_where(&mut lines, |line| line["message"] == "receiving OpenIM callbacks").await;
    let address: SocketAddr = started["listen"].as_str().unwrap().parse().unwrap();

    let answer = crate::helpers::http_client()
        .post(format!("http://{address}{COMMAND_PATH}"))
        .header("Content-Type", "application/json; charset=utf-8")
        .header("Operationid", "op-binary")
        .body(sample("text.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let record = next_line_where(&mut lines, |line| line["target"] == "message").await;
    assert_eq!(record["operationID"], "op-binary");
    assert_eq!(record["serverMsgID"], "bdb2d2a5c18d4b6a0d4e1e4f2c6d8a11");

    // The container's HEALTHCHECK: the same binary, the same environment.
    let healthy = Command::new(BINARY)
        .arg("healthcheck")
        .env_clear()
        .env("OPENIM_CALLBACK__SERVER__LISTEN", address.to_string())
        .status()
        .await
        .unwrap();
    assert!(healthy.success());

    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().await.unwrap().success());
    let stopped = next_line_where(&mut lines, |line| {
        line["message"].as_str().is_some_and(|m| m.starts_with("stopped"))
    })
    .await;
    assert_eq!(stopped["message"], "stopped cleanly: every accepted message delivered");
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0));
}

/// The threads that serve connections, as the kernel names them (`http-0`, `http-1`, …).
fn connection_threads(pid: u32) -> usize {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("http-"))
        .count()
}

#[tokio::test]
async fn server_worker_threads_sets_the_connection_threads_and_zero_is_one_per_core() {
    let cores = std::thread::available_parallelism().unwrap().get();
    // One thread serving is one serving and one standing by.
    for (setting, expected) in [("1", 2), ("3", 3), ("0", cores.max(2))] {
        let workdir = tempfile::tempdir().unwrap();
        let mut child = receiver_command(workdir.path())
            .env("OPENIM_CALLBACK__SERVER__WORKER_THREADS", setting)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let started =
            next_line_where(&mut lines, |line| line["message"] == "receiving OpenIM callbacks").await;
        let address: SocketAddr = started["listen"].as_str().unwrap().parse().unwrap();
        let answer = crate::helpers::http_client()
            .post(format!("http://{address}{COMMAND_PATH}"))
            .header("Operationid", "op-workers")
            .body(sample("text.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "worker_threads = {setting}");
        assert_eq!(connection_threads(child.id().unwrap()), expected, "worker_threads = {setting}");
    }
}

#[tokio::test]
async fn healthcheck_fails_when_nothing_listens() {
    let free_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let status = Command::new(BINARY)
        .arg("healthcheck")
        .env_clear()
        .env("OPENIM_CALLBACK__SERVER__LISTEN", free_port.to_string())
        .stderr(Stdio::null())
        .status()
        .await
        .unwrap();
    assert_eq!(status.code(), Some(1));
}

#[tokio::test]
async fn a_bad_setting_stops_start_up_with_one_line_naming_the_key() {
    let workdir = tempfile::tempdir().unwrap();
    let output = receiver_command(workdir.path())
        .env("OPENIM_CALLBACK__SERVER__RESPONSE_TIMEOUT", "soon")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("server.response_timeout"), "{stderr}");
}

#[tokio::test]
async fn print_config_shows_the_effective_settings() {
    let workdir = tempfile::tempdir().unwrap();
    let output = receiver_command(workdir.path())
        .env("OPENIM_CALLBACK__SINKS__STATS__BATCH_SIZE", "77")
        .arg("--print-config")
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    let printed: toml::Value = toml::from_str(&String::from_utf8(output.stdout).unwrap()).unwrap();
    assert_eq!(printed["server"]["listen"].as_str(), Some("127.0.0.1:0"));
    assert_eq!(printed["sinks"]["stats"]["batch_size"].as_integer(), Some(77));
    assert_eq!(printed["server"]["response_timeout"].as_str(), Some("3s"));
}

/// A running binary whose stdout is read in the background (a full pipe
/// would stall its log sink), with every log line kept.
pub struct RunningBinary {
    pub child: tokio::process::Child,
    pub address: SocketAddr,
    pub lines: tokio::task::JoinHandle<Vec<serde_json::Value>>,
}

impl RunningBinary {
    pub async fn start(workdir: &std::path::Path, env: &[(&str, &str)]) -> Self {
        let mut command = receiver_command(workdir);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        // Its stderr (a panic's message) shows with the test's own output when the test fails.
        let mut errors = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = errors.next_line().await {
                eprintln!("[receiver's stderr] {line}");
            }
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // Lines before the start line are kept too: start-up reports land there.
        let mut kept = Vec::new();
        let started = next_line_where(&mut lines, |line| {
            kept.push(line.clone());
            line["message"] == "receiving OpenIM callbacks"
        })
        .await;
        let address = started["listen"].as_str().unwrap().parse().unwrap();
        let lines = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                kept.push(serde_json::from_str(&line).unwrap_or(serde_json::Value::Null));
            }
            kept
        });
        RunningBinary { child, address, lines }
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id().unwrap())).unwrap();
        let line = status.lines().find(|line| line.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().unwrap().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().await.unwrap().success());
        tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.unwrap().unwrap()
    }
}

#[tokio::test]
async fn the_hostile_table_leaves_the_binary_healthy_and_its_memory_where_it_was() {
    let workdir = tempfile::tempdir().unwrap();
    let mut binary = RunningBinary::start(workdir.path(), &[]).await;
    let client = crate::helpers::http_client();
    let cases = crate::errors::cases();
    let run_table = || async {
        for case in &cases {
            let answer = crate::errors::send(&client, binary.address, case).await;
            crate::errors::check(case, &answer);
        }
    };
    run_table().await; // first use sizes the allocator's pools
    let settled = binary.rss_kib();
    for _ in 0..3 {
        run_table().await;
    }
    let after = binary.rss_kib();
    let healthz = client.get(format!("http://{}/healthz", binary.address)).send().await.unwrap();
    assert_eq!(healthz.status(), 200);
    assert!(after <= settled + 8 * 1024, "RSS grew from {settled} KiB to {after} KiB over three more tables");
    assert_eq!(binary.terminate().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_message_answered_200() {
    let workdir = tempfile::tempdir().unwrap();
    let mut binary = RunningBinary::start(workdir.path(), &[]).await;
    let address = binary.address;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = crate::journal_binary::load(address, "term", std::sync::Arc::clone(&stop));
    // Stop the process in the middle of the load, once a good part of it is answered.
    crate::binary::wait_for_accepted(address, 200).await;
    let signalled = std::time::Instant::now();
    let status = binary.terminate().await;
    let stopping_took = signalled.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut answered = std::collections::HashSet::new();
    for client in clients {
        answered.extend(client.await.unwrap());
    }
    let lines = binary.lines.await.unwrap();

    assert_eq!(status.code(), Some(0));
    assert!(
        stopping_took < Duration::from_secs(10),
        "exited within server.shutdown_timeout: {stopping_took:?}"
    );
    assert!(answered.len() >= 200, "the load ran: {} messages answered 200", answered.len());
    let logged: std::collections::HashSet<String> = lines
        .iter()
        .filter(|line| line["target"] == "message")
        .map(|line| line["serverMsgID"].as_str().unwrap().to_owned())
        .collect();
    let lost: Vec<_> = answered.difference(&logged).collect();
    assert!(lost.is_empty(), "answered 200 but never logged: {lost:?}");
    assert!(lines.iter().any(|line| line["message"] == "stopped cleanly: every accepted message delivered"));
}

#[tokio::test]
async fn healthcheck_speaks_tls_when_the_receiver_does() {
    let workdir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["receiver.example".to_owned()]).unwrap();
    let (cert, key) = (workdir.path().join("cert.pem"), workdir.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let tls = [
        ("OPENIM_CALLBACK__SERVER__TLS__CERT_PATH", cert.to_str().unwrap()),
        ("OPENIM_CALLBACK__SERVER__TLS__KEY_PATH", key.to_str().unwrap()),
    ];
    let mut binary = RunningBinary::start(workdir.path(), &tls).await;
    assert!(healthcheck(binary.address, &tls).await.success());
    assert_eq!(binary.terminate().await.code(), Some(0));
}

pub async fn post_to(address: SocketAddr, send_id: &str) {
    let answer = crate::helpers::http_client()
        .post(format!("http://{address}{COMMAND_PATH}"))
        .header("operationID", "op-restart")
        .body(crate::helpers::packet(send_id, "bob", 101).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
}

/// Waits (up to 30 s) until the receiver at `address` has accepted `count` callbacks.
pub async fn wait_for_accepted(address: SocketAddr, count: u64) {
    wait_until(Duration::from_secs(60), async || {
        let accepted = stats_of(address).await["requests"]["accepted"].clone();
        if accepted.as_u64() >= Some(count) { Ok(()) } else { Err(format!("{accepted} of {count} accepted")) }
    })
    .await
}

pub async fn stats_of(address: SocketAddr) -> serde_json::Value {
    crate::helpers::http_get(format!("http://{address}/stats")).await.unwrap().json().await.unwrap()
}

/// The Prometheus text the receiver at `address` serves.
pub async fn metrics_of(address: SocketAddr) -> String {
    crate::helpers::http_get(format!("http://{address}/metrics")).await.unwrap().text().await.unwrap()
}

#[tokio::test]
async fn counts_continue_across_a_restart() {
    let workdir = tempfile::tempdir().unwrap();
    let mut first = RunningBinary::start(workdir.path(), &[]).await;
    for sender in ["alice", "carol", "dave"] {
        post_to(first.address, sender).await;
    }
    assert_eq!(first.terminate().await.code(), Some(0));
    assert!(
        workdir.path().join("data/stats.snapshot").is_file(),
        "saved at shutdown, under the working directory"
    );

    let mut second = RunningBinary::start(workdir.path(), &[]).await;
    for sender in ["alice", "erin"] {
        post_to(second.address, sender).await;
    }
    let stats = stats_after(second.address, 5).await;
    assert_eq!(stats["messages"]["total"], 5);
    assert_eq!(stats["messages"]["by_content_type"]["text"], 5);
    assert_eq!(stats["people"]["senders"], 4, "alice is counted once across the restart");
    assert_eq!(stats["people"]["total"], 5);
    assert_eq!(stats["conversations"], 4);
    let metrics = metrics_of(second.address).await;
    assert!(
        metrics.contains("\nopenim_callback_messages_total 5\n"),
        "/metrics continues from the restored counts"
    );
    assert_eq!(second.terminate().await.code(), Some(0));
}

#[tokio::test]
async fn an_unreadable_snapshot_is_moved_aside_and_reported() {
    let workdir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(workdir.path().join("data")).unwrap();
    std::fs::write(workdir.path().join("data/stats.snapshot"), b"not a snapshot").unwrap();
    let mut binary = RunningBinary::start(workdir.path(), &[]).await;
    assert_eq!(stats_of(binary.address).await["messages"]["total"], 0);
    assert_eq!(binary.terminate().await.code(), Some(0));
    let lines = binary.lines.await.unwrap();
    let reported = lines.iter().find(|line| line["level"] == "ERROR").expect("an ERROR line at start-up");
    assert!(reported["message"].as_str().unwrap().contains("moved aside"), "{reported}");
    let moved: Vec<_> = std::fs::read_dir(workdir.path().join("data"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with("stats.snapshot.unreadable-"))
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    let kept = std::fs::read(workdir.path().join("data").join(&moved[0])).unwrap();
    assert_eq!(kept, b"not a snapshot");
}

#[tokio::test]
async fn after_a_crash_the_stats_replay_the_journal_from_their_snapshot_exactly() {
    let workdir = tempfile::tempdir().unwrap();
    let interval = [("OPENIM_CALLBACK__STATS__SNAPSHOT_INTERVAL", "100ms")];
    let mut first = RunningBinary::start(workdir.path(), &interval).await;
    for sender in ["alice", "carol"] {
        post_to(first.address, sender).await;
    }
    // Wait until a periodic snapshot holds both messages (its position says so), then count one more.
    let snapshot = workdir.path().join("data/stats.snapshot");
    wait_until(Duration::from_secs(60), async || match std::fs::read(&snapshot) {
        Ok(bytes) if bytes.get(12..20) == Some(&3u64.to_le_bytes()[..]) => Ok(()),
        _ => Err("no periodic snapshot that includes records 1 and 2".into()),
    })
    .await;
    post_to(first.address, "dave").await;
    first.child.start_kill().unwrap();
    let _ = first.child.wait().await;

    let mut second = RunningBinary::start(workdir.path(), &interval).await;
    let stats = stats_after(second.address, 3).await;
    assert_eq!(stats["messages"]["total"], 3, "snapshot (2) + journal replay (1), nothing twice");
    assert_eq!(stats["people"]["senders"], 3);
    assert_eq!(second.terminate().await.code(), Some(0));
}

/// `/stats` once the stats sink has caught up with the journal and counted at least `total`.
pub async fn stats_after(address: SocketAddr, total: u64) -> serde_json::Value {
    wait_until(Duration::from_secs(60), async || {
        let stats = stats_of(address).await;
        if stats["messages"]["total"].as_u64() >= Some(total) && stats["sinks"]["stats"]["lag_records"] == 0 {
            Ok(stats)
        } else {
            Err(format!("the stats never reached {total} messages: {}", stats["messages"]))
        }
    })
    .await
}

#[tokio::test]
async fn sighup_is_a_graceful_shutdown_like_sigterm() {
    let workdir = tempfile::tempdir().unwrap();
    let mut binary = RunningBinary::start(workdir.path(), &[]).await;
    for sender in ["alice", "bob", "carol"] {
        post_to(binary.address, sender).await;
    }
    let pid = binary.child.id().unwrap().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().await.unwrap().success());
    let status = tokio::time::timeout(Duration::from_secs(30), binary.child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0));
    let lines = binary.lines.await.unwrap();
    let records = lines.iter().filter(|line| line["target"] == "message").count();
    assert_eq!(records, 3, "every record written before the exit");
    assert!(lines.iter().any(|line| line["message"] == "stopped cleanly: every accepted message delivered"));
    // The snapshot was saved at the stop: a restart has the three counted, with nothing to replay.
    let mut again = RunningBinary::start(workdir.path(), &[]).await;
    assert_eq!(stats_after(again.address, 3).await["messages"]["total"], 3);
    assert_eq!(again.terminate().await.code(), Some(0));
}

#[tokio::test]
async fn openim_callback_config_is_read_by_the_server_and_by_its_healthcheck() {
    let workdir = tempfile::tempdir().unwrap();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = workdir.path().join("receiver.toml");
    std::fs::write(&config, format!("[server]\nlisten = \"{free}\"\n")).unwrap();
    let config = config.to_str().unwrap();
    // No listen in the environment: only the file says where.
    let mut command = receiver_command(workdir.path());
    command.env_remove("OPENIM_CALLBACK__SERVER__LISTEN").env("OPENIM_CALLBACK_CONFIG", config);
    let mut child = command.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let started = next_line_where(&mut lines, |line| line["message"] == "receiving OpenIM callbacks").await;
    assert_eq!(started["listen"], free.to_string(), "the server took the file's address");
    // The container's HEALTHCHECK: the same binary, the same environment, no --config.
    let healthy = Command::new(BINARY)
        .arg("healthcheck")
        .env_clear()
        .env("OPENIM_CALLBACK_CONFIG", config)
        .status()
        .await
        .unwrap();
    assert!(healthy.success(), "the healthcheck probed the file's address");
    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().await.unwrap().success());
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn a_port_in_use_is_a_start_up_error_like_a_bad_setting() {
    let workdir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let output = receiver_command(workdir.path())
        .env("OPENIM_CALLBACK__SERVER__LISTEN", &address)
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty(), "nothing on stdout: {}", String::from_utf8_lossy(&output.stdout));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("openim-callback-receiver: cannot listen on ") && stderr.contains(&address),
        "{stderr}"
    );
}

#[tokio::test]
async fn every_refused_callback_is_logged_at_warn_within_a_rate_limit() {
    let workdir = tempfile::tempdir().unwrap();
    let mut binary = RunningBinary::start(workdir.path(), &[]).await;
    let client = crate::helpers::http_client();
    let url = format!("http://{}{COMMAND_PATH}", binary.address);
    let refused = client
        .post(&url)
        .header("Content-Type", "application/json")
        .header("operationID", "op-refused-1")
        .body(r#"{"sendID": 7}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    // A flood: far more than 20 a second.
    for index in 0..60 {
        let answer =
            client.post(&url).header("operationID", format!("op-flood-{index}")).body("{").send().await;
        assert_eq!(answer.unwrap().status(), 400);
    }
    let stats = stats_of(binary.address).await;
    let not_logged = stats["requests"]["refusals_not_logged"].as_u64().unwrap();
    assert_eq!(binary.terminate().await.code(), Some(0));
    let lines = binary.lines.await.unwrap();
    let refusals: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|line| line["message"] == "callback refused: OpenIM does not send it again")
        .collect();
    let first = refusals.first().expect("the refusal is logged");
    assert_eq!(first["level"], "WARN");
    assert_eq!(first["reason"], "invalid_json");
    assert_eq!(first["status"], 400);
    assert_eq!(first["err_code"], 4006);
    assert_eq!(first["operationID"], "op-refused-1");
    assert_eq!(first["peer"], "127.0.0.1");
    // 61 refusals: at most 20 lines in any second, and what was left out is counted.
    assert!(refusals.len() as u64 + not_logged >= 61, "{} logged, {not_logged} not", refusals.len());
    assert!(not_logged > 0, "a flood of 60 within a second or two is limited");
    assert!(refusals.len() <= 20 * 8, "{}", refusals.len());
}

#[tokio::test]
async fn the_image_healthcheck_passes_with_an_allowlist_that_leaves_out_loopback() {
    let workdir = tempfile::tempdir().unwrap();
    let allow = [("OPENIM_CALLBACK__AUTH__ALLOW_IPS", "172.18.0.0/16")];
    let mut binary = RunningBinary::start(workdir.path(), &allow).await;
    let healthy = healthcheck(binary.address, &allow).await;
    assert!(healthy.success(), "OpenIM's depends_on: service_healthy waits for this");
    assert_eq!(binary.terminate().await.code(), Some(0));
}

#[tokio::test]
async fn a_variable_with_one_underscore_too_few_is_named_at_start() {
    let workdir = tempfile::tempdir().unwrap();
    let mut binary =
        RunningBinary::start(workdir.path(), &[("OPENIM_CALLBACK_SERVER_LISTEN", "0.0.0.0:10999")]).await;
    assert_eq!(binary.terminate().await.code(), Some(0));
    let lines = binary.lines.await.unwrap();
    let warning = lines
        .iter()
        .find(|line| line["variable"] == "OPENIM_CALLBACK_SERVER_LISTEN")
        .expect("a warning naming the variable");
    assert_eq!(warning["level"], "WARN");
    assert!(warning["message"].as_str().unwrap().contains("OPENIM_CALLBACK__SERVER__LISTEN"), "{warning}");
}

/// Runs `openim-callback-receiver healthcheck` against `address` as the image's HEALTHCHECK does.
async fn healthcheck(address: SocketAddr, env: &[(&str, &str)]) -> std::process::ExitStatus {
    Command::new(BINARY)
        .arg("healthcheck")
        .env_clear()
        .env("OPENIM_CALLBACK__SERVER__LISTEN", address.to_string())
        .envs(env.iter().copied())
        .status()
        .await
        .unwrap()
}

#[tokio::test]
async fn with_the_built_in_defaults_a_posted_message_is_found_in_the_archive_after_a_restart() {
    let workdir = tempfile::tempdir().unwrap();
    let client = crate::helpers::http_client();
    let mut binary = RunningBinary::start(workdir.path(), &[]).await;
    let url = format!("http://{}/callbackExample/callbackAfterSendSingleMsgCommand", binary.address);
    let posted = client
        .post(url)
        .header("Content-Type", "application/json")
        .header("operationID", "op-archive")
        .body(crate::helpers::sample("text.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    assert_eq!(binary.terminate().await.code(), Some(0));
    // The default archive: data/archive.sqlite3 in the working directory, kept across a restart.
    assert!(workdir.path().join("data/archive.sqlite3").exists());
    let mut binary = RunningBinary::start(workdir.path(), &[]).await;
    let found: serde_json::Value =
        crate::helpers::http_get(format!("http://{}/messages?q=hello", binary.address))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(found["messages"][0]["serverMsgID"], "bdb2d2a5c18d4b6a0d4e1e4f2c6d8a11", "{found}");
    assert_eq!(found["messages"][0]["text"], "hello <Bob> & welcome");
    let export = format!("http://{}/messages/export?format=csv&user=3861937549", binary.address);
    let csv = crate::helpers::http_get(export).await.unwrap().text().await.unwrap();
    assert_eq!(csv.lines().count(), 2, "a header and the message: {csv}");
    assert_eq!(binary.terminate().await.code(), Some(0));
    // Every export is logged: who asked, with which filters, how many rows.
    let lines = binary.lines.await.unwrap();
    let logged =
        lines.iter().find(|line| line["message"] == "messages exported").expect("the export is logged");
    assert_eq!(logged["level"], "INFO");
    assert_eq!(
        (logged["caller"].as_str(), logged["rows"].as_u64()),
        (Some("127.0.0.1"), Some(1)),
        "{logged}"
    );
    assert_eq!(logged["filters"], "format=csv&user=3861937549");
}
