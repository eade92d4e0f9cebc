//! The message family in the SQL archive, on the real PostgreSQL and MariaDB
//! and on SQLite:
//! a table the previous release created gains the new columns without loss,
//! groups get `group_id` and OpenIM's `conversation_id`, a saved-to-database
//! callback fills the row's seq, and a revoke marks the row it names, or waits
//! in a row of its own until the seq is known.

use crate::helpers::{TestReceiver, sample, settings, unique_table};
use serde_json::Value;
use sqlx::Row;

/// The table as the release before the message family created it (its own statements).
/// (SQLite came after it: its table is made the same way, to take the same path.)
fn previous_release_table(table: &str, url: &str) -> String {
    let (text, key, json, time, int) = if url.starts_with("postgres") {
        ("TEXT", "TEXT", "JSONB", "TIMESTAMPTZ", "INTEGER")
    } else if url.starts_with("sqlite") {
        ("TEXT", "TEXT", "TEXT", "TEXT", "INTEGER")
    } else {
        ("LONGTEXT", "VARCHAR(255)", "JSON", "DATETIME(6)", "INT")
    };
    format!(
        "CREATE TABLE {table} (server_msg_id {key} NOT NULL PRIMARY KEY, client_msg_id {key} NOT NULL,
            send_id {key} NOT NULL, recv_id {key} NOT NULL, sender_platform_id {int} NOT NULL,
            sender_nickname {text} NOT NULL, session_type {int} NOT NULL, msg_from {int} NOT NULL,
            content_type {int} NOT NULL, status {int} NOT NULL, create_time BIGINT NOT NULL,
            send_time BIGINT NOT NULL, seq BIGINT NOT NULL, content {text} NOT NULL, at_user_list {json} NOT NULL,
            face_url {text} NOT NULL, ex {text} NOT NULL, operation_id {key} NOT NULL, received_at {time} NOT NULL,
            packet {json} NOT NULL)"
    )
}

const OLD_ROW: &str =
    "INSERT INTO {table} VALUES ('old-1', 'c', 'zed', 'Amy', 1, 'Zed', 1, 100, 101, 1, 1, 1, 0,
    '{}', '[]', '', '', 'op-old', '2026-01-01 00:00:00', '{}')";

/// What the test reads of each row, by server_msg_id.
const COLUMNS: &str = "server_msg_id, group_id, conversation_id, callback, seq, revoked_by, revoked";

async fn execute(url: &str, statements: &[String]) {
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        for statement in statements {
            sqlx::query(statement).execute(&pool).await.unwrap();
        }
    } else if url.starts_with("sqlite") {
        let options: sqlx::sqlite::SqliteConnectOptions = url.parse().unwrap();
        let pool = sqlx::SqlitePool::connect_with(options.create_if_missing(true)).await.unwrap();
        for statement in statements {
            sqlx::query(statement).execute(&pool).await.unwrap();
        }
    } else {
        let pool = sqlx::MySqlPool::connect(url).await.unwrap();
        for statement in statements {
            sqlx::query(statement).execute(&pool).await.unwrap();
        }
    }
}

/// Rows as `{server_msg_id: [group_id, conversation_id, callback, seq, revoked_by, revoked]}`.
async fn rows(url: &str, table: &str) -> serde_json::Map<String, Value> {
    let cast = if url.starts_with("mysql") { "CHAR" } else { "TEXT" };
    let query = format!(
        "SELECT server_msg_id, group_id, conversation_id, callback, CAST(seq AS {cast}), COALESCE(revoked_by, ''),
            CASE WHEN revoked_at IS NULL THEN 'no' ELSE 'yes' END FROM {table}"
    );
    let texts: Vec<Vec<String>> = if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let found = sqlx::query(&query).fetch_all(&pool).await.unwrap();
        found.iter().map(|row| (0..7).map(|index| row.get::<String, _>(index)).collect()).collect()
    } else if url.starts_with("sqlite") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        let found = sqlx::query(&query).fetch_all(&pool).await.unwrap();
        found.iter().map(|row| (0..7).map(|index| row.get::<String, _>(index)).collect()).collect()
    } else {
        let pool = sqlx::MySqlPool::connect(url).await.unwrap();
        let found = sqlx::query(&query).fetch_all(&pool).await.unwrap();
        found.iter().map(|row| (0..7).map(|index| row.get::<String, _>(index)).collect()).collect()
    };
    assert_eq!(COLUMNS.split(", ").count(), 7);
    texts.into_iter().map(|mut row| (row.remove(0), Value::from(row))).collect()
}

async fn the_family_is_archived(url: &str) {
    let table = unique_table("family");
    execute(url, &[previous_release_table(&table, url), OLD_ROW.replace("{table}", &table)]).await;
    let receiver = TestReceiver::start_with(
        settings(&[("SINKS__SQL__ENABLED", "true"), ("SINKS__SQL__URL", url), ("SINKS__SQL__TABLE", &table)]),
        |_| {},
    )
    .await;
    let post = async |command: &str, body: Vec<u8>| {
        receiver.post(&format!("/callbackExample/{command}"), "op-sql", body).await.assert_accepted();
    };
    let group: Value = serde_json::from_slice(&sample("group.json")).unwrap();
    let mut group_saved = group.clone();
    (group_saved["callbackCommand"], group_saved["seq"]) = ("callbackAfterMsgSaveDBCommand".into(), 5.into());
    let group_revoke = serde_json::json!({"callbackCommand": "callbackBeforeAfterMsgCommand",
        "conversationID": "sg_2847561930", "seq": 5, "userID": "admin"});
    // A single chat: sent (seq 0), revoked before its save is seen, then saved twice (OpenIM's retry).
    post("callbackAfterSendSingleMsgCommand", sample("text.json")).await;
    post("callbackBeforeAfterMsgCommand", sample("revoke.json")).await;
    // Archived before the save comes (one batch would apply the save first).
    receiver.caught_up("sql", 2).await;
    post("callbackAfterMsgSaveDBCommand", sample("saved-to-database.json")).await;
    post("callbackAfterMsgSaveDBCommand", sample("saved-to-database.json")).await;
    // A group: sent, saved, then revoked.
    post("callbackAfterSendGroupMsgCommand", sample("group.json")).await;
    post("callbackAfterMsgSaveDBCommand", group_saved.to_string().into_bytes()).await;
    post("callbackBeforeAfterMsgCommand", group_revoke.to_string().into_bytes()).await;
    let sql = receiver.caught_up("sql", 7).await;
    assert_eq!((sql["handled"].as_u64(), sql["failed"].as_u64()), (Some(7), Some(0)), "{sql}");
    assert!(receiver.stop().await.is_clean());

    let rows = rows(url, &table).await;
    let single = "si_3861937549_5247014726";
    let expected = serde_json::json!({
        // The previous release's row keeps everything, and gains OpenIM's conversation id.
        "old-1": ["", "si_Amy_zed", "afterSendSingleMsg", "0", "", "no"],
        "bdb2d2a5c18d4b6a0d4e1e4f2c6d8a11": ["", single, "afterSendSingleMsg", "17", "3861937549", "yes"],
        "5e0c2a9b7d1f4e3a8b6c0d2e4f6a8b1c": ["2847561930", "sg_2847561930", "afterSendGroupMsg", "5", "admin", "yes"],
        // The revoke that came before the seq was known, kept as it came.
        format!("afterRevokeMsg:{single}:17"): ["", single, "afterRevokeMsg", "17", "3861937549", "yes"],
    });
    assert_eq!(Value::Object(rows), expected);
    let found = if url.starts_with("sqlite") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        let query =
            format!("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = '{table}_conversation_id'");
        sqlx::query(&query).fetch_all(&pool).await.unwrap().len()
    } else if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        sqlx::query(&format!("SELECT 1 FROM pg_indexes WHERE indexname = '{table}_conversation_id'"))
            .fetch_all(&pool)
            .await
            .unwrap()
            .len()
    } else {
        let pool = sqlx::MySqlPool::connect(url).await.unwrap();
        let query = format!(
            "SELECT 1 FROM information_schema.statistics WHERE table_schema = DATABASE() AND index_name = '{table}_conversation_id' AND seq_in_index = 1"
        );
        sqlx::query(&query).fetch_all(&pool).await.unwrap().len()
    };
    assert_eq!(found, 1, "an index on (conversation_id, create_time)");
    execute(url, &[format!("DROP TABLE {table}")]).await;
}

#[tokio::test]
async fn the_message_family_in_postgresql_on_a_table_the_previous_release_made() {
    let Some(url) = crate::sql::postgres().await else { return };
    the_family_is_archived(&url).await;
}

#[tokio::test]
async fn the_message_family_in_mariadb_on_a_table_the_previous_release_made() {
    let Some(url) = crate::sql::mariadb().await else { return };
    the_family_is_archived(&url).await;
}

#[tokio::test]
async fn the_message_family_in_sqlite_on_a_table_without_the_family_columns() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/archive.sqlite3", dir.path().display());
    the_family_is_archived(&url).await;
}
