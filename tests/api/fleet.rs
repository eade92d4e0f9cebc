//! Fleet statistics (`stats.backend = "redis"`) against the real Redis on
//! this machine: replicas answer for the whole fleet, a crash or an outage
//! neither loses a count nor doubles one, and fleets keep apart by prefix.

use crate::binary::{RunningBinary, stats_of};
use crate::helpers::{
    AFTER_AN_OUTAGE, COMMAND_PATH, TcpProxy, TestReceiver, packet, service_url, settings, unique_table,
    wait_until,
};
use serde_json::Value;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

async fn redis() -> Option<String> {
    service_url("Redis", "OPENIM_CALLBACK_TEST_REDIS_URL", "redis://127.0.0.1:6379").await
}

/// A key prefix of this test's own; its keys are deleted when it is dropped.
pub(crate) struct Fleet {
    url: String,
    pub prefix: String,
}

impl Fleet {
    pub(crate) fn new(url: &str) -> Self {
        Fleet { url: url.to_owned(), prefix: format!("{}:", unique_table("fleet")) }
    }

    /// The binary's environment for replica `replica` of this fleet.
    fn env<'a>(&'a self, replica: &'a str, url: &'a str) -> Vec<(&'static str, &'a str)> {
        vec![
            ("OPENIM_CALLBACK__STATS__BACKEND", "redis"),
            ("OPENIM_CALLBACK__STATS__REDIS_URL", url),
            ("OPENIM_CALLBACK__STATS__KEY_PREFIX", &self.prefix),
            ("OPENIM_CALLBACK__STATS__REPLICA_ID", replica),
            ("OPENIM_CALLBACK__STATS__FLEET_REFRESH", "50ms"),
            ("OPENIM_CALLBACK__SINKS__LOG__ENABLED", "false"),
            // The fleet's counts are what these tests look at: no archive beside them.
            ("OPENIM_CALLBACK__SINKS__SQL__URL", ""),
        ]
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let Ok(mut connection) = redis::Client::open(self.url.as_str()).and_then(|c| c.get_connection())
        else {
            return;
        };
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(format!("{}*", self.prefix)).query(&mut connection).unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut connection);
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Posts `count` messages, message `i` from `user-<i % users>` to the
/// replicas in turn, 8 at a time; every one must be answered 200.
async fn post_messages(replicas: &[SocketAddr], count: usize, users: usize) {
    let client = crate::helpers::http_client();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (client, next, replicas) = (client.clone(), Arc::clone(&next), replicas.to_vec());
            tokio::spawn(async move {
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= count {
                        return;
                    }
                    let mut body = packet(&format!("user-{}", index % users), "bob", 101);
                    body["serverMsgID"] = format!("fleet-{index}").into();
                    body["createTime"] = now_ms().into();
                    let address = replicas[index % replicas.len()];
                    let answer = client
                        .post(format!("http://{address}{COMMAND_PATH}"))
                        .header("operationID", format!("op-{index}"))
                        .body(body.to_string())
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(answer.status(), 200);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
}

/// `/stats` at `address` once the fleet total there is `total` (and this
/// replica's stats sink has nothing left to count).
async fn fleet_total(address: SocketAddr, total: u64) -> Value {
    wait_until(AFTER_AN_OUTAGE, async || {
        let stats = stats_of(address).await;
        if stats["messages"]["total"] == total && stats["sinks"]["stats"]["lag_records"] == 0 {
            Ok(stats)
        } else {
            Err(format!("the fleet total is not {total} yet: {stats}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_redis_both_answer_for_the_whole_fleet() {
    let Some(url) = redis().await else { return };
    let fleet = Fleet::new(&url);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = RunningBinary::start(dir_a.path(), &fleet.env("replica-a", &url)).await;
    let mut b = RunningBinary::start(dir_b.path(), &fleet.env("replica-b", &url)).await;
    post_messages(&[a.address, b.address], 5000, 500).await;

    for address in [a.address, b.address] {
        let stats = fleet_total(address, 5000).await;
        assert_eq!(stats["scope"], "fleet");
        let senders = stats["people"]["senders"].as_u64().unwrap();
        assert!((490..=510).contains(&senders), "500 senders within 2%: {senders}");
        assert_eq!(stats["messages"]["by_content_type"]["text"], 5000);
        let replicas: HashSet<&str> =
            stats["fleet"]["replicas"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
        assert_eq!(replicas, HashSet::from(["replica-a", "replica-b"]), "{stats}");
        assert_eq!(stats["fleet"]["state"], "ok");

        let daily: Value = crate::helpers::http_get(format!("http://{address}/stats/daily"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(daily["scope"], "fleet");
        let days = daily["days"].as_array().unwrap();
        let messages: u64 = days.iter().map(|day| day["messages"].as_u64().unwrap()).sum();
        assert_eq!(messages, 5000, "{daily}");
        // The posts may straddle midnight: each day counts at most the 500 senders.
        for day in days {
            let senders = day["people"]["senders"].as_u64().unwrap();
            assert!(senders <= 510, "{day}");
        }
        if days.len() == 1 {
            let senders = days[0]["people"]["senders"].as_u64().unwrap();
            assert!((490..=510).contains(&senders), "{daily}");
        }
    }
    // Each replica counted its own half; their accepted requests add up to the fleet's.
    let accepted = |stats: &Value| stats["requests"]["accepted"].as_u64().unwrap();
    assert_eq!(accepted(&stats_of(a.address).await) + accepted(&stats_of(b.address).await), 5000);

    let metrics = crate::binary::metrics_of(a.address).await;
    assert!(metrics.contains("\nopenim_callback_fleet_messages_total 5000\n"), "{metrics}");
    assert!(metrics.contains("\nopenim_callback_fleet_replicas 2\n"));
    assert!(
        !metrics.contains("\nopenim_callback_messages_total "),
        "this replica's own total would be summed by mistake"
    );

    assert_eq!(a.terminate().await.code(), Some(0));
    tokio::time::sleep(Duration::from_millis(100)).await; // past b's refresh interval
    let stats = stats_of(b.address).await;
    let replicas = stats["fleet"]["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 1, "a replica stopped cleanly leaves the list: {stats}");
    assert_eq!(b.terminate().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_load_and_restarted_counts_each_message_once() {
    let Some(url) = redis().await else { return };
    killed_mid_load_and_restarted(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_redis_cluster_a_replica_killed_mid_load_and_restarted_counts_each_message_once() {
    let Some(cluster) = RedisCluster::start().await else { return };
    killed_mid_load_and_restarted(&cluster.url()).await;
    // Every key of the fleet is in one hash slot: the counting script is one atomic step.
    let (mut slots, mut owners) = (HashSet::new(), 0);
    for port in &cluster.ports {
        let mut node =
            redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap().get_connection().unwrap();
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut node).unwrap();
        owners += usize::from(!keys.is_empty());
        for key in keys {
            let slot: i64 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(&key).query(&mut node).unwrap();
            slots.insert(slot);
        }
    }
    assert_eq!((slots.len(), owners), (1, 1), "the fleet's keys in one slot, on one node");
}

/// A three-node Redis Cluster of the test's own, from the machine's
/// `redis-server` on free ports, stopped when dropped.
struct RedisCluster {
    ports: Vec<u16>,
    nodes: Vec<tokio::process::Child>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    async fn start() -> Option<Self> {
        if std::process::Command::new("redis-server").arg("--version").output().is_err() {
            crate::helpers::skip(
                "no redis-server to start a Redis Cluster from (apt-get install redis-server)",
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        // A node listens on its port and on port + 10000 (the cluster bus): both must be free.
        let mut ports = Vec::new();
        while ports.len() < 3 {
            let port = fastrand::u16(20_000..30_000);
            let free = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
            if !ports.contains(&port) && free(port) && free(port + 10_000) {
                ports.push(port);
            }
        }
        let nodes = ports
            .iter()
            .map(|port| {
                tokio::process::Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--cluster-enabled", "yes"])
                    .args([
                        "--cluster-config-file",
                        &format!("nodes-{port}.conf"),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ])
                    .arg("--dir")
                    .arg(dir.path())
                    .stdout(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .unwrap()
            })
            .collect();
        for port in &ports {
            wait_until(Duration::from_secs(30), async || {
                match tokio::net::TcpStream::connect(("127.0.0.1", *port)).await {
                    Ok(_) => Ok(()),
                    Err(error) => Err(format!("node {port}: {error}")),
                }
            })
            .await;
        }
        let addresses: Vec<String> = ports.iter().map(|port| format!("127.0.0.1:{port}")).collect();
        let created = tokio::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .await
            .unwrap();
        assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stdout));
        let cluster = RedisCluster { ports, nodes, _dir: dir };
        for port in &cluster.ports {
            wait_until(Duration::from_secs(30), async || {
                let info = tokio::process::Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "cluster", "info"])
                    .output()
                    .await
                    .unwrap();
                let info = String::from_utf8_lossy(&info.stdout).into_owned();
                if info.contains("cluster_state:ok") { Ok(()) } else { Err(info) }
            })
            .await;
        }
        Some(cluster)
    }

    /// `stats.redis_url` for it: every node, separated by commas.
    fn url(&self) -> String {
        self.ports.iter().map(|port| format!("redis://127.0.0.1:{port}")).collect::<Vec<_>>().join(",")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.start_kill();
        }
    }
}

/// Two replicas under load; one SIGKILLed and restarted: every journal record
/// of either is counted once, on the Redis (or Redis Cluster) at `url`.
async fn killed_mid_load_and_restarted(url: &str) {
    let fleet = Fleet::new(url);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let env_a = fleet.env("replica-a", url);
    let mut a = RunningBinary::start(dir_a.path(), &env_a).await;
    let mut b = RunningBinary::start(dir_b.path(), &fleet.env("replica-b", url)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = crate::journal_binary::load(a.address, "kill-a", Arc::clone(&stop));
    clients.extend(crate::journal_binary::load(b.address, "kill-b", Arc::clone(&stop)));
    crate::binary::wait_for_accepted(a.address, 300).await;
    a.child.start_kill().unwrap(); // SIGKILL: no drain, the batch in flight to Redis cut off
    let _ = a.child.wait().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut answered = HashSet::new();
    for client in clients {
        answered.extend(client.await.unwrap());
    }
    assert!(answered.len() >= 300, "the load ran: {} answered 200", answered.len());

    let mut a = RunningBinary::start(dir_a.path(), &env_a).await;
    // Every journal record of either replica is counted once: a's replay
    // after the kill skips what Redis already holds.
    let journaled = |stats: &Value| stats["journal"]["last_seq"].as_u64().unwrap();
    let in_journals = journaled(&stats_of(a.address).await) + journaled(&stats_of(b.address).await);
    let stats = fleet_total(a.address, in_journals).await;
    fleet_total(b.address, in_journals).await;
    // The journals hold every 200, and at most the 8 requests the kill cut
    // off between their append and their answer (their clients saw an error).
    let total = stats["messages"]["total"].as_u64().unwrap();
    assert!(
        total >= answered.len() as u64 && total <= answered.len() as u64 + 8,
        "fleet total {total}, answered 200: {}",
        answered.len()
    );
    assert_eq!(a.terminate().await.code(), Some(0));
    assert_eq!(b.terminate().await.code(), Some(0));
}

fn replica_settings(fleet: &Fleet, replica: &str, url: &str) -> openim_callback_receiver::settings::Settings {
    let overrides: Vec<(&str, &str)> = fleet
        .env(replica, url)
        .into_iter()
        .map(|(key, value)| (key.strip_prefix("OPENIM_CALLBACK__").unwrap(), value))
        .collect();
    settings(&overrides)
}

async fn post_to(receiver: &TestReceiver, count: usize, tag: &str) {
    for index in 0..count {
        let mut body = packet(&format!("{tag}-user-{}", index % 7), "bob", 101);
        body["createTime"] = now_ms().into();
        receiver.post_packet(&format!("op-{tag}-{index}"), &body).await.assert_accepted();
    }
}

#[tokio::test]
async fn while_redis_is_cut_off_the_receiver_accepts_and_catches_up_exactly_after() {
    let Some(url) = redis().await else { return };
    let fleet = Fleet::new(&url);
    let proxy = TcpProxy::start(url.trim_start_matches("redis://").trim_end_matches('/')).await;
    let proxied = format!("redis://{}", proxy.address);
    let receiver = TestReceiver::start_with(replica_settings(&fleet, "replica-a", &proxied), |_| {}).await;
    post_to(&receiver, 200, "before").await;
    let before = fleet_total(receiver.address, 200).await;
    assert_eq!(before["fleet"]["state"], "ok");

    proxy.cut();
    post_to(&receiver, 300, "during").await;
    // Degraded, with the error, serving the last figures read; readiness unaffected.
    let sink = receiver.sink_report("stats", |sink| sink["state"] == "degraded").await;
    assert!(sink["last_error"].as_str().unwrap().contains("redis"), "{sink}");
    let stats = wait_until(Duration::from_secs(60), async || {
        let stats = receiver.get_json("/stats").await;
        if stats["fleet"]["state"] == "degraded" { Ok(stats) } else { Err(format!("not degraded: {stats}")) }
    })
    .await;
    assert!(stats["fleet"]["last_error"].as_str().unwrap().contains("redis"), "{stats}");
    assert_eq!(stats["messages"]["total"], 200, "the last fleet figures read");
    let ready = crate::helpers::http_get(receiver.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200, "Redis down is the stats' outage, not this receiver's");

    proxy.restore();
    let after = fleet_total(receiver.address, 500).await;
    assert_eq!(after["fleet"]["state"], "ok");
    assert_eq!(after["sinks"]["stats"]["state"], "running");
    assert_eq!(after["people"]["senders"], 14);
    assert!(receiver.stop().await.is_clean());
}

#[tokio::test]
async fn two_fleets_with_their_own_prefixes_do_not_see_each_other() {
    let Some(url) = redis().await else { return };
    let (north, south) = (Fleet::new(&url), Fleet::new(&url));
    let a = TestReceiver::start_with(replica_settings(&north, "same-name", &url), |_| {}).await;
    let b = TestReceiver::start_with(replica_settings(&south, "same-name", &url), |_| {}).await;
    post_to(&a, 10, "north").await;
    post_to(&b, 25, "south").await;
    let north_stats = fleet_total(a.address, 10).await;
    let south_stats = fleet_total(b.address, 25).await;
    assert_eq!(north_stats["people"]["senders"], 7);
    assert_eq!(south_stats["people"]["senders"], 7);
    // Wait out a refresh: the north total stays its own.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(a.get_json("/stats").await["messages"]["total"], 10);
    assert!(a.stop().await.is_clean());
    assert!(b.stop().await.is_clean());
}

#[tokio::test]
async fn two_receivers_sharing_a_replica_id_are_told_so_and_neither_counts_twice() {
    let Some(url) = redis().await else { return };
    let fleet = Fleet::new(&url);
    let a = TestReceiver::start_with(replica_settings(&fleet, "same-replica", &url), |_| {}).await;
    post_to(&a, 3, "a").await;
    fleet_total(a.address, 3).await;
    // Another receiver, its own journal, the same replica_id: it takes the position over once.
    let b = TestReceiver::start_with(replica_settings(&fleet, "same-replica", &url), |_| {}).await;
    post_to(&b, 2, "b").await;
    fleet_total(b.address, 5).await;
    // The first one's position moved under it: it stops counting and says why.
    post_to(&a, 1, "a-again").await;
    let sink = a.sink_report("stats", |sink| sink["state"] == "degraded").await;
    let error = sink["last_error"].as_str().unwrap();
    assert!(error.contains("in use by another receiver"), "{error}");
    assert_eq!(b.get_json("/stats").await["messages"]["total"], 5, "nothing counted twice");
    assert!(b.stop().await.is_clean());
    drop(a);
}

#[tokio::test]
async fn a_batch_redis_cannot_take_whole_is_not_applied_in_part() {
    let Some(url) = redis().await else { return };
    let fleet = Fleet::new(&url);
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut redis = client.get_multiplexed_async_connection().await.unwrap();
    // The per-minute counters come late in the script: make them the wrong type, so the
    // batch's INCRBY would fail after its HINCRBYs and PFADDs had been applied.
    let minute = now_ms() / 60_000;
    for key in [minute, minute + 1].map(|minute| format!("{}minute:{minute}", fleet.prefix)) {
        let _: () =
            redis::cmd("HSET").arg(&key).arg("not").arg("a counter").query_async(&mut redis).await.unwrap();
    }
    let receiver = TestReceiver::start_with(replica_settings(&fleet, "replica-a", &url), |_| {}).await;
    post_to(&receiver, 20, "refused").await;
    let sink = receiver.sink_report("stats", |sink| sink["state"] == "degraded").await;
    assert!(sink["last_error"].as_str().unwrap().contains("nothing of this batch was applied"), "{sink}");
    for what in ["totals", "people", "cursors"] {
        let exists: bool = redis::cmd("EXISTS")
            .arg(format!("{}{what}", fleet.prefix))
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(!exists, "{what} was written by a batch that failed");
    }
    // Once the keys are fixed, the retried batch counts every message once.
    for key in [minute, minute + 1].map(|minute| format!("{}minute:{minute}", fleet.prefix)) {
        let _: () = redis::cmd("DEL").arg(&key).query_async(&mut redis).await.unwrap();
    }
    let after = fleet_total(receiver.address, 20).await;
    assert_eq!(after["messages"]["total"], 20);
    assert!(receiver.stop().await.is_clean());
}

#[tokio::test]
async fn the_fleet_counts_groups_saves_and_revokes_as_the_memory_backend_does() {
    let Some(url) = redis().await else { return };
    let fleet = Fleet::new(&url);
    let dir = tempfile::tempdir().unwrap();
    let mut replica = RunningBinary::start(dir.path(), &fleet.env("replica-family", &url)).await;
    let mut today: Value = serde_json::from_slice(&crate::helpers::sample("group.json")).unwrap();
    today["createTime"] = now_ms().into();
    let posted = [
        ("callbackAfterSendSingleMsgCommand", crate::helpers::sample("text.json")),
        ("callbackAfterSendGroupMsgCommand", today.to_string().into_bytes()),
        ("callbackAfterMsgSaveDBCommand", crate::helpers::sample("saved-to-database.json")),
        ("callbackBeforeAfterMsgCommand", crate::helpers::sample("revoke.json")),
    ];
    for (command, body) in posted {
        let answer = crate::helpers::http_client()
            .post(format!("http://{}/callbackExample/{command}", replica.address))
            .header("operationID", "op-fleet")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
    }
    let stats = wait_until(AFTER_AN_OUTAGE, async || {
        let stats = stats_of(replica.address).await;
        if stats["revoked"] == 1 && stats["sinks"]["stats"]["lag_records"] == 0 {
            Ok(stats)
        } else {
            Err(format!("{stats}"))
        }
    })
    .await;
    assert_eq!(stats["scope"], "fleet");
    assert_eq!(stats["messages"]["total"], 2, "the saved and the revoked are not messages sent: {stats}");
    assert_eq!(stats["messages"]["by_session_type"], serde_json::json!({"single_chat": 1, "group_chat": 1}));
    assert_eq!(
        (stats["groups"].as_u64(), stats["saved_to_database"].as_u64()),
        (Some(1), Some(1)),
        "{stats}"
    );
    assert_eq!((stats["conversations"].as_u64(), stats["people"]["receivers"].as_u64()), (Some(2), Some(1)));
    let daily: Value = crate::helpers::http_get(format!("http://{}/stats/daily", replica.address))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(daily["days"][0]["groups"], 1, "{daily}");
    assert_eq!(replica.terminate().await.code(), Some(0));
}
