//! `/messages.html`, the page to search and browse the archive, in a real
//! browser (Debian's chromium, headless; skipped with a clear line where it
//! is absent): a search finds a Chinese message, paging goes on where the
//! page before ended, the conversation view shows messages in order with
//! their revoked marks, and the console stays quiet.

use crate::helpers::{TestReceiver, packet, settings};
use crate::status_page::{attribute_of, chromium, run_chromium, screenshot};
use serde_json::json;

const T0: i64 = 1_732_675_200_000;

/// The `data-id`s of the messages inside the list whose tag holds `list`, in order.
fn ids_in(dom: &str, list: &str) -> Vec<String> {
    let start = dom.find(list).unwrap_or_else(|| panic!("{list} not in the page: {dom}"));
    let end = start + dom[start..].find("</ol>").unwrap();
    dom[start..end]
        .split("data-id=\"")
        .skip(1)
        .map(|rest| rest[..rest.find('"').unwrap()].to_owned())
        .collect()
}

fn assert_quiet(dom: &str, stderr: &str) {
    assert_eq!(attribute_of(dom, "<body", "data-errors"), "0", "no script error");
    let console: Vec<&str> = stderr.lines().filter(|line| line.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "the console stays quiet: {console:?}");
}

#[tokio::test]
async fn the_messages_page_searches_pages_and_shows_a_conversation_in_a_real_browser() {
    let Some(chromium) = chromium() else { return };
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/archive.sqlite3", dir.path().display());
    let receiver = TestReceiver::start_with(settings(&[("SINKS__SQL__URL", &url)]), |_| {}).await;
    let texts = ["good morning", "你好世界", "how are you?", "fine, thanks", "see you"];
    for (index, text) in texts.iter().enumerate() {
        let (send, recv) = if index % 2 == 0 { ("u1", "u2") } else { ("u2", "u1") };
        let mut message = packet(send, recv, 101);
        message["serverMsgID"] = format!("m{index}").into();
        message["sessionType"] = 1.into();
        message["senderNickname"] = if send == "u1" { "Amy" } else { "Bo" }.into();
        message["content"] = json!({ "content": text }).to_string().into();
        message["createTime"] = (T0 + index as i64 * 60_000).into();
        message["seq"] = (index + 1).into();
        receiver.post_packet(&format!("op-{index}"), &message).await.assert_accepted();
    }
    // "how are you?" (seq 3) is revoked.
    let revoke = json!({"callbackCommand": "callbackBeforeAfterMsgCommand", "conversationID": "si_u1_u2",
        "seq": 3, "userID": "u1"});
    receiver
        .post("/callbackExample/callbackBeforeAfterMsgCommand", "op-revoke", revoke.to_string())
        .await
        .assert_accepted();
    receiver.caught_up("sql", 6).await;

    // A search for 你好, as a shared link would open it.
    let (dom, stderr) =
        run_chromium(&chromium, &receiver.url("/messages.html?q=%E4%BD%A0%E5%A5%BD"), &["--dump-dom"]).await;
    assert_quiet(&dom, &stderr);
    assert_eq!(attribute_of(&dom, "<body", "data-searches"), "1");
    assert_eq!(ids_in(&dom, r#"id="results""#), ["m1"]);
    assert!(dom.contains("你好世界"), "the text is shown");

    // Pages of two, newest first: the second goes on where the first ended.
    let first_url = receiver.url("/messages.html?conversation_id=si_u1_u2&limit=2");
    let (dom, stderr) = run_chromium(&chromium, &first_url, &["--dump-dom"]).await;
    assert_quiet(&dom, &stderr);
    assert_eq!(ids_in(&dom, r#"id="results""#), ["m4", "m3"]);
    let next = attribute_of(&dom, r#"id="results""#, "data-next");
    assert!(!next.is_empty(), "a next page");
    let (dom, _) = run_chromium(&chromium, &format!("{first_url}&cursor={next}"), &["--dump-dom"]).await;
    assert_eq!(ids_in(&dom, r#"id="results""#), ["m2", "m1"]);

    // The conversation around "how are you?", oldest first, with its revoked mark.
    let around = receiver.url(&format!("/messages.html?conversation_id=si_u1_u2&around={}", T0 + 2 * 60_000));
    let (dom, stderr) = run_chromium(&chromium, &around, &["--dump-dom"]).await;
    assert_quiet(&dom, &stderr);
    assert_eq!(ids_in(&dom, r#"id="conversation""#), ["m0", "m1", "m2", "m3", "m4"]);
    assert_eq!(attribute_of(&dom, r#"class="message current""#, "data-id"), "m2");
    assert_eq!(attribute_of(&dom, r#"class="message current""#, "data-revoked"), "true");
    assert!(dom.contains("revoked by u1"), "{dom}");

    screenshot(&chromium, &around, "1280,900", "OPENIM_CALLBACK_MESSAGES_SCREENSHOT").await;
    assert!(receiver.stop().await.is_clean());
}

#[tokio::test]
async fn the_messages_page_answers_only_loopback_without_a_token() {
    let settings = settings(&[("SINKS__SQL__URL", ""), ("SERVER__TRUSTED_PROXIES", "127.0.0.1/32")]);
    let receiver = TestReceiver::start_with(settings, |_| {}).await;
    let page = |address: &'static str| {
        receiver.client.get(receiver.url("/messages.html")).header("X-Forwarded-For", address).send()
    };
    assert_eq!(page("203.0.113.9").await.unwrap().status(), 403);
    let local = page("127.0.0.1").await.unwrap();
    assert_eq!(local.status(), 200);
    assert!(local.headers()["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    assert!(receiver.stop().await.is_clean());
}
