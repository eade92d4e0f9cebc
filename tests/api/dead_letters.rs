//! Dead letters: a record a sink's target refuses for good is kept, with its
//! error, while the records behind it go on; listed, retried (delivered once)
//! or dropped through the admin endpoints, which answer only loopback
//! without a token; counted in /stats and /metrics; kept across a restart.

use crate::forward::Downstream;
use crate::helpers::{TestReceiver, packet, settings};
use axum::http::StatusCode;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A relay target that answers 400 to a body holding "poison" until `fixed` is set.
async fn refusing_until_fixed() -> (Downstream, Arc<AtomicBool>) {
    let fixed = Arc::new(AtomicBool::new(false));
    let target_fixed = Arc::clone(&fixed);
    let target = Downstream::answering(move |_, body| {
        let poison = String::from_utf8_lossy(body).contains("poison");
        if poison && !target_fixed.load(Ordering::Relaxed) { StatusCode::BAD_REQUEST } else { StatusCode::OK }
    })
    .await;
    (target, fixed)
}

async fn post_ids(receiver: &TestReceiver, ids: &[&str]) {
    for id in ids {
        let mut message = packet("carol", "dave", 101);
        message["serverMsgID"] = (*id).into();
        receiver.post_packet(&format!("op-{id}"), &message).await.assert_accepted();
    }
}

/// The keys a target took, each once (a relay is at-least-once: a batch
/// taken apart around a refused record sends the others again, under the same key).
fn taken(target: &Downstream) -> Vec<String> {
    let mut keys = target.keys();
    keys.sort();
    keys.dedup();
    keys
}

async fn send(receiver: &TestReceiver, method: reqwest::Method, path: &str) -> (u16, Value) {
    let response = receiver.client.request(method, receiver.url(path)).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn a_refused_record_waits_as_a_dead_letter_and_a_retry_after_the_fix_delivers_it_once() {
    let (target, fixed) = refusing_until_fixed().await;
    let journal = tempfile::tempdir().unwrap();
    let overrides = [
        ("JOURNAL__DIR", journal.path().to_str().unwrap()),
        ("SINKS__FORWARD__CRM__URL", target.url.as_str()),
    ];
    let receiver = TestReceiver::start_with(settings(&overrides), |_| {}).await;
    post_ids(&receiver, &["ok-1", "poison-1", "ok-2"]).await;
    receiver.caught_up("forward.crm", 3).await;
    assert_eq!(taken(&target), ["ok-1", "ok-2"], "the records behind it went on");

    let (status, listed) = send(&receiver, reqwest::Method::GET, "/sinks/forward.crm/dead-letters").await;
    assert_eq!(status, 200);
    let letters = listed["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "{listed}");
    assert_eq!((letters[0]["seq"].as_u64(), letters[0]["serverMsgID"].as_str()), (Some(2), Some("poison-1")));
    assert_eq!(letters[0]["operationID"], "op-poison-1");
    assert!(letters[0]["error"].as_str().unwrap().contains("400"), "{listed}");
    let stats = receiver.get_json("/stats").await;
    assert_eq!(stats["sinks"]["forward.crm"]["dead_letters"], 1);
    let metrics = receiver.client.get(receiver.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains(r#"openim_callback_sink_dead_letters{sink="forward.crm"} 1"#), "{metrics}");

    // Still refused: it stays, one attempt more.
    let (_, outcome) = send(&receiver, reqwest::Method::POST, "/sinks/forward.crm/dead-letters/retry").await;
    assert_eq!(
        (outcome["retried"].as_u64(), outcome["still_dead"].as_u64()),
        (Some(1), Some(1)),
        "{outcome}"
    );
    let (_, listed) = send(&receiver, reqwest::Method::GET, "/sinks/forward.crm/dead-letters").await;
    assert_eq!(listed["dead_letters"][0]["attempts"], 2);

    // Kept across a restart, its record with it.
    assert!(receiver.stop().await.is_clean());
    let listed = tokio::process::Command::new(crate::binary::BINARY)
        .args(["journal", "ls", "--dir"])
        .arg(journal.path())
        .env_clear()
        .output()
        .await
        .unwrap();
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(listed.contains("dead letters of forward.crm: 1 (records 2)"), "journal ls names it: {listed}");
    let receiver = TestReceiver::start_with(settings(&overrides), |_| {}).await;
    let (_, listed) = send(&receiver, reqwest::Method::GET, "/sinks/forward.crm/dead-letters").await;
    assert_eq!(listed["dead_letters"].as_array().unwrap().len(), 1, "{listed}");
    fixed.store(true, Ordering::Relaxed);
    let (status, outcome) =
        send(&receiver, reqwest::Method::POST, "/sinks/forward.crm/dead-letters/retry?seq=2").await;
    assert_eq!(status, 200);
    assert_eq!((outcome["retried"].as_u64(), outcome["delivered"].as_u64()), (Some(1), Some(1)), "{outcome}");
    assert_eq!(taken(&target), ["ok-1", "ok-2", "poison-1"]);
    let (_, outcome) = send(&receiver, reqwest::Method::POST, "/sinks/forward.crm/dead-letters/retry").await;
    assert_eq!(outcome["retried"], 0, "nothing left to retry");
    let poisons = target.keys().iter().filter(|key| *key == "poison-1").count();
    assert_eq!(poisons, 1, "the dead letter delivered exactly once");
    assert_eq!(receiver.get_json("/stats").await["sinks"]["forward.crm"]["dead_letters"], 0);

    // Dropped: gone from the list, for good.
    fixed.store(false, Ordering::Relaxed);
    post_ids(&receiver, &["poison-2"]).await;
    receiver.caught_up("forward.crm", 4).await;
    let (status, dropped) = send(&receiver, reqwest::Method::DELETE, "/sinks/forward.crm/dead-letters").await;
    assert_eq!((status, dropped["dropped"].as_u64()), (200, Some(1)), "{dropped}");
    let (_, listed) = send(&receiver, reqwest::Method::GET, "/sinks/forward.crm/dead-letters").await;
    assert_eq!(listed["dead_letters"], serde_json::json!([]));

    let (status, unknown) = send(&receiver, reqwest::Method::GET, "/sinks/nope/dead-letters").await;
    assert_eq!((status, unknown["errCode"].as_i64()), (404, Some(4041)), "{unknown}");
    assert!(
        unknown["errMsg"].as_str().unwrap().contains("forward.crm"),
        "names the running sinks: {unknown}"
    );
    let (status, bad) =
        send(&receiver, reqwest::Method::POST, "/sinks/forward.crm/dead-letters/retry?seq=x").await;
    assert_eq!((status, bad["errCode"].as_i64()), (400, Some(4009)));
    assert!(receiver.stop().await.is_clean());
}

#[tokio::test]
async fn the_admin_endpoints_answer_only_loopback_without_a_token_and_only_its_holders_with_one() {
    let behind_proxy = [("SERVER__TRUSTED_PROXIES", "127.0.0.1/32")];
    let receiver = TestReceiver::start_with(settings(&behind_proxy), |_| {}).await;
    for (method, path) in [
        (reqwest::Method::GET, "/sinks/log/dead-letters"),
        (reqwest::Method::POST, "/sinks/log/dead-letters/retry"),
        (reqwest::Method::DELETE, "/sinks/log/dead-letters"),
    ] {
        let remote = receiver
            .client
            .request(method.clone(), receiver.url(path))
            .header("X-Forwarded-For", "203.0.113.8");
        let answer = remote.send().await.unwrap();
        assert_eq!(answer.status(), 403, "{method} {path}");
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["errCode"], 4031, "{body}");
        let local = receiver.client.request(method.clone(), receiver.url(path)).send().await.unwrap();
        assert_eq!(local.status(), 200, "{method} {path} from loopback");
    }
    assert!(receiver.stop().await.is_clean());

    let token = "admin-token-for-tests-0123";
    let receiver = TestReceiver::start_with(settings(&[("AUTH__TOKEN", token)]), |_| {}).await;
    let get = || receiver.client.get(receiver.url("/sinks/log/dead-letters"));
    assert_eq!(get().send().await.unwrap().status(), 401, "no token");
    assert_eq!(
        get().bearer_auth("wrong-token-for-tests-0123").send().await.unwrap().status(),
        401,
        "a wrong token"
    );
    assert_eq!(get().bearer_auth(token).send().await.unwrap().status(), 200);
    assert!(receiver.stop().await.is_clean());
}

/// The serverMsgIDs the log sink wrote, in order.
fn logged(receiver: &TestReceiver) -> Vec<String> {
    let records = receiver.log.records();
    let messages = records.iter().filter(|record| record["target"] == "message");
    messages.map(|record| record["serverMsgID"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test]
async fn a_rewind_delivers_again_from_a_time_or_a_sequence_number_and_refills_an_emptied_archive() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/archive.sqlite3", dir.path().display());
    let receiver = TestReceiver::start_with(settings(&[("SINKS__SQL__URL", &url)]), |_| {}).await;
    post_ids(&receiver, &["m1", "m2", "m3"]).await;
    receiver.caught_up("log", 3).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let since =
        openim_callback_receiver::epoch::rfc3339_micros(std::time::SystemTime::now()).as_str().to_owned();
    post_ids(&receiver, &["m4", "m5"]).await;
    receiver.caught_up("log", 5).await;
    receiver.caught_up("sql", 5).await;

    // The log, from a time: exactly the records that arrived since then, again.
    let (status, rewound) =
        send(&receiver, reqwest::Method::POST, &format!("/sinks/log/rewind?to={since}")).await;
    assert_eq!((status, rewound["from"].as_u64()), (200, Some(4)), "{rewound}");
    let again = crate::helpers::wait_until(std::time::Duration::from_secs(30), async || {
        let ids = logged(&receiver);
        if ids.len() >= 7 { Ok(ids) } else { Err(format!("{ids:?}")) }
    })
    .await;
    assert_eq!(again, ["m1", "m2", "m3", "m4", "m5", "m4", "m5"]);

    // The archive, emptied by hand, refilled from the first record.
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("DELETE FROM openim_messages").execute(&pool).await.unwrap();
    let (status, rewound) = send(&receiver, reqwest::Method::POST, "/sinks/sql/rewind?to=1").await;
    assert_eq!((status, rewound["from"].as_u64()), (200, Some(1)), "{rewound}");
    let rows = crate::helpers::wait_until(std::time::Duration::from_secs(30), async || {
        let rows: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM openim_messages").fetch_one(&pool).await.unwrap();
        if rows == 5 { Ok(rows) } else { Err(format!("{rows} rows")) }
    })
    .await;
    assert_eq!(rows, 5);
    assert_eq!(logged(&receiver).len(), 7, "the other sinks are not moved");
    let sql = receiver.caught_up("sql", 5).await;
    assert_eq!(sql["catch_up_seconds"], 0.0, "caught up again: {sql}");

    // The stats count each record once: refused, saying how to rebuild them.
    let (status, refused) = send(&receiver, reqwest::Method::POST, "/sinks/stats/rewind?to=1").await;
    assert_eq!((status, refused["errCode"].as_i64()), (409, Some(4090)), "{refused}");
    assert!(refused["errMsg"].as_str().unwrap().contains("count twice"), "{refused}");
    let (status, _) = send(&receiver, reqwest::Method::POST, "/sinks/log/rewind").await;
    assert_eq!(status, 400, "to is required");
    let (status, _) = send(&receiver, reqwest::Method::POST, "/sinks/log/rewind?to=yesterday").await;
    assert_eq!(status, 400);
    assert!(receiver.stop().await.is_clean());
}

#[tokio::test]
async fn a_record_that_fails_max_attempts_times_becomes_a_dead_letter_and_the_rest_go_on() {
    let fixed = Arc::new(AtomicBool::new(false));
    let target_fixed = Arc::clone(&fixed);
    // 503 (a failure that may pass) for "poison", until fixed.
    let target = Downstream::answering(move |_, body| {
        let poison = String::from_utf8_lossy(body).contains("poison");
        if poison && !target_fixed.load(Ordering::Relaxed) {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        }
    })
    .await;
    let overrides =
        [("SINKS__FORWARD__CRM__URL", target.url.as_str()), ("SINKS__FORWARD__CRM__MAX_ATTEMPTS", "3")];
    let receiver = TestReceiver::start_with(settings(&overrides), |_| {}).await;
    post_ids(&receiver, &["ok-1", "poison-1", "ok-2"]).await;
    receiver.caught_up("forward.crm", 3).await;
    assert_eq!(taken(&target), ["ok-1", "ok-2"]);
    let (_, listed) = send(&receiver, reqwest::Method::GET, "/sinks/forward.crm/dead-letters").await;
    let letter = &listed["dead_letters"][0];
    assert_eq!(
        (letter["serverMsgID"].as_str(), letter["attempts"].as_u64()),
        (Some("poison-1"), Some(3)),
        "{listed}"
    );
    assert!(letter["error"].as_str().unwrap().contains("sinks.forward.crm.max_attempts"), "{listed}");
    fixed.store(true, Ordering::Relaxed);
    let (_, outcome) = send(&receiver, reqwest::Method::POST, "/sinks/forward.crm/dead-letters/retry").await;
    assert_eq!(outcome["delivered"], 1, "{outcome}");
    assert_eq!(taken(&target), ["ok-1", "ok-2", "poison-1"]);
    assert!(receiver.stop().await.is_clean());
}
