//! Reading the archive back, for `GET /messages` and its export: one query
//! over whichever database the archive is in, newest first (or oldest), a
//! page at a time by keyset (the last row's `(create_time, server_msg_id)`),
//! so paging neither skips nor repeats a row while new messages arrive.
//!
//! Text search (`q`) looks in the `text` column (the readable text of a
//! text-like message) for the term as a substring, in any case: on SQLite
//! through the FTS5 trigram index, on PostgreSQL through `ILIKE`, which the
//! `pg_trgm` index serves, on MySQL/MariaDB through `LIKE` (its utf8mb4
//! collation ignores case). A trigram index cannot hold a term shorter than
//! three characters (你好, "hi"): such a term is matched by `LIKE` on the
//! table itself, a scan of the rows the other filters leave.

use super::{Database, Engine};
use crate::callbacks::{AFTER_REVOKE_MSG, Command};
use serde::Serialize;

/// The archive as the query side sees it: the database and the table.
#[derive(Clone)]
pub struct Archive {
    pub(super) database: Database,
    pub(super) table: String,
}

/// What to find. Every filter given must hold.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pub conversation_id: Option<String>,
    /// The sender or the receiver.
    pub user: Option<String>,
    pub send_id: Option<String>,
    pub recv_id: Option<String>,
    pub group_id: Option<String>,
    pub content_type: Option<i64>,
    /// `create_time` from (inclusive) and to (inclusive), in ms since the epoch.
    pub from: Option<i64>,
    pub to: Option<i64>,
    /// A substring of the message's readable text.
    pub text: Option<String>,
    /// Oldest first (a conversation read top to bottom); newest first otherwise.
    pub ascending: bool,
    pub limit: usize,
    /// Continue after this row (the `next` of the page before).
    pub after: Option<Cursor>,
}

/// Where a page ended: its last row's sort key. Opaque to callers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    create_time: i64,
    server_msg_id: String,
}

impl Cursor {
    /// `<create_time>.<server_msg_id in hex>`: URL-safe, whatever the id holds.
    pub fn encode(&self) -> String {
        let hex: String = self.server_msg_id.bytes().map(|byte| format!("{byte:02x}")).collect();
        format!("{}.{hex}", self.create_time)
    }

    pub fn decode(text: &str) -> Option<Self> {
        let (time, hex) = text.split_once('.')?;
        if hex.len() % 2 != 0 {
            return None;
        }
        let bytes: Option<Vec<u8>> =
            (0..hex.len()).step_by(2).map(|at| u8::from_str_radix(hex.get(at..at + 2)?, 16).ok()).collect();
        Some(Cursor { create_time: time.parse().ok()?, server_msg_id: String::from_utf8(bytes?).ok()? })
    }
}

/// One page of messages.
#[derive(Debug, Serialize)]
pub struct Page {
    pub messages: Vec<ArchivedMessage>,
    /// Where the next page starts; absent on the last page.
    pub next: Option<String>,
}

/// A message as the archive keeps it, in OpenIM's field names.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchivedMessage {
    #[serde(rename = "serverMsgID")]
    pub server_msg_id: String,
    #[serde(rename = "clientMsgID")]
    pub client_msg_id: String,
    #[serde(rename = "sendID")]
    pub send_id: String,
    #[serde(rename = "recvID")]
    pub recv_id: String,
    #[serde(rename = "groupID")]
    pub group_id: String,
    #[serde(rename = "senderPlatformID")]
    pub sender_platform_id: i64,
    pub sender_nickname: String,
    #[serde(rename = "faceURL")]
    pub face_url: String,
    pub session_type: i64,
    pub msg_from: i64,
    pub content_type: i64,
    pub status: i64,
    pub create_time: i64,
    pub send_time: i64,
    pub seq: i64,
    pub content: String,
    pub at_user_list: serde_json::Value,
    pub ex: String,
    #[serde(rename = "conversationID")]
    pub conversation_id: String,
    /// The command that brought it (`callbackAfterSendSingleMsgCommand`, …).
    pub callback_command: &'static str,
    /// When the receiver took it, RFC 3339 in UTC.
    pub received_at: String,
    pub revoked: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revoked_by: Option<String>,
    /// The readable text of a text-like message (empty for other types).
    pub text: String,
}

/// A bound value of a query.
enum Bind {
    Text(String),
    Number(i64),
}

/// SQL text with its binds, written for one engine's placeholders.
struct Statement {
    engine: Engine,
    sql: String,
    binds: Vec<Bind>,
}

impl Statement {
    /// The placeholder for `value`, bound in order.
    fn bind(&mut self, value: Bind) -> String {
        self.binds.push(value);
        match self.engine {
            Engine::Postgres => format!("${}", self.binds.len()),
            Engine::MySql => "?".to_owned(),
            Engine::Sqlite => format!("?{}", self.binds.len()),
        }
    }
}

/// `term` as a LIKE pattern that matches it anywhere, its own `%`, `_` and `\` taken literally.
fn contains_pattern(term: &str) -> String {
    let mut pattern = String::with_capacity(term.len() + 2);
    pattern.push('%');
    for character in term.chars() {
        if matches!(character, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(character);
    }
    pattern.push('%');
    pattern
}

/// Each column as the row decoder reads it: numbers as 64-bit integers, times as RFC 3339 text.
fn select_list(engine: Engine) -> String {
    let number = |column: &str| match engine {
        Engine::Postgres => format!("{column}::BIGINT"),
        Engine::MySql => format!("CAST({column} AS SIGNED)"),
        Engine::Sqlite => column.to_owned(),
    };
    let time = |column: &str| match engine {
        Engine::Postgres => {
            format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
        }
        Engine::MySql => format!("DATE_FORMAT({column}, '%Y-%m-%dT%H:%i:%s.%fZ')"),
        Engine::Sqlite => column.to_owned(),
    };
    let json = match engine {
        Engine::Postgres => "at_user_list::TEXT",
        Engine::MySql => "CAST(at_user_list AS CHAR)",
        Engine::Sqlite => "at_user_list",
    };
    [
        "server_msg_id".to_owned(),
        "client_msg_id".to_owned(),
        "send_id".to_owned(),
        "recv_id".to_owned(),
        "group_id".to_owned(),
        number("sender_platform_id"),
        "sender_nickname".to_owned(),
        "face_url".to_owned(),
        number("session_type"),
        number("msg_from"),
        number("content_type"),
        number("status"),
        number("create_time"),
        number("send_time"),
        number("seq"),
        "content".to_owned(),
        json.to_owned(),
        "ex".to_owned(),
        "conversation_id".to_owned(),
        "callback".to_owned(),
        time("received_at"),
        time("revoked_at"),
        "revoked_by".to_owned(),
        "COALESCE(text, '')".to_owned(),
    ]
    .join(", ")
}

/// A closure that reads one row of [`select_list`] into an [`ArchivedMessage`],
/// for whichever database's row type it is given.
macro_rules! decode_row {
    () => {
        |row| -> Result<ArchivedMessage, sqlx::Error> {
            use sqlx::Row;
            let text = |index: usize| row.try_get::<String, _>(index);
            let number = |index: usize| row.try_get::<i64, _>(index);
            let callback = text(19)?;
            let revoked_at = row.try_get::<Option<String>, _>(21)?;
            Ok(ArchivedMessage {
                server_msg_id: text(0)?,
                client_msg_id: text(1)?,
                send_id: text(2)?,
                recv_id: text(3)?,
                group_id: text(4)?,
                sender_platform_id: number(5)?,
                sender_nickname: text(6)?,
                face_url: text(7)?,
                session_type: number(8)?,
                msg_from: number(9)?,
                content_type: number(10)?,
                status: number(11)?,
                create_time: number(12)?,
                send_time: number(13)?,
                seq: number(14)?,
                content: text(15)?,
                at_user_list: serde_json::from_str(&text(16)?).unwrap_or_default(),
                ex: text(17)?,
                conversation_id: text(18)?,
                callback_command: Command::by_key(&callback).map_or("", |command| command.name),
                received_at: text(20)?,
                revoked: revoked_at.is_some(),
                revoked_at,
                revoked_by: row.try_get::<Option<String>, _>(22)?,
                text: text(23)?,
            })
        }
    };
}

impl Archive {
    /// One page of the messages `query` asks for.
    pub async fn find(&self, query: &Query) -> Result<Page, sqlx::Error> {
        let statement = self.statement(query);
        // sqlx types each query by its database: the same steps, once per pool type.
        macro_rules! fetch_with {
            ($pool:expr) => {{
                let mut prepared = sqlx::query(&statement.sql);
                for bind in statement.binds {
                    prepared = match bind {
                        Bind::Text(text) => prepared.bind(text),
                        Bind::Number(number) => prepared.bind(number),
                    };
                }
                let rows = match prepared.fetch_all($pool).await {
                    Ok(rows) => rows,
                    // Nothing archived yet: the sink makes the table at its first start.
                    Err(error) if is_missing_table(&error) => Vec::new(),
                    Err(error) => return Err(error),
                };
                rows.iter().map(decode_row!()).collect::<Result<Vec<_>, sqlx::Error>>()?
            }};
        }
        let mut messages = match &self.database {
            Database::Postgres(pool) => fetch_with!(pool),
            Database::MySql(pool) => fetch_with!(pool),
            Database::Sqlite(pool) => fetch_with!(pool),
        };
        // One row more than the page was asked for: there is a next page.
        let next = if messages.len() > query.limit {
            messages.truncate(query.limit);
            messages.last().map(|last| {
                Cursor { create_time: last.create_time, server_msg_id: last.server_msg_id.clone() }.encode()
            })
        } else {
            None
        };
        Ok(Page { messages, next })
    }

    fn statement(&self, query: &Query) -> Statement {
        let engine = self.database.engine();
        let table = &self.table;
        let mut statement = Statement { engine, sql: String::new(), binds: Vec::new() };
        // A revoke kept on its own row (its message not archived yet) is not a message.
        let revoke = statement.bind(Bind::Text(AFTER_REVOKE_MSG.key.to_owned()));
        let mut conditions = vec![format!("callback <> {revoke}")];
        let text = |value: &Option<String>| value.clone().map(Bind::Text);
        for (column, value) in [
            ("conversation_id", text(&query.conversation_id)),
            ("send_id", text(&query.send_id)),
            ("recv_id", text(&query.recv_id)),
            ("group_id", text(&query.group_id)),
            ("content_type", query.content_type.map(Bind::Number)),
        ] {
            if let Some(value) = value {
                conditions.push(format!("{column} = {}", statement.bind(value)));
            }
        }
        if let Some(user) = &query.user {
            let (sender, receiver) =
                (statement.bind(Bind::Text(user.clone())), statement.bind(Bind::Text(user.clone())));
            conditions.push(format!("(send_id = {sender} OR recv_id = {receiver})"));
        }
        if let Some(from) = query.from {
            conditions.push(format!("create_time >= {}", statement.bind(Bind::Number(from))));
        }
        if let Some(to) = query.to {
            conditions.push(format!("create_time <= {}", statement.bind(Bind::Number(to))));
        }
        if let Some(term) = query.text.as_deref().filter(|term| !term.is_empty()) {
            conditions.push(text_condition(&mut statement, table, term));
        }
        let (order, beyond) = if query.ascending { ("ASC", ">") } else { ("DESC", "<") };
        if let Some(after) = &query.after {
            let time = statement.bind(Bind::Number(after.create_time));
            let same_time = statement.bind(Bind::Number(after.create_time));
            let id = statement.bind(Bind::Text(after.server_msg_id.clone()));
            conditions.push(format!(
                "(create_time {beyond} {time} OR (create_time = {same_time} AND server_msg_id {beyond} {id}))"
            ));
        }
        let limit = statement.bind(Bind::Number(query.limit as i64 + 1));
        statement.sql = format!(
            "SELECT {} FROM {table} WHERE {} ORDER BY create_time {order}, server_msg_id {order} LIMIT {limit}",
            select_list(engine),
            conditions.join(" AND "),
        );
        statement
    }
}

impl Archive {
    /// The bytes the archive takes: its table with every index (SQLite: the
    /// database file's pages, text index included; InnoDB's figures are its estimates).
    pub async fn size_bytes(&self) -> Result<u64, sqlx::Error> {
        let table = &self.table;
        let bytes: i64 = match &self.database {
            Database::Postgres(pool) => {
                sqlx::query_scalar("SELECT pg_total_relation_size($1::regclass)")
                    .bind(table)
                    .fetch_one(pool)
                    .await?
            }
            Database::MySql(pool) => {
                sqlx::query(&format!("ANALYZE TABLE {table}")).execute(pool).await?;
                sqlx::query_scalar(
                    "SELECT CAST(data_length + index_length AS SIGNED) FROM information_schema.tables
                     WHERE table_schema = DATABASE() AND table_name = ?",
                )
                .bind(table)
                .fetch_one(pool)
                .await?
            }
            Database::Sqlite(pool) => {
                sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(pool).await?;
                sqlx::query_scalar(
                    "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                )
                .fetch_one(pool)
                .await?
            }
        };
        Ok(bytes.max(0) as u64)
    }

    /// Drops the table and its text index (for the benchmark's own tables).
    #[doc(hidden)]
    pub async fn drop_table(&self) -> Result<(), sqlx::Error> {
        let table = &self.table;
        match &self.database {
            Database::Postgres(pool) => {
                sqlx::query(&format!("DROP TABLE IF EXISTS {table}")).execute(pool).await?;
            }
            Database::MySql(pool) => {
                sqlx::query(&format!("DROP TABLE IF EXISTS {table}")).execute(pool).await?;
            }
            Database::Sqlite(pool) => {
                sqlx::query(&format!("DROP TABLE IF EXISTS {table}_text")).execute(pool).await?;
                sqlx::query(&format!("DROP TABLE IF EXISTS {table}")).execute(pool).await?;
            }
        }
        Ok(())
    }
}

/// The table (or its text index) is not there: PostgreSQL's undefined_table,
/// MySQL's ER_NO_SUCH_TABLE, SQLite's "no such table".
fn is_missing_table(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(database) = error else { return false };
    matches!(database.code().as_deref(), Some("42P01" | "42S02"))
        || database.message().starts_with("no such table")
}

/// The condition for text containing `term`, by what each engine indexes.
fn text_condition(statement: &mut Statement, table: &str, term: &str) -> String {
    let trigram_indexable = term.chars().count() >= 3;
    match statement.engine {
        Engine::Sqlite if trigram_indexable => {
            // One FTS5 phrase (its quotes doubled): the trigrams of the term, in order.
            let phrase = format!("\"{}\"", term.replace('"', "\"\""));
            let phrase = statement.bind(Bind::Text(phrase));
            format!("rowid IN (SELECT rowid FROM {table}_text WHERE {table}_text MATCH {phrase})")
        }
        Engine::Sqlite => {
            format!("text LIKE {} ESCAPE '\\'", statement.bind(Bind::Text(contains_pattern(term))))
        }
        Engine::Postgres => format!("text ILIKE {}", statement.bind(Bind::Text(contains_pattern(term)))),
        Engine::MySql => format!("text LIKE {}", statement.bind(Bind::Text(contains_pattern(term)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_whatever_the_id_holds_and_junk_is_refused() {
        let cursor = Cursor { create_time: 1_732_675_200_123, server_msg_id: "a.b/ü%".into() };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        for junk in ["", "12", "x.00", "12.0", "12.zz", "12.ff"] {
            assert_eq!(Cursor::decode(junk), None, "{junk}");
        }
    }

    #[test]
    fn like_patterns_take_the_term_literally() {
        assert_eq!(contains_pattern("50%_off\\"), "%50\\%\\_off\\\\%");
        assert_eq!(contains_pattern("好世"), "%好世%");
    }
}
