//! Finding messages in the archive through `GET /messages` and its export,
//! on SQLite, PostgreSQL and MariaDB alike: filters, text search in English
//! and Chinese (terms shorter than a trigram too), keyset pages that neither
//! skip nor repeat while messages arrive, JSON lines and CSV, clear refusals,
//! and who may look.

use crate::helpers::{TestReceiver, packet, settings, unique_table};
use serde_json::{Value, json};

const T0: i64 = 1_732_675_200_000;

/// A message with `text` as its content, of `content_type`, created at `T0 + at`.
fn message(id: &str, send: &str, recv: &str, content_type: i32, content: Value, at: i64) -> Value {
    let mut message = packet(send, recv, content_type);
    message["serverMsgID"] = id.into();
    message["sessionType"] = 1.into();
    message["content"] = content.to_string().into();
    message["createTime"] = (T0 + at).into();
    message
}

/// The messages of the scenario, in the order they are posted.
fn scenario() -> Vec<(&'static str, Value)> {
    let single = "callbackAfterSendSingleMsgCommand";
    let group = "callbackAfterSendGroupMsgCommand";
    let in_group = |mut message: Value| {
        (message["recvID"], message["groupID"], message["sessionType"]) = ("".into(), "g1".into(), 3.into());
        message["callbackCommand"] = group.into();
        message
    };
    vec![
        (single, message("a", "u1", "u2", 101, json!({"content": "Hello, world"}), 0)),
        (single, message("b", "u2", "u1", 101, json!({"content": "你好世界"}), 1)),
        (group, in_group(message("c", "u3", "", 101, json!({"content": "天气很好"}), 2))),
        (single, message("d", "u1", "u2", 102, json!({"sourcePicture": {"url": "hello.png"}}), 3)),
        (
            group,
            in_group(message(
                "e",
                "u1",
                "",
                106,
                json!({"text": "@u3 hello again", "atUserList": ["u3"]}),
                4,
            )),
        ),
    ]
}

/// The serverMsgIDs of an answer's messages, in order.
fn ids(answer: &Value) -> Vec<String> {
    let messages = answer["messages"].as_array().unwrap_or_else(|| panic!("no messages: {answer}"));
    messages.iter().map(|message| message["serverMsgID"].as_str().unwrap().to_owned()).collect()
}

async fn finding_messages(url: &str) {
    let table = unique_table("found");
    let receiver = TestReceiver::start_with(
        settings(&[("SINKS__SQL__URL", url), ("SINKS__SQL__TABLE", &table)]),
        |_| {},
    )
    .await;
    let posted = scenario();
    for (command, body) in &posted {
        let path = format!("/callbackExample/{command}");
        receiver.post(&path, "op-find", body.to_string()).await.assert_accepted();
    }
    // "a" is saved with its seq, then revoked.
    let mut saved = posted[0].1.clone();
    (saved["callbackCommand"], saved["seq"]) = ("callbackAfterMsgSaveDBCommand".into(), 7.into());
    let path = "/callbackExample/callbackAfterMsgSaveDBCommand";
    receiver.post(path, "op-save", saved.to_string()).await.assert_accepted();
    let revoke = json!({"callbackCommand": "callbackBeforeAfterMsgCommand", "conversationID": "si_u1_u2",
        "seq": 7, "userID": "u1"});
    let path = "/callbackExample/callbackBeforeAfterMsgCommand";
    receiver.post(path, "op-revoke", revoke.to_string()).await.assert_accepted();
    receiver.caught_up("sql", 7).await;

    let find = async |query: &str| receiver.get_json(&format!("/messages?{query}")).await;
    // Text search: any case, English and Chinese, a term shorter than a trigram too.
    assert_eq!(ids(&find("q=hello").await), ["e", "a"], "newest first; the picture's content is no text");
    assert_eq!(ids(&find("q=HELLO%2C%20WORLD").await), ["a"]);
    assert_eq!(ids(&find("q=%E5%A5%BD%E4%B8%96").await), ["b"], "好世, two characters");
    assert_eq!(ids(&find("q=%E4%BD%A0%E5%A5%BD%E4%B8%96").await), ["b"], "你好世, a trigram");
    assert_eq!(ids(&find("q=%E5%A4%A9%E6%B0%94").await), ["c"], "天气");
    assert_eq!(ids(&find("q=50%25_off").await), Vec::<String>::new(), "% and _ are taken literally");
    // Filters.
    assert_eq!(ids(&find("conversation_id=si_u1_u2&order=asc").await), ["a", "b", "d"]);
    assert_eq!(ids(&find("conversation_id=sg_g1").await), ["e", "c"]);
    assert_eq!(ids(&find("group_id=g1").await), ["e", "c"]);
    assert_eq!(ids(&find("user=u2").await), ["d", "b", "a"]);
    assert_eq!(ids(&find("send_id=u1").await), ["e", "d", "a"]);
    assert_eq!(ids(&find("recv_id=u1").await), ["b"]);
    assert_eq!(ids(&find("content_type=102").await), ["d"]);
    let from_to = format!("from={}&to=2024-11-27T02:40:00.003Z", T0 + 1);
    assert_eq!(ids(&find(&from_to).await), ["d", "c", "b"]);
    assert_eq!(ids(&find("send_id=u1&q=hello").await), ["e", "a"]);
    // What a message says of itself.
    let found = find("q=hello%2C").await;
    let a = &found["messages"][0];
    assert_eq!(a["conversationID"], "si_u1_u2");
    assert_eq!(a["callbackCommand"], "callbackAfterSendSingleMsgCommand");
    assert_eq!(
        (a["seq"].as_i64(), a["revoked"].as_bool(), a["revokedBy"].as_str()),
        (Some(7), Some(true), Some("u1"))
    );
    assert_eq!(a["text"], "Hello, world");
    assert_eq!(a["sendID"], "u1");
    assert!(a["receivedAt"].as_str().is_some_and(|at| at.ends_with('Z') && at.len() == 27), "{a}");
    assert!(a["revokedAt"].as_str().is_some_and(|at| at.ends_with('Z')), "{a}");
    let e = &find("content_type=106").await["messages"][0];
    assert_eq!((e["groupID"].as_str(), e["text"].as_str()), (Some("g1"), Some("@u3 hello again")));
    assert_eq!(e["callbackCommand"], "callbackAfterSendGroupMsgCommand");

    // Pages, with a message arriving between two of them: no skip, no repeat.
    let first = find("limit=2").await;
    assert_eq!(ids(&first), ["e", "d"]);
    let newer = message("f", "u9", "u8", 101, json!({"content": "late"}), 9);
    receiver.post_packet("op-late", &newer).await.assert_accepted();
    receiver.caught_up("sql", 8).await;
    let cursor = first["next"].as_str().unwrap();
    let second = find(&format!("limit=2&cursor={cursor}")).await;
    assert_eq!(ids(&second), ["c", "b"]);
    let third = find(&format!("limit=2&cursor={}", second["next"].as_str().unwrap())).await;
    assert_eq!(ids(&third), ["a"]);
    assert!(third["next"].is_null(), "the last page says so: {third}");
    let ascending = find("order=asc&limit=4").await;
    assert_eq!(ids(&ascending), ["a", "b", "c", "d"]);
    let rest = find(&format!("order=asc&limit=4&cursor={}", ascending["next"].as_str().unwrap())).await;
    assert_eq!(ids(&rest), ["e", "f"]);

    // Exports: every match, streamed.
    let response =
        receiver.client.get(receiver.url("/messages/export?format=jsonl&user=u1")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let disposition = response.headers()["content-disposition"].to_str().unwrap().to_owned();
    assert!(disposition.starts_with("attachment; filename=\"messages-") && disposition.ends_with(".jsonl\""));
    let lines: Vec<Value> =
        response.text().await.unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let exported: Vec<&str> = lines.iter().map(|line| line["serverMsgID"].as_str().unwrap()).collect();
    assert_eq!(exported, ["e", "d", "b", "a"]);
    let csv =
        receiver.client.get(receiver.url("/messages/export?format=csv&order=asc")).send().await.unwrap();
    assert_eq!(csv.headers()["content-type"], "text/csv; charset=utf-8");
    let csv = csv.text().await.unwrap();
    let rows: Vec<&str> = csv.split("\r\n").filter(|row| !row.is_empty()).collect();
    assert_eq!(rows.len(), 1 + 6, "a header and every message: {csv}");
    assert!(rows[0].starts_with("serverMsgID,conversationID,sendID"));
    assert!(rows[1].starts_with("a,si_u1_u2,u1,u2,,1,101,"), "{}", rows[1]);
    assert!(rows[1].contains(",\"Hello, world\","), "a comma is quoted: {}", rows[1]);
    assert!(receiver.stop().await.is_clean());
}

crate::sql::on_every_database!(finding_messages =>
    messages_are_found_paged_and_exported_from_sqlite,
    messages_are_found_paged_and_exported_from_postgresql,
    messages_are_found_paged_and_exported_from_mariadb);

#[tokio::test]
async fn a_bad_parameter_is_named_and_an_archive_that_is_off_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/archive.sqlite3", dir.path().display());
    let receiver = TestReceiver::start_with(settings(&[("SINKS__SQL__URL", &url)]), |_| {}).await;
    for (query, named) in [
        ("limit=0", "limit=0"),
        ("limit=1001", "limit=1001"),
        ("cursor=junk", "cursor=junk"),
        ("from=yesterday", "from=yesterday"),
        ("order=up", "order=up"),
        ("content_type=text", "content_type=text"),
        ("colour=red", "colour"),
    ] {
        let response = receiver.client.get(receiver.url(&format!("/messages?{query}"))).send().await.unwrap();
        assert_eq!(response.status(), 400, "{query}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["errCode"], 4009, "{body}");
        assert!(body["errMsg"].as_str().unwrap().contains(named), "{body}");
    }
    let export = receiver.client.get(receiver.url("/messages/export?format=xml")).send().await.unwrap();
    assert_eq!(export.status(), 400);
    let export = receiver.client.get(receiver.url("/messages/export?limit=5")).send().await.unwrap();
    assert_eq!(export.status(), 400, "an export has every match");
    assert!(receiver.stop().await.is_clean());

    let off = TestReceiver::start_with(settings(&[("SINKS__SQL__URL", "")]), |_| {}).await;
    for path in ["/messages?q=hello", "/messages/export"] {
        let response = off.client.get(off.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 503, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["errCode"], 5035, "{body}");
        assert!(body["errMsg"].as_str().unwrap().contains("the archive is off"), "{body}");
    }
    assert!(off.stop().await.is_clean());
}

#[tokio::test]
async fn messages_answer_only_loopback_without_a_token_and_only_its_holders_with_one() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/archive.sqlite3", dir.path().display());
    // Behind a proxy on loopback: the client it names is the caller.
    let proxied = [("SINKS__SQL__URL", url.as_str()), ("SERVER__TRUSTED_PROXIES", "127.0.0.1/32")];
    let receiver = TestReceiver::start_with(settings(&proxied), |_| {}).await;
    let from = |address: &str| {
        receiver.client.get(receiver.url("/messages")).header("X-Forwarded-For", address).send()
    };
    let remote = from("203.0.113.7").await.unwrap();
    assert_eq!(remote.status(), 403);
    let body: Value = remote.json().await.unwrap();
    assert_eq!(body["errCode"], 4031, "{body}");
    assert!(body["errMsg"].as_str().unwrap().contains("203.0.113.7"), "{body}");
    let export =
        receiver.client.get(receiver.url("/messages/export")).header("X-Forwarded-For", "203.0.113.7");
    assert_eq!(export.send().await.unwrap().status(), 403);
    assert_eq!(from("127.0.0.1").await.unwrap().status(), 200, "a client on loopback may look");
    assert!(receiver.stop().await.is_clean());

    let with_token = [
        ("SINKS__SQL__URL", url.as_str()),
        ("SERVER__TRUSTED_PROXIES", "127.0.0.1/32"),
        ("AUTH__TOKEN", "s3cret-token-for-tests"),
    ];
    let receiver = TestReceiver::start_with(settings(&with_token), |_| {}).await;
    let get = || receiver.client.get(receiver.url("/messages")).header("X-Forwarded-For", "203.0.113.7");
    assert_eq!(get().send().await.unwrap().status(), 401, "no token");
    let answer = get().bearer_auth("s3cret-token-for-tests").send().await.unwrap();
    assert_eq!(answer.status(), 200, "the token lets a remote caller in");
    assert!(receiver.stop().await.is_clean());
}

/// The messages `/messages` lists once there are `count` of them left.
async fn once_trimmed_to(receiver: &TestReceiver, count: usize) -> Vec<String> {
    crate::helpers::wait_until(std::time::Duration::from_secs(30), async || {
        let left = ids(&receiver.get_json("/messages").await);
        if left.len() == count { Ok(left) } else { Err(format!("not trimmed: {left:?}")) }
    })
    .await
}

/// Rows older than `retention_days` go at start; the rest stay.
async fn old_rows_are_trimmed_at_start(url: &str) {
    let table = unique_table("kept");
    let now = std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap().as_millis() as i64;
    let day = 86_400_000;
    let first = TestReceiver::start_with(
        settings(&[("SINKS__SQL__URL", url), ("SINKS__SQL__TABLE", &table)]),
        |_| {},
    )
    .await;
    for (id, age_days) in [("old-1", 40), ("old-2", 31), ("recent", 29), ("today", 0)] {
        first
            .post_packet(
                &format!("op-{id}"),
                &message(id, "u1", "u2", 101, json!({"content": id}), now - T0 - age_days * day),
            )
            .await
            .assert_accepted();
    }
    first.caught_up("sql", 4).await;
    assert!(first.stop().await.is_clean());
    let kept =
        [("SINKS__SQL__URL", url), ("SINKS__SQL__TABLE", &table), ("SINKS__SQL__RETENTION_DAYS", "30")];
    let second = TestReceiver::start_with(settings(&kept), |_| {}).await;
    let left = once_trimmed_to(&second, 2).await;
    assert_eq!(left, ["today", "recent"]);
    assert!(second.stop().await.is_clean());
}

crate::sql::on_every_database!(old_rows_are_trimmed_at_start =>
    rows_older_than_retention_days_are_deleted_at_start_in_sqlite,
    rows_older_than_retention_days_are_deleted_at_start_in_postgresql,
    rows_older_than_retention_days_are_deleted_at_start_in_mariadb);

/// The partitions of `table` in PostgreSQL, by name.
async fn partitions_of(url: &str, table: &str) -> Vec<String> {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let mut names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::TEXT FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass($1)",
    )
    .bind(table)
    .fetch_all(&pool)
    .await
    .unwrap();
    names.sort();
    names
}

#[tokio::test]
async fn monthly_partitions_on_postgresql_hold_each_month_and_retention_drops_whole_months() {
    let Some(url) = crate::sql::postgres().await else { return };
    let table = unique_table("monthly");
    let now = std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap().as_millis() as i64;
    let day = 86_400_000;
    let monthly = [
        ("SINKS__SQL__URL", url.as_str()),
        ("SINKS__SQL__TABLE", &table),
        ("SINKS__SQL__PARTITION", "month"),
    ];
    let first = TestReceiver::start_with(settings(&monthly), |_| {}).await;
    // 200 days back is in a month that ended before the cutoff (100 days back), whatever today is.
    let ages = [("ancient", 200), ("old", 70), ("today", 0)];
    for (id, age_days) in ages {
        let posted = message(
            id,
            "u1",
            "u2",
            101,
            json!({"content": format!("{id} hello")}),
            now - T0 - age_days * day,
        );
        first.post_packet(&format!("op-{id}"), &posted).await.assert_accepted();
        // A repeat (OpenIM's own retry, or a replay) meets its row.
        first.post_packet(&format!("op-{id}-again"), &posted).await.assert_accepted();
    }
    first.caught_up("sql", 6).await;
    assert_eq!(ids(&first.get_json("/messages?q=hello").await), ["today", "old", "ancient"]);
    assert_eq!(partitions_of(&url, &table).await.len(), 3, "a partition per month of createTime");
    assert!(first.stop().await.is_clean());

    let kept = [monthly[0], monthly[1], monthly[2], ("SINKS__SQL__RETENTION_DAYS", "100")];
    let second = TestReceiver::start_with(settings(&kept), |_| {}).await;
    let left = once_trimmed_to(&second, 2).await;
    assert_eq!(left, ["today", "old"]);
    assert_eq!(partitions_of(&url, &table).await.len(), 2, "the month past the cutoff is dropped whole");
    assert!(second.stop().await.is_clean());
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(&format!("DROP TABLE {table}")).execute(&pool).await.unwrap();
}

#[test]
fn monthly_partitions_anywhere_but_postgresql_stop_start_up_naming_the_key() {
    use openim_callback_receiver::settings::{EnvSource, Settings};
    let env = |url: &str| {
        let pairs =
            [("OPENIM_CALLBACK__SINKS__SQL__URL", url), ("OPENIM_CALLBACK__SINKS__SQL__PARTITION", "month")];
        EnvSource::Map(pairs.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect())
    };
    let refused = Settings::load(None, env("sqlite://data/archive.sqlite3")).unwrap_err().to_string();
    assert!(refused.contains("sinks.sql.partition") && refused.contains("PostgreSQL only"), "{refused}");
    assert!(Settings::load(None, env("postgres://postgres@127.0.0.1:5432/test")).is_ok());
}

#[tokio::test]
async fn an_archive_whose_table_is_not_made_yet_answers_an_empty_page() {
    use openim_callback_receiver::sinks::sql::{SqlSink, search::Query};
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/archive.sqlite3", dir.path().display());
    // The sink makes its table at its first start: until then, nothing is archived.
    let sink = SqlSink::new(&settings(&[("SINKS__SQL__URL", &url)]).sinks.sql).unwrap();
    let page = sink
        .archive()
        .find(&Query { text: Some("hello".into()), limit: 50, ..Query::default() })
        .await
        .unwrap();
    assert!(page.messages.is_empty() && page.next.is_none());
}
