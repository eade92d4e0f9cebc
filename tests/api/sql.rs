//! The SQL archive sink against the real PostgreSQL and MariaDB on this
//! machine, and SQLite (the default archive): every field arrives, an outage loses and duplicates nothing, a
//! crash of the binary loses no row answered 200.

use crate::helpers::{TcpProxy, TestReceiver, packet, sample, service_url, settings, unique_table};
use serde_json::Value;
use sqlx::Row;
use std::time::Duration;

/// Three tests of one scenario (an `async fn(url: &str)`): on SQLite in a
/// directory of its own, on PostgreSQL and on MariaDB (those two skipped, saying
/// so, where the service is not running).
macro_rules! on_every_database {
    ($scenario:path => $sqlite:ident, $postgres:ident, $mariadb:ident) => {
        #[tokio::test]
        async fn $sqlite() {
            let dir = tempfile::tempdir().unwrap();
            $scenario(&format!("sqlite://{}/archive.sqlite3", dir.path().display())).await;
        }

        #[tokio::test]
        async fn $postgres() {
            let Some(url) = crate::sql::postgres().await else { return };
            $scenario(&url).await;
        }

        #[tokio::test]
        async fn $mariadb() {
            let Some(url) = crate::sql::mariadb().await else { return };
            $scenario(&url).await;
        }
    };
}
pub(crate) use on_every_database;

const POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const MARIADB_URL: &str = "mysql://root@127.0.0.1:3306/test";

pub(crate) async fn postgres() -> Option<String> {
    service_url("PostgreSQL", "OPENIM_CALLBACK_TEST_POSTGRES_URL", POSTGRES_URL).await
}

pub(crate) async fn mariadb() -> Option<String> {
    service_url("MariaDB", "OPENIM_CALLBACK_TEST_MYSQL_URL", MARIADB_URL).await
}

fn sql_settings(
    url: &str,
    table: &str,
    extra: &[(&str, &str)],
) -> openim_callback_receiver::settings::Settings {
    let mut overrides =
        vec![("SINKS__SQL__ENABLED", "true"), ("SINKS__SQL__URL", url), ("SINKS__SQL__TABLE", table)];
    overrides.extend_from_slice(extra);
    settings(&overrides)
}

/// Drops a test's table (best effort: a leftover table harms no other test).
async fn drop_table(url: &str, table: &str) {
    let statement = format!("DROP TABLE IF EXISTS {table}");
    if url.starts_with("postgres") {
        if let Ok(pool) = sqlx::PgPool::connect(url).await {
            let _ = sqlx::query(&statement).execute(&pool).await;
        }
    } else if let Ok(pool) = sqlx::MySqlPool::connect(url).await {
        let _ = sqlx::query(&statement).execute(&pool).await;
    }
}

/// The messages the field test posts: the samples, a null list, and content with U+0000.
fn posted() -> Vec<Value> {
    let mut messages: Vec<Value> = ["text.json", "picture.json", "rest-api-v3.0.json"]
        .iter()
        .map(|name| serde_json::from_slice(&sample(name)).unwrap())
        .collect();
    let mut odd = packet("ünïcode", "bob", 101);
    odd["content"] = "{\"content\":\"nul \u{0} here <b>&</b>\"}".into();
    odd["atUserList"] = serde_json::json!(["x", "y"]);
    messages.push(odd);
    messages
}

async fn every_field_arrives(url: &str, read_rows: impl AsyncFn(&str, &str) -> Vec<Value>) {
    let table = unique_table("fields");
    let micros_now = || std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap().as_micros() as i64;
    let started_us = micros_now();
    let receiver = TestReceiver::start_with(sql_settings(url, &table, &[]), |_| {}).await;
    let messages = posted();
    for (index, message) in messages.iter().enumerate() {
        receiver.post_packet(&format!("op-{index}"), message).await.assert_accepted();
    }
    let sql = receiver.caught_up("sql", messages.len() as u64).await;
    assert_eq!(sql["handled"], messages.len() as u64, "{sql}");
    let rows = read_rows(url, &table).await;
    assert_eq!(rows.len(), messages.len());
    for (index, message) in messages.iter().enumerate() {
        let row = rows
            .iter()
            .find(|row| row["server_msg_id"] == message["serverMsgID"])
            .unwrap_or_else(|| panic!("no row for {}", message["serverMsgID"]));
        for (column, key) in [
            ("client_msg_id", "clientMsgID"),
            ("send_id", "sendID"),
            ("recv_id", "recvID"),
            ("sender_platform_id", "senderPlatformID"),
            ("sender_nickname", "senderNickname"),
            ("session_type", "sessionType"),
            ("msg_from", "msgFrom"),
            ("content_type", "contentType"),
            ("status", "status"),
            ("create_time", "createTime"),
            ("send_time", "sendTime"),
            ("seq", "seq"),
            ("face_url", "faceURL"),
            ("ex", "ex"),
        ] {
            let expected = match (&message[key], column) {
                (Value::Null, "sender_nickname" | "face_url" | "ex" | "client_msg_id") => Value::from(""),
                (Value::Null, _) => Value::from(0),
                (value, _) => value.clone(),
            };
            assert_eq!(row[column], expected, "{column} of message {index}");
        }
        let content = message["content"].as_str().unwrap_or_default().replace('\0', "\u{fffd}");
        assert_eq!(
            row["content"].as_str().unwrap().replace('\0', "\u{fffd}"),
            content,
            "content of message {index}"
        );
        let at_users = if message["atUserList"].is_null() {
            serde_json::json!([])
        } else {
            message["atUserList"].clone()
        };
        assert_eq!(row["at_user_list"], at_users, "atUserList of message {index}");
        assert_eq!(row["operation_id"], format!("op-{index}"));
        let received = row["received_us"].as_i64().unwrap();
        assert!((started_us..=micros_now()).contains(&received), "received_at in UTC, to the µs: {received}");
        assert_eq!(row["packet"]["sendID"], message["sendID"], "the raw packet is kept as JSON");
    }
    assert!(receiver.stop().await.is_clean());
    drop_table(url, &table).await;
}

/// Rows as JSON, read by `i64` and `String` (PostgreSQL's and SQLite's rows alike).
macro_rules! rows_json {
    ($rows:expr) => {
        $rows
            .iter()
            .map(|row| {
                row_json(
                    row,
                    |row, index| row.try_get::<i64, _>(index).ok(),
                    |row, index| row.try_get::<String, _>(index).ok(),
                )
            })
            .collect()
    };
}

async fn postgres_rows(url: &str, table: &str) -> Vec<Value> {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let query = format!(
        "SELECT server_msg_id, client_msg_id, send_id, recv_id, sender_platform_id::BIGINT, sender_nickname,
            session_type::BIGINT, msg_from::BIGINT, content_type::BIGINT, status::BIGINT, create_time, send_time,
            seq, content, at_user_list::TEXT, face_url, ex, operation_id, packet::TEXT,
            (EXTRACT(EPOCH FROM received_at) * 1000000)::BIGINT FROM {table}"
    );
    let rows = sqlx::query(&query).fetch_all(&pool).await.unwrap();
    rows_json!(rows)
}

async fn mariadb_rows(url: &str, table: &str) -> Vec<Value> {
    let pool = sqlx::MySqlPool::connect(url).await.unwrap();
    let query = format!(
        "SELECT server_msg_id, client_msg_id, send_id, recv_id, sender_platform_id, sender_nickname, session_type,
            msg_from, content_type, status, create_time, send_time, seq, content, CAST(at_user_list AS CHAR),
            face_url, ex, operation_id, CAST(packet AS CHAR),
            TIMESTAMPDIFF(MICROSECOND, '1970-01-01 00:00:00', received_at) FROM {table}"
    );
    let rows = sqlx::query(&query).fetch_all(&pool).await.unwrap();
    rows.iter()
        .map(|row| {
            row_json(
                row,
                |row, index| {
                    row.try_get::<i64, _>(index)
                        .ok()
                        .or_else(|| row.try_get::<i32, _>(index).ok().map(i64::from))
                },
                |row, index| row.try_get::<String, _>(index).ok(),
            )
        })
        .collect()
}

async fn sqlite_rows(url: &str, table: &str) -> Vec<Value> {
    let pool = sqlx::SqlitePool::connect(url).await.unwrap();
    // received_at is RFC 3339 text to the microsecond: whole seconds, then the fraction.
    let query = format!(
        "SELECT server_msg_id, client_msg_id, send_id, recv_id, sender_platform_id, sender_nickname, session_type,
            msg_from, content_type, status, create_time, send_time, seq, content, at_user_list,
            face_url, ex, operation_id, packet,
            CAST(strftime('%s', substr(received_at, 1, 19)) AS INTEGER) * 1000000
                + CAST(substr(received_at, 21, 6) AS INTEGER) FROM {table}"
    );
    let rows = sqlx::query(&query).fetch_all(&pool).await.unwrap();
    rows_json!(rows)
}

/// A row as JSON, by the columns every query selects in the same order.
fn row_json<R>(
    row: &R,
    number: impl Fn(&R, usize) -> Option<i64>,
    text: impl Fn(&R, usize) -> Option<String>,
) -> Value {
    let names = [
        "server_msg_id",
        "client_msg_id",
        "send_id",
        "recv_id",
        "sender_platform_id",
        "sender_nickname",
        "session_type",
        "msg_from",
        "content_type",
        "status",
        "create_time",
        "send_time",
        "seq",
        "content",
        "at_user_list",
        "face_url",
        "ex",
        "operation_id",
        "packet",
        "received_us",
    ];
    let mut object = serde_json::Map::new();
    for (index, name) in names.iter().enumerate() {
        let value = match *name {
            "at_user_list" | "packet" => serde_json::from_str(&text(row, index).unwrap()).unwrap(),
            "sender_platform_id" | "session_type" | "msg_from" | "content_type" | "status"
            | "create_time" | "send_time" | "seq" | "received_us" => Value::from(number(row, index).unwrap()),
            _ => Value::from(text(row, index).unwrap()),
        };
        object.insert((*name).to_owned(), value);
    }
    Value::Object(object)
}

#[tokio::test]
async fn every_field_arrives_in_postgresql() {
    let Some(url) = postgres().await else { return };
    every_field_arrives(&url, async |url, table| postgres_rows(url, table).await).await;
}

#[tokio::test]
async fn every_field_arrives_in_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/archive.sqlite3", dir.path().display());
    every_field_arrives(&url, async |url, table| sqlite_rows(url, table).await).await;
}

#[tokio::test]
async fn every_field_arrives_in_mariadb() {
    let Some(url) = mariadb().await else { return };
    every_field_arrives(&url, async |url, table| mariadb_rows(url, table).await).await;
}

/// The database cut by a proxy while 1,000 messages arrive: all answered 200
/// in time, the sink degraded and `/readyz` still 200; restored: every row, once.
async fn an_outage_loses_and_duplicates_nothing(
    url: &str,
    host_port: &str,
    count_rows: impl AsyncFn(&str, &str) -> i64,
) {
    let proxy = TcpProxy::start(host_port).await;
    let proxied = url.replace(host_port, &proxy.address.to_string());
    let table = unique_table("outage");
    let extra = [("SERVER__RESPONSE_TIMEOUT", "2s")];
    let receiver = TestReceiver::start_with(sql_settings(&proxied, &table, &extra), |_| {}).await;
    receiver.post_packet("op-first", &packet("first", "bob", 101)).await.assert_accepted();
    receiver.caught_up("sql", 1).await;

    proxy.cut();
    for index in 0..1000 {
        let mut message = packet(&format!("user-{index}"), "bob", 101);
        message["serverMsgID"] = format!("outage-{index}").into();
        receiver.post_packet(&format!("op-{index}"), &message).await.assert_accepted();
    }
    let degraded = receiver.sink_report("sql", |sink| sink["state"] == "degraded").await;
    assert_eq!(degraded["state"], "degraded", "{degraded}");
    assert!(degraded["last_error"].is_string(), "{degraded}");
    let ready = receiver.client.get(receiver.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "a remote target down is not this receiver's unreadiness");

    proxy.restore();
    let sql = receiver.caught_up("sql", 1001).await;
    assert!(sql["retries"].as_u64().unwrap() >= 1, "{sql}");
    assert_eq!(count_rows(url, &table).await, 1001, "every message, none twice");
    assert!(receiver.stop().await.is_clean());
    drop_table(url, &table).await;
}

#[tokio::test]
async fn a_postgresql_outage_loses_and_duplicates_nothing() {
    let Some(url) = postgres().await else { return };
    an_outage_loses_and_duplicates_nothing(&url, "127.0.0.1:5432", async |url, table| {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        sqlx::query_scalar(&format!("SELECT COUNT(DISTINCT server_msg_id) FROM {table}"))
            .fetch_one(&pool)
            .await
            .unwrap()
    })
    .await;
}

#[tokio::test]
async fn a_mariadb_outage_loses_and_duplicates_nothing() {
    let Some(url) = mariadb().await else { return };
    an_outage_loses_and_duplicates_nothing(&url, "127.0.0.1:3306", async |url, table| {
        let pool = sqlx::MySqlPool::connect(url).await.unwrap();
        sqlx::query_scalar(&format!("SELECT COUNT(DISTINCT server_msg_id) FROM {table}"))
            .fetch_one(&pool)
            .await
            .unwrap()
    })
    .await;
}

/// A database that refuses connections: sqlx alone would say "pool timed
/// out"; the sink says why, and which setting bounded the wait. Messages are
/// still answered 200 and kept, and `/readyz` stays 200.
#[tokio::test]
async fn a_database_that_refuses_connections_is_named_as_such() {
    for scheme in ["postgres", "mysql"] {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let url = format!("{scheme}://root@{closed}/test");
        let extra = [("SINKS__SQL__CONNECT_TIMEOUT", "200ms")];
        let receiver = TestReceiver::start_with(sql_settings(&url, "never_created", &extra), |_| {}).await;
        receiver.post_packet("op-kept", &packet("alice", "bob", 101)).await.assert_accepted();
        let sql = receiver.sink_report("sql", |sink| sink["last_error"].is_string()).await;
        let error = sql["last_error"].as_str().unwrap();
        assert!(
            error.starts_with("no database connection within sinks.sql.connect_timeout (200ms): ")
                && error.contains("Connection refused"),
            "{scheme}: {error}"
        );
        assert_eq!(sql["state"], "degraded", "{sql}");
        assert_eq!(sql["lag_records"], 1, "{sql}");
        let ready = receiver.client.get(receiver.url("/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_under_load_every_row_answered_200_is_in_postgresql_exactly_once() {
    use crate::binary::{RunningBinary, stats_of};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let Some(url) = postgres().await else { return };
    let table = unique_table("crash");
    let workdir = tempfile::tempdir().unwrap();
    let env = [
        ("OPENIM_CALLBACK__SINKS__SQL__ENABLED", "true"),
        ("OPENIM_CALLBACK__SINKS__SQL__URL", url.as_str()),
        ("OPENIM_CALLBACK__SINKS__SQL__TABLE", table.as_str()),
    ];
    let mut first = RunningBinary::start(workdir.path(), &env).await;
    let stop = Arc::new(AtomicBool::new(false));
    let clients = crate::journal_binary::load(first.address, "sql", Arc::clone(&stop));
    crate::binary::wait_for_accepted(first.address, 300).await;
    first.child.start_kill().unwrap();
    let _ = first.child.wait().await;
    stop.store(true, Ordering::Relaxed);
    let mut answered = std::collections::HashSet::new();
    for client in clients {
        answered.extend(client.await.unwrap());
    }
    assert!(answered.len() >= 300, "{}", answered.len());

    let mut second = RunningBinary::start(workdir.path(), &env).await;
    for _ in 0..3000 {
        if stats_of(second.address).await["sinks"]["sql"]["lag_records"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(second.terminate().await.code(), Some(0));
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let ids: Vec<String> =
        sqlx::query_scalar(&format!("SELECT server_msg_id FROM {table}")).fetch_all(&pool).await.unwrap();
    let distinct: std::collections::HashSet<String> = ids.iter().cloned().collect();
    assert_eq!(distinct.len(), ids.len(), "no row twice");
    let missing: Vec<_> = answered.difference(&distinct).collect();
    assert!(missing.is_empty(), "answered 200 but not archived: {missing:?}");
    drop_table(&url, &table).await;
}

/// Posts six messages of which the one `refused` makes the database refuse its row: the others
/// are all archived, behind it too, and the refused one is counted, not silently cut or dropped.
/// `fix`: what lets the database take the refused row: run, then the dead
/// letter is retried and must be archived, once.
async fn a_refused_row_costs_that_row_only(
    url: &str,
    table: &str,
    refused: Value,
    read_rows: impl AsyncFn(&str, &str) -> Vec<Value>,
    fix: impl AsyncFn(),
) {
    let receiver = TestReceiver::start_with(sql_settings(url, table, &[]), |_| {}).await;
    let mut expected = Vec::new();
    for index in 0..6 {
        let message = if index == 2 {
            refused.clone()
        } else {
            let mut message = packet("a", "b", 101);
            message["serverMsgID"] = format!("srv-{index}").into();
            expected.push(format!("srv-{index}"));
            message
        };
        receiver.post_packet(&format!("op-{index}"), &message).await.assert_accepted();
    }
    let report = receiver.caught_up("sql", 6).await;
    assert_eq!((report["handled"].as_u64(), report["failed"].as_u64()), (Some(5), Some(1)), "{report}");
    assert!(report["last_error"].as_str().unwrap().starts_with("record 3 refused"), "{report}");
    assert_eq!(report["dead_letters"], 1, "{report}");
    let dead = receiver.get_json("/sinks/sql/dead-letters").await;
    assert_eq!(
        (dead["dead_letters"][0]["seq"].as_u64(), dead["dead_letters"][0]["operationID"].as_str()),
        (Some(3), Some("op-2")),
        "{dead}"
    );
    let mut archived: Vec<String> = read_rows(url, table)
        .await
        .iter()
        .map(|row| row["server_msg_id"].as_str().unwrap().to_owned())
        .collect();
    archived.sort();
    assert_eq!(archived, expected);
    fix().await;
    let retried = receiver.client.post(receiver.url("/sinks/sql/dead-letters/retry")).send().await.unwrap();
    let outcome: Value = retried.json().await.unwrap();
    assert_eq!((outcome["retried"].as_u64(), outcome["delivered"].as_u64()), (Some(1), Some(1)), "{outcome}");
    let archived = read_rows(url, table).await;
    let refused_id = refused["serverMsgID"].as_str().unwrap();
    assert_eq!(
        archived.iter().filter(|row| row["server_msg_id"] == refused_id).count(),
        1,
        "archived once, after the fix"
    );
    assert!(receiver.stop().await.is_clean());
}

#[tokio::test]
async fn a_row_postgresql_refuses_is_counted_and_the_rows_behind_it_are_archived() {
    let Some(url) = postgres().await else { return };
    let table = unique_table("refused");
    // The table as the sink creates it, with a constraint that refuses one message.
    let receiver = TestReceiver::start_with(sql_settings(&url, &table, &[]), |_| {}).await;
    receiver.post_packet("op-create", &packet("x", "y", 101)).await.assert_accepted();
    receiver.caught_up("sql", 1).await;
    receiver.stop().await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query(&format!("DELETE FROM {table}")).execute(&pool).await.unwrap();
    let constraint =
        format!("ALTER TABLE {table} ADD CONSTRAINT no_poison CHECK (server_msg_id <> 'srv-poison')");
    sqlx::query(&constraint).execute(&pool).await.unwrap();
    let mut poison = packet("a", "b", 101);
    poison["serverMsgID"] = "srv-poison".into();
    let fix = async || {
        sqlx::query(&format!("ALTER TABLE {table} DROP CONSTRAINT no_poison")).execute(&pool).await.unwrap();
    };
    a_refused_row_costs_that_row_only(&url, &table, poison, postgres_rows, fix).await;
    drop_table(&url, &table).await;
}

#[tokio::test]
async fn a_row_mariadb_refuses_is_counted_and_long_values_are_kept_whole() {
    let Some(url) = mariadb().await else { return };
    let table = unique_table("refused");
    // An id longer than its VARCHAR(255) column: refused loudly, never cut short.
    let mut too_long = packet("a", &"r".repeat(300), 101);
    too_long["serverMsgID"] = "srv-long-recv".into();
    let fix = async || {
        let pool = sqlx::MySqlPool::connect(&url).await.unwrap();
        let widen = format!("ALTER TABLE {table} MODIFY recv_id VARCHAR(320) NOT NULL");
        sqlx::query(&widen).execute(&pool).await.unwrap();
    };
    a_refused_row_costs_that_row_only(&url, &table, too_long, mariadb_rows, fix).await;
    // A 100 KiB ex (past TEXT's 64 KiB) is stored whole.
    let receiver = TestReceiver::start_with(sql_settings(&url, &table, &[]), |_| {}).await;
    let mut large = packet("big", "b", 101);
    large["ex"] = "e".repeat(100 * 1024).into();
    receiver.post_packet("op-large", &large).await.assert_accepted();
    receiver.caught_up("sql", 1).await;
    let rows = mariadb_rows(&url, &table).await;
    let row = rows.iter().find(|row| row["send_id"] == "big").expect("the large row");
    assert_eq!(row["ex"].as_str().unwrap().len(), 100 * 1024);
    assert!(receiver.stop().await.is_clean());
    drop_table(&url, &table).await;
}

#[tokio::test]
async fn replicas_creating_the_postgresql_table_at_one_moment_archive_every_row() {
    let Some(url) = postgres().await else { return };
    // Rounds of four receivers whose first delivery creates one new table at the same moment
    // (without a lock, PostgreSQL can answer one of them a unique violation on pg_type).
    for _ in 0..3 {
        let table = unique_table("race");
        let mut receivers = Vec::new();
        for _ in 0..4 {
            receivers.push(TestReceiver::start_with(sql_settings(&url, &table, &[]), |_| {}).await);
        }
        let posts = receivers.iter().enumerate().map(|(index, receiver)| {
            let mut message = packet("a", "b", 101);
            message["serverMsgID"] = format!("srv-race-{index}").into();
            async move { receiver.post_packet("op", &message).await.assert_accepted() }
        });
        futures_util::future::join_all(posts).await;
        for receiver in &receivers {
            let report = receiver.caught_up("sql", 1).await;
            assert_eq!(report["failed"], 0, "{report}");
        }
        assert_eq!(postgres_rows(&url, &table).await.len(), 4);
        for receiver in receivers {
            receiver.stop().await;
        }
        drop_table(&url, &table).await;
    }
}

#[tokio::test]
async fn a_database_that_stops_answering_mid_insert_fails_the_attempt_instead_of_hanging() {
    let Some(url) = postgres().await else { return };
    let proxy = TcpProxy::start("127.0.0.1:5432").await;
    let proxied = url.replace("127.0.0.1:5432", &proxy.address.to_string());
    let table = unique_table("stalled");
    let receiver =
        TestReceiver::start_with(sql_settings(&proxied, &table, &[("SINKS__SQL__TIMEOUT", "1s")]), |_| {})
            .await;
    receiver.post_packet("op-0", &packet("a", "b", 101)).await.assert_accepted();
    receiver.caught_up("sql", 1).await;
    // A blackhole: the pooled connections stay open and nothing answers.
    proxy.stall();
    for index in 1..4 {
        receiver
            .post_packet(&format!("op-{index}"), &packet("a", &format!("b{index}"), 101))
            .await
            .assert_accepted();
    }
    let stalled = receiver
        .sink_report("sql", |report| {
            report["state"] == "degraded"
                && report["last_error"].as_str().is_some_and(|error| error.contains("sinks.sql.timeout"))
        })
        .await;
    assert_eq!(stalled["lag_records"], 3, "{stalled}");
    proxy.restore();
    receiver.caught_up("sql", 4).await;
    assert_eq!(postgres_rows(&url, &table).await.len(), 4);
    assert!(receiver.stop().await.is_clean());
    drop_table(&url, &table).await;
}

#[tokio::test]
async fn a_database_that_does_not_exist_is_named_at_start_before_any_message() {
    let Some(url) = postgres().await else { return };
    let missing = format!("{}/no_such_database_here", url.rsplit_once('/').unwrap().0);
    let workdir = tempfile::tempdir().unwrap();
    let env = [
        ("OPENIM_CALLBACK__SINKS__SQL__ENABLED", "true"),
        ("OPENIM_CALLBACK__SINKS__SQL__URL", missing.as_str()),
    ];
    let mut binary = crate::binary::RunningBinary::start(workdir.path(), &env).await;
    let sql = crate::helpers::wait_until(Duration::from_secs(30), async || {
        let stats = crate::binary::stats_of(binary.address).await;
        let sql = stats["sinks"]["sql"].clone();
        if sql["last_error"].is_string() { Ok(sql) } else { Err(format!("{sql}")) }
    })
    .await;
    assert_eq!(sql["state"], "degraded", "{sql}");
    let error = sql["last_error"].as_str().unwrap();
    assert!(
        error.contains("no_such_database_here")
            && error.contains("check the user, password and database name"),
        "{error}"
    );
    assert_eq!(binary.terminate().await.code(), Some(0), "no message was waiting for it");
    let lines = binary.lines.await.unwrap();
    let started = |sink: &str, level: &str| {
        lines.iter().any(|line| line["sink"] == sink && line["level"] == level && line["target"] != "message")
    };
    assert!(started("sql", "ERROR"), "one ERROR line for the sql sink");
    assert!(started("log", "INFO") && started("stats", "INFO"), "a start-up line per sink");
}

#[tokio::test]
async fn a_database_unreachable_at_start_shows_running_once_it_answers_before_any_message() {
    let Some(url) = postgres().await else { return };
    let proxy = TcpProxy::start("127.0.0.1:5432").await;
    proxy.cut();
    let proxied = url.replace("127.0.0.1:5432", &proxy.address.to_string());
    let table = unique_table("recheck");
    let receiver = TestReceiver::start_with(
        sql_settings(&proxied, &table, &[("SINKS__SQL__CONNECT_TIMEOUT", "300ms")]),
        |_| {},
    )
    .await;
    let down = receiver.sink_report("sql", |report| report["state"] == "degraded").await;
    assert!(down["last_error"].is_string(), "{down}");
    proxy.restore();
    // No message arrives, yet the sink says its target is back (the check is tried again).
    let up = receiver.sink_report("sql", |report| report["state"] == "running").await;
    assert_eq!(up["handled"], 0, "{up}");
    assert!(receiver.stop().await.is_clean());
    drop_table(&url, &table).await;
}
