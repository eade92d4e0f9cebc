//! The status page (`GET /`), looked at in a real browser: Debian's chromium,
//! headless. Skipped with a clear line where chromium is absent, a failure
//! when OPENIM_CALLBACK_REQUIRE_SERVICES is set (as `.ci/run` does).
//!
//! `OPENIM_CALLBACK_SCREENSHOT=docs/status-page.png cargo test --test api status_page`
//! also saves the screenshot the README shows.

use crate::helpers::{TestReceiver, packet, settings};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

const DAY_MS: i64 = 86_400_000;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// The chromium binary, or None (after a "skipped" line) where there is none.
pub(crate) fn chromium() -> Option<PathBuf> {
    let candidates = std::env::var_os("OPENIM_CALLBACK_TEST_CHROMIUM")
        .map(PathBuf::from)
        .into_iter()
        .chain(["/usr/bin/chromium", "/usr/bin/chromium-browser"].map(PathBuf::from));
    for candidate in candidates {
        if candidate.is_file() {
            return Some(candidate);
        }
    }
    crate::helpers::skip("no chromium (apt-get install chromium, or set OPENIM_CALLBACK_TEST_CHROMIUM)");
    None
}

/// Runs headless chromium on `url` with `arguments`; its stdout and stderr.
pub(crate) async fn run_chromium(chromium: &Path, url: &str, arguments: &[&str]) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            // Virtual time: the page's first refresh and one more (every 5 s) run without waiting.
            "--virtual-time-budget=6000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(arguments)
        .arg(url)
        .kill_on_drop(true)
        .output();
    let output =
        tokio::time::timeout(Duration::from_secs(90), output).await.expect("chromium in time").unwrap();
    assert!(output.status.success(), "chromium failed: {}", String::from_utf8_lossy(&output.stderr));
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The value of `attribute` in the first tag of the DOM that contains `marker`.
pub(crate) fn attribute_of(dom: &str, marker: &str, attribute: &str) -> String {
    let at = dom.find(marker).unwrap_or_else(|| panic!("{marker} not in the page: {dom}"));
    let start = dom[..at + 1].rfind('<').unwrap();
    let tag = &dom[start..start + dom[start..].find('>').unwrap()];
    let key = format!("{attribute}=\"");
    let value_at = tag.find(&key).unwrap_or_else(|| panic!("no {attribute} in {tag}")) + key.len();
    tag[value_at..value_at + tag[value_at..].find('"').unwrap()].to_owned()
}

#[tokio::test]
async fn the_status_page_charts_what_was_posted_in_a_real_browser() {
    let Some(chromium) = chromium() else { return };
    let receiver = TestReceiver::start().await;
    // Today: 7 texts from 3 people on Android, 2 pictures from one person on the web;
    // a few days back: some more, so the daily chart has history.
    let now = now_ms();
    let mut posted = 0;
    for index in 0..7 {
        let mut message = packet(&format!("user-{}", index % 3), "bob", 101);
        message["senderPlatformID"] = 2.into();
        message["createTime"] = now.into();
        receiver.post_packet(&format!("op-text-{index}"), &message).await.assert_accepted();
        posted += 1;
    }
    for index in 0..2 {
        let mut message = packet("web-user", "alice", 102);
        message["senderPlatformID"] = 5.into();
        message["createTime"] = now.into();
        receiver.post_packet(&format!("op-picture-{index}"), &message).await.assert_accepted();
        posted += 1;
    }
    for days_ago in 1..=6i64 {
        for index in 0..days_ago {
            let mut message = packet(&format!("past-{index}"), "bob", 101);
            message["senderPlatformID"] = 1.into();
            message["createTime"] = (now - days_ago * DAY_MS).into();
            receiver.post_packet(&format!("op-past-{days_ago}-{index}"), &message).await.assert_accepted();
            posted += 1;
        }
    }
    receiver.post_packet("op-bad", &serde_json::json!({"sendID": "x"})).await.assert_rejected(400, 4006);
    receiver.stats_after(posted).await;

    let url = receiver.url("/");
    let (dom, stderr) = run_chromium(&chromium, &url, &["--dump-dom"]).await;
    assert_eq!(attribute_of(&dom, "<body", "data-errors"), "0", "no script error");
    assert!(
        attribute_of(&dom, "<body", "data-refreshes").parse::<u32>().unwrap() >= 1,
        "the page read /stats"
    );
    let console: Vec<&str> = stderr.lines().filter(|line| line.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "the console stays quiet: {console:?}");
    // Messages per minute of arrival: every message posted arrived in the last hour.
    let per_minute = attribute_of(&dom, r#"id="per-minute""#, "data-total-messages");
    assert_eq!(per_minute, posted.to_string());
    // Per day: today holds the 9 messages of 4 senders; 7 days in all.
    let today = openim_callback_receiver::sinks::stats::daily::date_text(now.div_euclid(DAY_MS));
    let today_messages = format!(r#"data-series="messages" data-label="{today}""#);
    assert_eq!(attribute_of(&dom, &today_messages, "data-value"), "9");
    let today_senders = format!(r#"data-series="senders" data-label="{today}""#);
    assert_eq!(attribute_of(&dom, &today_senders, "data-value"), "4");
    assert_eq!(attribute_of(&dom, r#"id="per-day""#, "data-total-messages"), posted.to_string());
    // By content type and platform.
    assert_eq!(attribute_of(&dom, r#"data-label="text""#, "data-value"), (posted - 2).to_string());
    assert_eq!(attribute_of(&dom, r#"data-label="picture""#, "data-value"), "2");
    assert_eq!(attribute_of(&dom, r#"data-label="web""#, "data-value"), "2");
    assert_eq!(attribute_of(&dom, r#"data-label="android""#, "data-value"), "7");
    // Sinks, journal and refusals.
    assert!(dom.contains(r#"data-sink="stats""#) && dom.contains(r#"data-sink="log""#), "{dom}");
    assert!(dom.contains(r#"data-reason="invalid_json""#), "{dom}");
    assert!(dom.contains("version 0."), "{dom}");

    screenshot(&chromium, &url, "1280,1400", "OPENIM_CALLBACK_SCREENSHOT").await;
    assert!(receiver.stop().await.is_clean());
}

/// Takes a screenshot of `url` at `window` ("width,height") and checks it is
/// a real picture; kept at the path in `keep_variable` when that is set (how
/// the pictures in docs/ are made).
pub(crate) async fn screenshot(chromium: &Path, url: &str, window: &str, keep_variable: &str) {
    let shots = tempfile::tempdir().unwrap();
    let shot = shots.path().join("page.png");
    let shot_argument = format!("--screenshot={}", shot.display());
    run_chromium(chromium, url, &[&shot_argument, &format!("--window-size={window}")]).await;
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "a screenshot of the page");
    if let Some(keep) = std::env::var_os(keep_variable) {
        std::fs::write(&keep, &png).unwrap();
    }
}

#[tokio::test]
async fn with_a_token_a_browser_is_asked_for_it_and_the_page_reads_stats_with_it() {
    let token = "status-page-token-0123";
    let receiver = TestReceiver::start_with(settings(&[("AUTH__TOKEN", token)]), |_| {}).await;
    let client = crate::helpers::http_client();
    let refused = client.get(receiver.url("/")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    let challenge = refused.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(challenge.starts_with("Basic "), "{challenge}");
    assert_eq!(client.get(receiver.url("/stats")).send().await.unwrap().status(), 401);
    let wrong =
        client.get(receiver.url("/")).basic_auth("anyone", Some("wrong-token-0123456789")).send().await;
    assert_eq!(wrong.unwrap().status(), 401);
    for path in ["/", "/stats", "/stats/daily"] {
        let answer = client.get(receiver.url(path)).basic_auth("anyone", Some(token)).send().await.unwrap();
        assert_eq!(answer.status(), 200, "{path}");
    }
    let page = client.get(receiver.url("/")).bearer_auth(token).send().await.unwrap();
    assert!(page.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("connect-src 'self'"), "the page talks only to this receiver: {csp}");
    assert!(page.text().await.unwrap().contains("<title>OpenIM callback receiver</title>"));
    assert!(receiver.stop().await.is_clean());
}
