//! The message family through the built binary: a mixed load of single,
//! group, saved-to-database and revoke callbacks from 8 clients, SIGKILL,
//! restart; every 200 is in the log and in the archive once, and the stats
//! count each kind exactly.

use crate::binary::{RunningBinary, wait_for_accepted};
use crate::helpers::unique_table;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Callback `index` of client `client`, as (command, body, the key it is known by). In
/// each four: a single chat, a group message, the single's save (its seq), its revoke.
fn callback(client: usize, index: usize) -> (&'static str, Value, String) {
    let round = index / 4;
    let single = format!("mix-c{client}-{round}");
    let (sender, receiver) = (format!("user-{client}"), format!("peer-{client}"));
    let message = |id: &str| {
        json!({"sendID": sender, "recvID": receiver, "serverMsgID": id, "sessionType": 1, "contentType": 101,
               "createTime": 1_732_675_200_000_i64, "content": "{\"content\":\"hi\"}"})
    };
    match index % 4 {
        0 => ("callbackAfterSendSingleMsgCommand", message(&single), format!("sent:{single}")),
        1 => {
            let id = format!("mix-g{client}-{round}");
            let body = json!({"sendID": sender, "groupID": format!("group-{client}"), "serverMsgID": id,
                              "sessionType": 3, "contentType": 101, "createTime": 1_732_675_200_000_i64});
            ("callbackAfterSendGroupMsgCommand", body, format!("sent:{id}"))
        }
        2 => {
            let mut body = message(&single);
            body["seq"] = (round + 1).into();
            ("callbackAfterMsgSaveDBCommand", body, format!("saved:{single}"))
        }
        _ => {
            // OpenIM's form: the two ids sorted ("peer-…" before "user-…").
            let conversation = format!("si_{receiver}_{sender}");
            let body = json!({"callbackCommand": "callbackBeforeAfterMsgCommand", "conversationID": conversation,
                              "seq": round + 1, "userID": sender});
            ("callbackBeforeAfterMsgCommand", body, format!("revoked:{conversation}:{}", round + 1))
        }
    }
}

/// The key a log record is known by, as `callback` names it.
fn logged_key(record: &Value) -> Option<String> {
    let id = record["serverMsgID"].as_str().unwrap_or_default();
    Some(match record["callbackCommand"].as_str()? {
        "callbackAfterSendSingleMsgCommand" | "callbackAfterSendGroupMsgCommand" => format!("sent:{id}"),
        "callbackAfterMsgSaveDBCommand" => format!("saved:{id}"),
        _ => format!("revoked:{}:{}", record["conversationID"].as_str()?, record["seq"]),
    })
}

fn mixed_load(address: SocketAddr, stop: Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    (0..8)
        .map(|client| {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let http = crate::helpers::http_client();
                let mut answered = Vec::new();
                for index in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (command, body, key) = callback(client, index);
                    let sent = http
                        .post(format!("http://{address}/callbackExample/{command}"))
                        .header("operationID", "op-mix")
                        .body(body.to_string())
                        .send()
                        .await;
                    match sent {
                        Ok(response) if response.status() == 200 => answered.push(key),
                        _ => break,
                    }
                }
                answered
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_load_killed_and_restarted_keeps_every_callback_once_in_the_log_the_archive_and_the_stats() {
    let Some(url) = crate::sql::postgres().await else { return };
    let table = unique_table("mixed");
    let workdir = tempfile::tempdir().unwrap();
    let env = [
        ("OPENIM_CALLBACK__SINKS__SQL__ENABLED", "true"),
        ("OPENIM_CALLBACK__SINKS__SQL__URL", url.as_str()),
        ("OPENIM_CALLBACK__SINKS__SQL__TABLE", table.as_str()),
    ];
    let mut first = RunningBinary::start(workdir.path(), &env).await;
    let stop = Arc::new(AtomicBool::new(false));
    let clients = mixed_load(first.address, Arc::clone(&stop));
    wait_for_accepted(first.address, 400).await;
    first.child.start_kill().unwrap();
    let _ = first.child.wait().await;
    stop.store(true, Ordering::Relaxed);
    let mut answered = HashSet::new();
    for client in clients {
        answered.extend(client.await.unwrap());
    }
    let first_lines = first.lines.await.unwrap();
    assert!(answered.len() >= 400, "the load ran: {}", answered.len());

    let mut second = RunningBinary::start(workdir.path(), &env).await;
    let stats = crate::journal_binary::caught_up(second.address).await;
    assert_eq!(second.terminate().await.code(), Some(0));
    let mut lines = first_lines;
    lines.extend(second.lines.await.unwrap());

    let logged: HashSet<String> =
        lines.iter().filter(|line| line["target"] == "message").filter_map(logged_key).collect();
    let lost: Vec<_> = answered.difference(&logged).collect();
    assert!(lost.is_empty(), "answered 200 but in neither run's log: {lost:?}");
    let journaled = stats["journal"]["last_seq"].as_u64().unwrap();
    assert_eq!(logged.len() as u64, journaled, "the log holds each journal record");
    let of_kind = |kind: &str| logged.iter().filter(|key| key.starts_with(kind)).count() as u64;
    assert_eq!(stats["messages"]["total"].as_u64(), Some(of_kind("sent:")), "{stats}");
    assert_eq!(stats["saved_to_database"].as_u64(), Some(of_kind("saved:")), "{stats}");
    assert_eq!(stats["revoked"].as_u64(), Some(of_kind("revoked:")), "{stats}");

    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let rows: Vec<(String, String, i64, Option<String>)> =
        sqlx::query_as(&format!("SELECT server_msg_id, callback, seq, revoked_by FROM {table}"))
            .fetch_all(&pool)
            .await
            .unwrap();
    let sent: HashSet<String> =
        rows.iter().filter(|row| row.1 != "afterRevokeMsg").map(|row| format!("sent:{}", row.0)).collect();
    let logged_sent: HashSet<String> =
        logged.iter().filter(|key| key.starts_with("sent:")).cloned().collect();
    assert_eq!(sent, logged_sent, "a row for each message, once (the key is the primary key)");
    for key in &answered {
        if let Some(id) = key.strip_prefix("saved:") {
            let row = rows.iter().find(|row| row.0 == id).unwrap();
            let round: i64 = id.rsplit('-').next().unwrap().parse().unwrap();
            assert_eq!(row.2, round + 1, "{id}: the seq of its save");
        }
        if let Some(revoke) = key.strip_prefix("revoked:") {
            // Its save was answered before it was sent: the message's row is marked.
            let (conversation, seq) = revoke.rsplit_once(':').unwrap();
            let client = conversation.rsplit('_').next().unwrap().trim_start_matches("user-");
            let id = format!("mix-c{client}-{}", seq.parse::<i64>().unwrap() - 1);
            let row = rows.iter().find(|row| row.0 == id).unwrap();
            assert_eq!(row.3.as_deref(), Some(format!("user-{client}").as_str()), "{id} revoked");
        }
    }
    let _ = sqlx::query(&format!("DROP TABLE {table}")).execute(&pool).await;
}
