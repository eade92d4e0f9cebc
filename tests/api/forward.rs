//! The HTTP relay through real HTTP on both sides: a downstream that fails
//! for a while, signatures checked the Standard Webhooks way, two targets
//! that each get every message.

use crate::helpers::{AFTER_AN_OUTAGE, TestReceiver, packet, settings, wait_until};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::{Arc, Mutex};

/// One request as the downstream saw it.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A downstream on 127.0.0.1:0 that answers 500 to its first `failures`
/// requests, then 200, and keeps every request that got a 200.
pub(crate) struct Downstream {
    pub url: String,
    accepted: Arc<Mutex<Vec<Received>>>,
    attempts: Arc<Mutex<u32>>,
}

impl Downstream {
    pub(crate) async fn start(failures: u32) -> Self {
        Self::answering(
            move |attempt, _| {
                if attempt <= failures { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK }
            },
        )
        .await
    }

    /// A downstream that answers 400 to every request whose body holds `refused`, 200 to the rest.
    async fn refusing(refused: &'static str) -> Self {
        Self::answering(move |_, body| {
            let refuse = String::from_utf8_lossy(body).contains(refused);
            if refuse { StatusCode::BAD_REQUEST } else { StatusCode::OK }
        })
        .await
    }

    /// A downstream whose answer `answer` picks from the attempt's number (from 1) and the body.
    pub(crate) async fn answering(
        answer: impl Fn(u32, &[u8]) -> StatusCode + Clone + Send + Sync + 'static,
    ) -> Self {
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let attempts = Arc::new(Mutex::new(0));
        let (kept, tried) = (Arc::clone(&accepted), Arc::clone(&attempts));
        let handler = axum::routing::post(move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
            let (kept, tried, answer) = (Arc::clone(&kept), Arc::clone(&tried), answer.clone());
            async move {
                let attempt = {
                    let mut tried = tried.lock().unwrap();
                    *tried += 1;
                    *tried
                };
                let status = answer(attempt, &body);
                if status == StatusCode::OK {
                    kept.lock().unwrap().push(Received { path: uri.path().to_owned(), headers, body });
                }
                status
            }
        });
        let app = axum::Router::new().route("/hook", handler.clone()).route("/hook/{command}", handler);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Downstream { url, accepted, attempts }
    }

    /// Each serverMsgID (Idempotency-Key) taken, in the order taken.
    pub(crate) fn keys(&self) -> Vec<String> {
        let accepted = self.accepted.lock().unwrap();
        accepted
            .iter()
            .map(|request| request.headers["idempotency-key"].to_str().unwrap().to_owned())
            .collect()
    }
}

async fn caught_up(receiver: &TestReceiver, sink: &str) -> serde_json::Value {
    wait_until(AFTER_AN_OUTAGE, async || {
        let report = receiver.get_json("/stats").await["sinks"][sink].clone();
        if report["lag_records"] == 0 && report["handled"].as_u64() > Some(0) {
            Ok(report)
        } else {
            Err(format!("{sink} is behind: {report}"))
        }
    })
    .await
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[tokio::test]
async fn two_targets_get_every_message_signed_and_retried_until_they_take_it() {
    let flaky = Downstream::start(3).await;
    let plain = Downstream::start(0).await;
    let overrides = [
        ("SINKS__FORWARD__FLAKY__URL", flaky.url.as_str()),
        ("SINKS__FORWARD__FLAKY__SECRET", SECRET),
        ("SINKS__FORWARD__PLAIN__URL", plain.url.as_str()),
    ];
    let receiver = TestReceiver::start_with(settings(&overrides), |_| {}).await;
    let mut posted = Vec::new();
    for index in 0..20 {
        let mut message = packet(&format!("user-{index}"), "bob", 101);
        message["serverMsgID"] = format!("relay-{index}").into();
        let body = message.to_string();
        receiver
            .post(crate::helpers::COMMAND_PATH, &format!("op-{index}"), body.clone())
            .await
            .assert_accepted();
        posted.push((format!("relay-{index}"), format!("op-{index}"), body));
    }
    let flaky_report = caught_up(&receiver, "forward.flaky").await;
    caught_up(&receiver, "forward.plain").await;
    assert!(flaky_report["retries"].as_u64().unwrap() >= 1, "{flaky_report}");
    assert_eq!(flaky_report["state"], "running");
    assert!(*flaky.attempts.lock().unwrap() > 20, "the first attempts failed and were made again");

    let key = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &SECRET[6..]).unwrap();
    for downstream in [&flaky, &plain] {
        let mut keys = downstream.keys();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 20, "every message, to every target");
        for request in downstream.accepted.lock().unwrap().iter() {
            let id = request.headers["idempotency-key"].to_str().unwrap();
            let (_, operation_id, body) =
                posted.iter().find(|(server_msg_id, _, _)| server_msg_id == id).unwrap();
            assert_eq!(request.body, body.as_bytes(), "the body as OpenIM sent it");
            assert_eq!(request.headers["operationid"], operation_id.as_str());
            assert_eq!(request.headers["content-type"], "application/json; charset=utf-8");
            if std::ptr::eq(downstream, &flaky) {
                // Standard Webhooks: v1,base64(HMAC-SHA256(key, "{webhook-id}.{webhook-timestamp}.{body}")).
                let webhook_id = request.headers["webhook-id"].to_str().unwrap();
                let timestamp = request.headers["webhook-timestamp"].to_str().unwrap();
                let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
                mac.update(format!("{webhook_id}.{timestamp}.").as_bytes());
                mac.update(&request.body);
                let expected = base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    mac.finalize().into_bytes(),
                );
                let signature = request.headers["webhook-signature"].to_str().unwrap();
                assert_eq!(signature, format!("v1,{expected}"));
                let now = std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap().as_secs();
                assert!(now.abs_diff(timestamp.parse().unwrap()) < 300, "a current timestamp");
            } else {
                assert!(request.headers.get("webhook-signature").is_none(), "no secret, no signature");
            }
        }
    }
    assert!(receiver.stop().await.is_clean());
}

#[tokio::test]
async fn with_a_concurrency_of_one_a_target_sees_the_journal_order() {
    let ordered = Downstream::start(2).await;
    let overrides = [
        ("SINKS__FORWARD__ORDERED__URL", ordered.url.as_str()),
        ("SINKS__FORWARD__ORDERED__CONCURRENCY", "1"),
    ];
    let receiver = TestReceiver::start_with(settings(&overrides), |_| {}).await;
    let mut expected = Vec::new();
    for index in 0..30 {
        let mut message = packet(&format!("user-{index}"), "bob", 101);
        message["serverMsgID"] = format!("ordered-{index}").into();
        receiver.post_packet(&format!("op-{index}"), &message).await.assert_accepted();
        expected.push(format!("ordered-{index}"));
    }
    caught_up(&receiver, "forward.ordered").await;
    assert_eq!(ordered.keys(), expected, "in order, each once: retries resend only what was not taken");
    assert!(receiver.stop().await.is_clean());
}

#[tokio::test]
async fn a_target_that_is_down_leaves_the_receiver_ready_and_the_sink_degraded() {
    // Nothing listens on this port.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let url = format!("http://{free}/hook");
    let overrides = [("SINKS__FORWARD__GONE__URL", url.as_str()), ("SINKS__FORWARD__GONE__TIMEOUT", "500ms")];
    let receiver = TestReceiver::start_with(settings(&overrides), |_| {}).await;
    receiver.post_packet("op-1", &packet("a", "b", 101)).await.assert_accepted();
    let report = receiver.sink_report("forward.gone", |sink| sink["state"] == "degraded").await;
    assert_eq!(report["state"], "degraded", "{report}");
    assert!(report["last_error"].as_str().is_some_and(|error| !error.is_empty()), "{report}");
    let ready = receiver.client.get(receiver.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn a_message_the_target_refuses_with_400_does_not_hold_up_the_ones_behind_it() {
    let downstream = Downstream::refusing("srv-poison").await;
    let receiver = TestReceiver::start_with(
        settings(&[("SINKS__FORWARD__CRM__URL", &downstream.url), ("SINKS__FORWARD__CRM__CONCURRENCY", "1")]),
        |_| {},
    )
    .await;
    let mut posted = Vec::new();
    for index in 0..6 {
        let mut message = packet("a", "b", 101);
        let id = if index == 2 { "srv-poison".to_owned() } else { format!("srv-{index}") };
        message["serverMsgID"] = id.clone().into();
        receiver.post_packet(&format!("op-{index}"), &message).await.assert_accepted();
        posted.push(id);
    }
    let report = receiver.sink_report("forward.crm", |report| report["lag_records"] == 0).await;
    let expected: Vec<String> = posted.into_iter().filter(|id| id != "srv-poison").collect();
    assert_eq!(downstream.keys(), expected, "every other message, in order");
    assert_eq!(report["failed"], 1, "{report}");
    assert!(report["last_error"].as_str().unwrap().contains("400"), "{report}");
}

#[tokio::test]
async fn an_operation_id_that_cannot_be_a_header_is_sent_percent_encoded() {
    let downstream = Downstream::start(0).await;
    let receiver =
        TestReceiver::start_with(settings(&[("SINKS__FORWARD__CRM__URL", &downstream.url)]), |_| {}).await;
    // No header: the body's operationID, with a control character, is the record's.
    let mut message = packet("a", "b", 101);
    message["operationID"] = "bad\u{1}id".into();
    message["serverMsgID"] = "srv-control".into();
    let answer = receiver
        .client
        .post(receiver.url(crate::helpers::COMMAND_PATH))
        .header("Content-Type", "application/json")
        .body(message.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    receiver.post_packet("op-after", &packet("c", "d", 101)).await.assert_accepted();
    let report = receiver.sink_report("forward.crm", |report| report["handled"] == 2).await;
    assert_eq!(report["failed"], 0, "{report}");
    let accepted = downstream.accepted.lock().unwrap().clone();
    assert_eq!(accepted[0].headers["operationid"], "bad%01id");
    let body: serde_json::Value = serde_json::from_slice(&accepted[0].body).unwrap();
    assert_eq!(body["operationID"], "bad\u{1}id", "the body as it arrived");
    assert_eq!(accepted[1].headers["operationid"], "op-after");
}

#[tokio::test]
async fn a_relay_urls_credentials_never_show_in_stats() {
    // Nothing listens there: the error names the URL, without its password or token.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let url = format!("http://bot:hunter2@{closed}/hook?token=t0ps3cret");
    let receiver = TestReceiver::start_with(settings(&[("SINKS__FORWARD__CRM__URL", &url)]), |_| {}).await;
    receiver.post_packet("op", &packet("a", "b", 101)).await.assert_accepted();
    let report = receiver.sink_report("forward.crm", |report| !report["last_error"].is_null()).await;
    let error = report["last_error"].as_str().unwrap();
    assert!(error.contains(&format!("http://bot:<redacted>@{closed}/hook?token=<redacted>")), "{error}");
    let everything = receiver.get_json("/stats").await.to_string();
    assert!(!everything.contains("hunter2") && !everything.contains("t0ps3cret"), "{everything}");
}

#[tokio::test]
async fn each_relayed_callback_names_its_command_and_can_go_to_the_path_openim_uses() {
    let plain = Downstream::start(0).await;
    let openim_like = Downstream::start(0).await;
    let overrides = [
        ("SINKS__FORWARD__PLAIN__URL", plain.url.as_str()),
        ("SINKS__FORWARD__OPENIM__URL", openim_like.url.as_str()),
        ("SINKS__FORWARD__OPENIM__APPEND_COMMAND", "true"),
    ];
    let receiver = TestReceiver::start_with(settings(&overrides), |_| {}).await;
    let commands = [
        ("callbackAfterSendGroupMsgCommand", "group.json"),
        ("callbackBeforeAfterMsgCommand", "revoke.json"),
    ];
    for (command, sample) in commands {
        let path = format!("/callbackExample/{command}");
        receiver.post(&path, "op-relay", crate::helpers::sample(sample)).await.assert_accepted();
    }
    caught_up(&receiver, "forward.plain").await;
    caught_up(&receiver, "forward.openim").await;
    for (downstream, with_command) in [(&plain, false), (&openim_like, true)] {
        let accepted = downstream.accepted.lock().unwrap().clone();
        let mut seen: Vec<(String, String, String)> = accepted
            .iter()
            .map(|request| {
                let header = request.headers["x-openim-callback-command"].to_str().unwrap().to_owned();
                let key = request.headers["idempotency-key"].to_str().unwrap().to_owned();
                (request.path.clone(), header, key)
            })
            .collect();
        // Two requests in flight at once (the default concurrency): either may land first.
        seen.sort();
        let path = |command: &str| if with_command { format!("/hook/{command}") } else { "/hook".to_owned() };
        assert_eq!(
            seen,
            [
                (
                    path(commands[0].0),
                    commands[0].0.to_owned(),
                    "5e0c2a9b7d1f4e3a8b6c0d2e4f6a8b1c".to_owned()
                ),
                (
                    path(commands[1].0),
                    commands[1].0.to_owned(),
                    "afterRevokeMsg:si_3861937549_5247014726:17".to_owned()
                ),
            ]
        );
        let revoke = accepted
            .iter()
            .find(|request| request.body.starts_with(b"{\"callbackCommand\":\"callbackBefore"));
        assert_eq!(revoke.unwrap().body, crate::helpers::sample("revoke.json"), "the body as it came");
    }
    assert!(receiver.stop().await.is_clean());
}

#[tokio::test]
async fn a_target_with_only_recv_ids_gets_exactly_the_messages_to_those_users() {
    let bot = Downstream::start(0).await;
    let overrides = [
        ("SINKS__FORWARD__BOT__URL", bot.url.as_str()),
        ("SINKS__FORWARD__BOT__ONLY__RECV_IDS", "bot-1, bot-2"),
    ];
    let receiver = TestReceiver::start_with(settings(&overrides), |_| {}).await;
    let mut expected = Vec::new();
    for (index, receiver_id) in ["bot-1", "alice", "bot-2", "bob", "bot-1"].iter().enumerate() {
        let mut message = packet("carol", receiver_id, 101);
        message["serverMsgID"] = format!("to-{receiver_id}-{index}").into();
        receiver.post_packet("op-bot", &message).await.assert_accepted();
        if receiver_id.starts_with("bot") {
            expected.push(format!("to-{receiver_id}-{index}"));
        }
    }
    // A group's message and a revoke name no receiver: left out too.
    receiver
        .post("/callbackExample/callbackAfterSendGroupMsgCommand", "op", crate::helpers::sample("group.json"))
        .await
        .assert_accepted();
    receiver
        .post("/callbackExample/callbackBeforeAfterMsgCommand", "op", crate::helpers::sample("revoke.json"))
        .await
        .assert_accepted();
    let report = receiver.caught_up("forward.bot", 7).await;
    assert_eq!((report["handled"].as_u64(), report["filtered"].as_u64()), (Some(3), Some(4)), "{report}");
    let mut keys = bot.keys();
    keys.sort();
    expected.sort();
    assert_eq!(keys, expected);
    let metrics = receiver.client.get(receiver.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(r#"openim_callback_sink_messages_total{sink="forward.bot",result="filtered"} 4"#),
        "{metrics}"
    );
    assert!(receiver.stop().await.is_clean());
}

#[test]
fn a_filter_naming_an_unknown_callback_stops_start_up_naming_it() {
    use openim_callback_receiver::settings::{EnvSource, Settings};
    let env = [
        ("OPENIM_CALLBACK__SINKS__FORWARD__BOT__URL", "http://127.0.0.1:9/hook"),
        ("OPENIM_CALLBACK__SINKS__FORWARD__BOT__ONLY__CALLBACKS", "afterSendGroupMessage"),
    ]
    .map(|(key, value)| (key.to_owned(), value.to_owned()));
    let error = Settings::load(None, EnvSource::Map(env.into_iter().collect())).unwrap_err().to_string();
    assert!(
        error.contains("sinks.forward.bot.only.callbacks") && error.contains("afterSendGroupMessage"),
        "{error}"
    );
}

#[tokio::test]
async fn a_target_added_later_takes_the_journal_from_its_oldest_record_or_only_what_comes_from_now() {
    let journal = tempfile::tempdir().unwrap();
    let dir = journal.path().to_str().unwrap();
    let post = async |receiver: &TestReceiver, ids: &[&str]| {
        for id in ids {
            let mut message = packet("carol", "dave", 101);
            message["serverMsgID"] = (*id).into();
            receiver.post_packet("op-start", &message).await.assert_accepted();
        }
    };
    // Before either target is configured.
    let first = TestReceiver::start_with(settings(&[("JOURNAL__DIR", dir)]), |_| {}).await;
    post(&first, &["early-0", "early-1", "early-2"]).await;
    first.caught_up("log", 3).await;
    assert!(first.stop().await.is_clean());

    let (past, fresh) = (Downstream::start(0).await, Downstream::start(0).await);
    let both = [
        ("JOURNAL__DIR", dir),
        ("SINKS__FORWARD__PAST__URL", past.url.as_str()),
        ("SINKS__FORWARD__FRESH__URL", fresh.url.as_str()),
        ("SINKS__FORWARD__FRESH__START", "now"),
    ];
    let second = TestReceiver::start_with(settings(&both), |_| {}).await;
    post(&second, &["late-0", "late-1"]).await;
    second.caught_up("forward.past", 5).await;
    second.caught_up("forward.fresh", 5).await;
    assert!(second.stop().await.is_clean());
    assert_eq!(
        past.keys(),
        ["early-0", "early-1", "early-2", "late-0", "late-1"],
        "start = oldest (the default)"
    );
    assert_eq!(fresh.keys(), ["late-0", "late-1"], "start = now");

    // Once a target has a position, `start` no longer matters: it goes on from there.
    let third = TestReceiver::start_with(settings(&both), |_| {}).await;
    post(&third, &["later-0"]).await;
    third.caught_up("forward.fresh", 6).await;
    third.caught_up("forward.past", 6).await;
    assert!(third.stop().await.is_clean());
    assert_eq!(fresh.keys(), ["late-0", "late-1", "later-0"]);
    assert_eq!(past.keys().len(), 6, "nothing twice");
}
