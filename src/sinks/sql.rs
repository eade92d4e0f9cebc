//! The SQL archive sink: every message as one row of `sinks.sql.table` in
//! PostgreSQL or MySQL/MariaDB, through sqlx.
//!
//! Rows are inserted a batch per statement (UNNEST arrays on PostgreSQL,
//! multi-row VALUES on MySQL) and keyed by `server_msg_id`, with
//! `ON CONFLICT DO NOTHING` / `ON DUPLICATE KEY UPDATE` (a no-op): a batch
//! replayed after a crash or an outage never duplicates a row, and a row the
//! database refuses (a value too long, a constraint) is refused loudly: the
//! runner gives up that record alone, counted as `failed`.
//!
//! By command: a message sent (single or group) inserts its row; saved to
//! OpenIM's database sets the row's real `seq` (inserting the row if the
//! after-send callback never came); a revoke marks the row it names by
//! `(conversation_id, seq)` with `revoked_at` and `revoked_by`, or, while no
//! row has that seq (released OpenIM sends seq 0 after send), is kept as a
//! row of its own (`callback = 'afterRevokeMsg'`) that marks the message once
//! its saved-to-database callback brings the seq.
//!
//! The table is created at the first delivery if it is missing; a table of
//! an older release gains the new columns (`ADD COLUMN` only, nothing is
//! dropped or rewritten but the new `conversation_id` of old rows). While
//! the database is down, deliveries fail as transient and the runner
//! retries; the journal holds the messages meanwhile.

use super::{Entry, Sink, SinkError};
use crate::callbacks::{AFTER_REVOKE_MSG, Callback, Role};
use serde::{Deserialize, Serialize};
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgPool, PgPoolOptions};

/// Rows per statement on MySQL (25 parameters a row, 65,535 at most a statement).
const MYSQL_ROWS_PER_STATEMENT: usize = 1000;

/// Columns added since the first release, with their definitions per engine
/// (PostgreSQL, MySQL): a table an older release created gains them.
const ADDED_COLUMNS: [(&str, &str, &str); 5] = [
    ("group_id", "TEXT NOT NULL DEFAULT ''", "VARCHAR(255) NOT NULL DEFAULT ''"),
    ("conversation_id", "TEXT NOT NULL DEFAULT ''", "VARCHAR(255) NOT NULL DEFAULT ''"),
    // Every row of an older release came from the single chat's callback.
    (
        "callback",
        "TEXT NOT NULL DEFAULT 'afterSendSingleMsg'",
        "VARCHAR(64) NOT NULL DEFAULT 'afterSendSingleMsg'",
    ),
    ("revoked_at", "TIMESTAMPTZ NULL", "DATETIME(6) NULL"),
    ("revoked_by", "TEXT NULL", "VARCHAR(255) NULL"),
];

/// What a batch of rows does when its key is there already.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OnConflict {
    /// A replay, or the message's saved-to-database row came first: nothing.
    Keep,
    /// Saved to OpenIM's database: the row takes the real seq.
    SetSeq,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlSinkSettings {
    pub enabled: bool,
    /// `postgres://…` or `mysql://…` (MariaDB too); holds a password, so never shown.
    pub url: crate::settings::Secret,
    /// The archive table, created if missing.
    pub table: String,
    /// Most rows inserted per statement.
    pub batch_size: usize,
    /// Connections kept to the database.
    pub pool_size: u32,
    /// How long getting a connection may take before a delivery fails (and is retried).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: std::time::Duration,
    /// How long one batch's statements may take before the delivery fails (and is retried).
    #[serde(with = "humantime_serde")]
    pub timeout: std::time::Duration,
    /// The records this sink takes (all when empty).
    #[serde(default)]
    pub only: crate::sinks::filter::RecordFilter,
}

impl SqlSinkSettings {
    pub(crate) fn validate(&self) -> Result<(), crate::settings::Invalid> {
        use crate::settings::{Invalid, LONGEST, check_count, check_duration, check_not_placeholder};
        check_duration("sinks.sql.connect_timeout", self.connect_timeout, LONGEST)?;
        check_duration("sinks.sql.timeout", self.timeout, LONGEST)?;
        check_count("sinks.sql.batch_size", self.batch_size as u64, 1, 100_000)?;
        check_count("sinks.sql.pool_size", u64::from(self.pool_size), 1, 64)?;
        let table_ok = !self.table.is_empty()
            && self.table.len() <= 48
            && self.table.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !self.table.as_bytes()[0].is_ascii_digit();
        if !table_ok {
            let why = "must be 1 to 48 characters of A-Z a-z 0-9 _, not starting with a digit";
            return Err(Invalid::new("sinks.sql.table", why));
        }
        check_not_placeholder("sinks.sql.url", &self.url)?;
        let schemes = ["postgres://", "postgresql://", "mysql://", "mariadb://"];
        if self.enabled && !schemes.iter().any(|scheme| self.url.expose().starts_with(scheme)) {
            let why = "must start with postgres://, postgresql://, mysql:// or mariadb://";
            return Err(Invalid::new("sinks.sql.url", why));
        }
        Ok(())
    }
}

pub struct SqlSink {
    database: Database,
    /// `sinks.sql.url` as it may be shown.
    shown_url: String,
    table: String,
    timeout: std::time::Duration,
    /// The table exists (created by this sink, or found).
    migrated: bool,
}

enum Database {
    Postgres(PgPool),
    MySql(MySqlPool),
}

impl SqlSink {
    /// A sink for the database at `settings.url`. Connects lazily: the
    /// receiver starts (and accepts messages) while the database is down.
    pub fn new(settings: &SqlSinkSettings) -> Result<Self, SinkError> {
        let url = settings.url.expose();
        let timeout = settings.connect_timeout;
        let database = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(settings.pool_size)
                .acquire_timeout(timeout)
                .connect_lazy(url)
                .map_err(|error| SinkError::permanent(format!("sinks.sql.url: {error}")))?;
            Database::Postgres(pool)
        } else {
            let pool = MySqlPoolOptions::new()
                .max_connections(settings.pool_size)
                .acquire_timeout(timeout)
                // Strict whatever the server's default: a value that does not fit
                // its column is an error, never silently truncated.
                .after_connect(|connection, _| {
                    Box::pin(async move {
                        use sqlx::Executor;
                        connection
                            .execute("SET SESSION sql_mode = CONCAT(@@sql_mode, ',STRICT_ALL_TABLES')")
                            .await?;
                        Ok(())
                    })
                })
                .connect_lazy(url)
                .map_err(|error| SinkError::permanent(format!("sinks.sql.url: {error}")))?;
            Database::MySql(pool)
        };
        Ok(SqlSink {
            database,
            shown_url: settings.url.shown().into_owned(),
            table: settings.table.clone(),
            timeout: settings.timeout,
            migrated: false,
        })
    }

    /// Creates the table and its indexes if missing (never alters or drops).
    async fn migrate(&mut self) -> Result<(), sqlx::Error> {
        let table = &self.table;
        match &self.database {
            Database::Postgres(pool) => {
                let statements = [
                    format!(
                        "CREATE TABLE IF NOT EXISTS {table} (
                            server_msg_id TEXT PRIMARY KEY,
                            client_msg_id TEXT NOT NULL,
                            send_id TEXT NOT NULL,
                            recv_id TEXT NOT NULL,
                            sender_platform_id INTEGER NOT NULL,
                            sender_nickname TEXT NOT NULL,
                            session_type INTEGER NOT NULL,
                            msg_from INTEGER NOT NULL,
                            content_type INTEGER NOT NULL,
                            status INTEGER NOT NULL,
                            create_time BIGINT NOT NULL,
                            send_time BIGINT NOT NULL,
                            seq BIGINT NOT NULL,
                            content TEXT NOT NULL,
                            at_user_list JSONB NOT NULL,
                            face_url TEXT NOT NULL,
                            ex TEXT NOT NULL,
                            operation_id TEXT NOT NULL,
                            received_at TIMESTAMPTZ NOT NULL,
                            packet JSONB NOT NULL)"
                    ),
                    format!(
                        "CREATE INDEX IF NOT EXISTS {table}_conversation ON {table} (send_id, recv_id, create_time)"
                    ),
                    format!("CREATE INDEX IF NOT EXISTS {table}_create_time ON {table} (create_time)"),
                ];
                // Two replicas creating the table at one moment would race in
                // PostgreSQL's catalog (a unique violation on pg_type): a lock
                // held for the transaction makes the second wait, then find it.
                let mut transaction = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                    .bind(format!("openim-callback-receiver create {table}"))
                    .execute(&mut *transaction)
                    .await?;
                for statement in &statements {
                    sqlx::query(statement).execute(&mut *transaction).await?;
                }
                let had_conversations = sqlx::query(
                    "SELECT 1 FROM information_schema.columns
                     WHERE table_schema = current_schema() AND table_name = $1 AND column_name = 'conversation_id'",
                )
                .bind(table)
                .fetch_optional(&mut *transaction)
                .await?
                .is_some();
                for (column, definition, _) in ADDED_COLUMNS {
                    let statement =
                        format!("ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {definition}");
                    sqlx::query(&statement).execute(&mut *transaction).await?;
                }
                if !had_conversations {
                    // Rows of an older release: single chats (and notifications), ids sorted byte-wise as Go does.
                    let statement = format!(
                        "UPDATE {table} SET conversation_id = CASE session_type WHEN 4 THEN 'sn_' ELSE 'si_' END ||
                            CASE WHEN send_id COLLATE \"C\" <= recv_id COLLATE \"C\" THEN send_id || '_' || recv_id
                            ELSE recv_id || '_' || send_id END
                         WHERE conversation_id = '' AND session_type IN (1, 4)"
                    );
                    sqlx::query(&statement).execute(&mut *transaction).await?;
                }
                let statement = format!(
                    "CREATE INDEX IF NOT EXISTS {table}_conversation_id ON {table} (conversation_id, create_time)"
                );
                sqlx::query(&statement).execute(&mut *transaction).await?;
                transaction.commit().await?;
            }
            Database::MySql(pool) => {
                let statement = format!(
                    "CREATE TABLE IF NOT EXISTS {table} (
                        server_msg_id VARCHAR(255) NOT NULL PRIMARY KEY,
                        client_msg_id VARCHAR(255) NOT NULL,
                        send_id VARCHAR(255) NOT NULL,
                        recv_id VARCHAR(255) NOT NULL,
                        sender_platform_id INT NOT NULL,
                        sender_nickname LONGTEXT NOT NULL,
                        session_type INT NOT NULL,
                        msg_from INT NOT NULL,
                        content_type INT NOT NULL,
                        status INT NOT NULL,
                        create_time BIGINT NOT NULL,
                        send_time BIGINT NOT NULL,
                        seq BIGINT NOT NULL,
                        content LONGTEXT NOT NULL,
                        at_user_list JSON NOT NULL,
                        face_url LONGTEXT NOT NULL,
                        ex LONGTEXT NOT NULL,
                        operation_id VARCHAR(255) NOT NULL,
                        received_at DATETIME(6) NOT NULL,
                        packet JSON NOT NULL,
                        INDEX {table}_conversation (send_id, recv_id, create_time),
                        INDEX {table}_create_time (create_time)
                    ) DEFAULT CHARSET = utf8mb4"
                );
                sqlx::query(&statement).execute(pool).await?;
                let present: Vec<String> = sqlx::query_scalar(
                    "SELECT CAST(column_name AS CHAR) FROM information_schema.columns
                     WHERE table_schema = DATABASE() AND table_name = ?",
                )
                .bind(table)
                .fetch_all(pool)
                .await?;
                let has = |column: &str| present.iter().any(|name| name.eq_ignore_ascii_case(column));
                let had_conversations = has("conversation_id");
                for (column, _, definition) in ADDED_COLUMNS {
                    if !has(column) {
                        let statement = format!("ALTER TABLE {table} ADD COLUMN {column} {definition}");
                        sqlx::query(&statement).execute(pool).await?;
                    }
                }
                if !had_conversations {
                    let statement = format!(
                        "UPDATE {table} SET conversation_id = CONCAT(IF(session_type = 4, 'sn_', 'si_'),
                            IF(BINARY send_id <= BINARY recv_id, CONCAT(send_id, '_', recv_id),
                            CONCAT(recv_id, '_', send_id)))
                         WHERE conversation_id = '' AND session_type IN (1, 4)"
                    );
                    sqlx::query(&statement).execute(pool).await?;
                }
                let indexed: Option<i64> = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM information_schema.statistics
                     WHERE table_schema = DATABASE() AND table_name = ? AND index_name = ?",
                )
                .bind(table)
                .bind(format!("{table}_conversation_id"))
                .fetch_optional(pool)
                .await?;
                if indexed.unwrap_or(0) == 0 {
                    let statement = format!(
                        "CREATE INDEX {table}_conversation_id ON {table} (conversation_id, create_time)"
                    );
                    sqlx::query(&statement).execute(pool).await?;
                }
            }
        }
        self.migrated = true;
        Ok(())
    }

    /// A failure that may pass, explained: sqlx's bare "pool timed out" gets its cause.
    async fn transient(&self, error: sqlx::Error) -> SinkError {
        let message = match (&error, &self.database) {
            (sqlx::Error::PoolTimedOut, Database::Postgres(pool)) => why_no_connection(pool).await,
            (sqlx::Error::PoolTimedOut, Database::MySql(pool)) => why_no_connection(pool).await,
            _ => error.to_string(),
        };
        SinkError::transient(message)
    }

    async fn insert(&self, rows: &[&Row], on_conflict: OnConflict) -> Result<(), sqlx::Error> {
        if rows.is_empty() {
            return Ok(());
        }
        let table = &self.table;
        match &self.database {
            Database::Postgres(pool) => {
                let column =
                    |pick: fn(&Row) -> String| rows.iter().map(|row| pick(row)).collect::<Vec<String>>();
                let number = |pick: fn(&Row) -> i64| rows.iter().map(|row| pick(row)).collect::<Vec<i64>>();
                let on_conflict = match on_conflict {
                    OnConflict::Keep => "DO NOTHING",
                    OnConflict::SetSeq => "DO UPDATE SET seq = EXCLUDED.seq",
                };
                let statement = format!(
                    "INSERT INTO {table} (server_msg_id, client_msg_id, send_id, recv_id, sender_platform_id,
                        sender_nickname, session_type, msg_from, content_type, status, create_time, send_time,
                        seq, content, at_user_list, face_url, ex, operation_id, received_at, packet,
                        group_id, conversation_id, callback, revoked_at, revoked_by)
                     SELECT r.server_msg_id, r.client_msg_id, r.send_id, r.recv_id, r.sender_platform_id::INTEGER,
                        r.sender_nickname, r.session_type::INTEGER, r.msg_from::INTEGER, r.content_type::INTEGER,
                        r.status::INTEGER, r.create_time, r.send_time, r.seq, r.content, r.at_user_list::JSONB,
                        r.face_url, r.ex, r.operation_id, TIMESTAMPTZ 'epoch' + r.received_us * INTERVAL '1 microsecond', r.packet::JSONB,
                        r.group_id, r.conversation_id, r.callback,
                        TIMESTAMPTZ 'epoch' + r.revoked_us * INTERVAL '1 microsecond', r.revoked_by
                     FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::BIGINT[], $6::TEXT[],
                        $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::BIGINT[], $11::BIGINT[], $12::BIGINT[],
                        $13::BIGINT[], $14::TEXT[], $15::TEXT[], $16::TEXT[], $17::TEXT[], $18::TEXT[],
                        $19::BIGINT[], $20::TEXT[], $21::TEXT[], $22::TEXT[], $23::TEXT[], $24::BIGINT[], $25::TEXT[])
                        AS r(server_msg_id, client_msg_id, send_id, recv_id, sender_platform_id, sender_nickname,
                        session_type, msg_from, content_type, status, create_time, send_time, seq, content,
                        at_user_list, face_url, ex, operation_id, received_us, packet,
                        group_id, conversation_id, callback, revoked_us, revoked_by)
                     ON CONFLICT (server_msg_id) {on_conflict}"
                );
                sqlx::query(&statement)
                    .bind(column(|r| r.server_msg_id.clone()))
                    .bind(column(|r| r.client_msg_id.clone()))
                    .bind(column(|r| r.send_id.clone()))
                    .bind(column(|r| r.recv_id.clone()))
                    .bind(number(|r| r.sender_platform_id))
                    .bind(column(|r| r.sender_nickname.clone()))
                    .bind(number(|r| r.session_type))
                    .bind(number(|r| r.msg_from))
                    .bind(number(|r| r.content_type))
                    .bind(number(|r| r.status))
                    .bind(number(|r| r.create_time))
                    .bind(number(|r| r.send_time))
                    .bind(number(|r| r.seq))
                    .bind(column(|r| r.content.clone()))
                    .bind(column(|r| r.at_user_list.clone()))
                    .bind(column(|r| r.face_url.clone()))
                    .bind(column(|r| r.ex.clone()))
                    .bind(column(|r| r.operation_id.clone()))
                    .bind(number(|r| r.received_us))
                    .bind(column(|r| r.packet.clone()))
                    .bind(column(|r| r.group_id.clone()))
                    .bind(column(|r| r.conversation_id.clone()))
                    .bind(column(|r| r.callback.to_owned()))
                    .bind(rows.iter().map(|r| r.revoked_us).collect::<Vec<Option<i64>>>())
                    .bind(rows.iter().map(|r| r.revoked_by.clone()).collect::<Vec<Option<String>>>())
                    .execute(pool)
                    .await?;
            }
            Database::MySql(pool) => {
                for chunk in rows.chunks(MYSQL_ROWS_PER_STATEMENT) {
                    let mut builder = sqlx::QueryBuilder::<sqlx::MySql>::new(format!(
                        "INSERT INTO {table} (server_msg_id, client_msg_id, send_id, recv_id,
                            sender_platform_id, sender_nickname, session_type, msg_from, content_type, status,
                            create_time, send_time, seq, content, at_user_list, face_url, ex, operation_id,
                            received_at, packet, group_id, conversation_id, callback, revoked_at, revoked_by) "
                    ));
                    builder.push_values(chunk, |mut values, row| {
                        values
                            .push_bind(&row.server_msg_id)
                            .push_bind(&row.client_msg_id)
                            .push_bind(&row.send_id)
                            .push_bind(&row.recv_id)
                            .push_bind(row.sender_platform_id)
                            .push_bind(&row.sender_nickname)
                            .push_bind(row.session_type)
                            .push_bind(row.msg_from)
                            .push_bind(row.content_type)
                            .push_bind(row.status)
                            .push_bind(row.create_time)
                            .push_bind(row.send_time)
                            .push_bind(row.seq)
                            .push_bind(&row.content)
                            .push_bind(&row.at_user_list)
                            .push_bind(&row.face_url)
                            .push_bind(&row.ex)
                            .push_bind(&row.operation_id)
                            // Exact to the microsecond, whatever the session's time zone.
                            .push("TIMESTAMPADD(MICROSECOND, ")
                            .push_bind_unseparated(row.received_us)
                            .push_unseparated(", '1970-01-01 00:00:00')")
                            .push_bind(&row.packet)
                            .push_bind(&row.group_id)
                            .push_bind(&row.conversation_id)
                            .push_bind(row.callback)
                            .push("TIMESTAMPADD(MICROSECOND, ")
                            .push_bind_unseparated(row.revoked_us)
                            .push_unseparated(", '1970-01-01 00:00:00')")
                            .push_bind(&row.revoked_by);
                    });
                    // A repeat (a replay after a crash) changes nothing; unlike INSERT
                    // IGNORE, this keeps every other error an error, so a value too
                    // long for its column is refused loudly instead of cut short.
                    builder.push(match on_conflict {
                        OnConflict::Keep => " ON DUPLICATE KEY UPDATE server_msg_id = server_msg_id",
                        OnConflict::SetSeq => " ON DUPLICATE KEY UPDATE seq = VALUES(seq)",
                    });
                    builder.build().execute(pool).await?;
                }
            }
        }
        Ok(())
    }
}

impl SqlSink {
    /// Writes a batch's rows by what their callbacks say. Each step is
    /// idempotent, so a batch replayed after a crash changes nothing more.
    async fn write(&self, rows: &[Row]) -> Result<(), sqlx::Error> {
        let of = |role: Role| rows.iter().filter(move |row| row.role == role).collect::<Vec<&Row>>();
        self.insert(&of(Role::Sent), OnConflict::Keep).await?;
        let mut saved = of(Role::Saved);
        // OpenIM sends a save again when it retries its batch; PostgreSQL refuses
        // one statement updating a row twice, so the last of each goes.
        let mut seen = std::collections::HashSet::new();
        saved.reverse();
        saved.retain(|row| seen.insert(row.server_msg_id.as_str()));
        saved.reverse();
        self.insert(&saved, OnConflict::SetSeq).await?;
        for revoke in of(Role::Revoked) {
            if self.mark_revoked(revoke).await? == 0 {
                self.insert(&[revoke], OnConflict::Keep).await?;
            }
        }
        if !saved.is_empty() {
            self.link_revokes(&saved).await?;
        }
        Ok(())
    }

    /// Marks the message a revoke names; how many rows it marked.
    async fn mark_revoked(&self, revoke: &Row) -> Result<u64, sqlx::Error> {
        let table = &self.table;
        let revoked_us = revoke.revoked_us.unwrap_or(revoke.received_us);
        let revoked_by = revoke.revoked_by.clone().unwrap_or_default();
        let [at, by, conversation, seq, callback] = [1, 2, 3, 4, 5].map(|index| self.parameter(index));
        let revoked_at = match self.database {
            Database::Postgres(_) => format!("TIMESTAMPTZ 'epoch' + {at} * INTERVAL '1 microsecond'"),
            Database::MySql(_) => format!("TIMESTAMPADD(MICROSECOND, {at}, '1970-01-01 00:00:00')"),
        };
        let update = format!(
            "UPDATE {table} SET revoked_at = {revoked_at}, revoked_by = {by}
             WHERE conversation_id = {conversation} AND seq = {seq} AND callback <> {callback}"
        );
        // MySQL counts rows changed, not found: a replayed revoke finds its row marked already.
        let [conversation, seq, callback] = [1, 2, 3].map(|index| self.parameter(index));
        let count = format!(
            "SELECT COUNT(*) FROM {table} WHERE conversation_id = {conversation} AND seq = {seq} AND callback <> {callback}"
        );
        // sqlx types each query by its database: the same steps, once per pool type.
        macro_rules! mark_or_count {
            ($pool:expr) => {{
                let marked = sqlx::query(&update)
                    .bind(revoked_us)
                    .bind(revoked_by)
                    .bind(&revoke.conversation_id)
                    .bind(revoke.seq)
                    .bind(AFTER_REVOKE_MSG.key)
                    .execute($pool)
                    .await?
                    .rows_affected();
                if marked > 0 {
                    return Ok(marked);
                }
                let found: i64 = sqlx::query_scalar(&count)
                    .bind(&revoke.conversation_id)
                    .bind(revoke.seq)
                    .bind(AFTER_REVOKE_MSG.key)
                    .fetch_one($pool)
                    .await?;
                Ok(found as u64)
            }};
        }
        match &self.database {
            Database::Postgres(pool) => mark_or_count!(pool),
            Database::MySql(pool) => mark_or_count!(pool),
        }
    }

    /// The `index`th bind parameter as this database writes it.
    fn parameter(&self, index: usize) -> String {
        match self.database {
            Database::Postgres(_) => format!("${index}"),
            Database::MySql(_) => "?".to_owned(),
        }
    }

    /// Marks the newly saved messages that a revoke kept on its own names.
    async fn link_revokes(&self, saved: &[&Row]) -> Result<(), sqlx::Error> {
        let table = &self.table;
        let conversations: Vec<String> = saved.iter().map(|row| row.conversation_id.clone()).collect();
        match &self.database {
            Database::Postgres(pool) => {
                let statement = format!(
                    "UPDATE {table} AS m SET revoked_at = r.revoked_at, revoked_by = r.revoked_by
                     FROM {table} AS r
                     WHERE r.callback = $1 AND m.callback <> $1 AND m.revoked_at IS NULL
                        AND r.conversation_id = m.conversation_id AND r.seq = m.seq
                        AND m.conversation_id = ANY($2)"
                );
                sqlx::query(&statement).bind(AFTER_REVOKE_MSG.key).bind(conversations).execute(pool).await?;
            }
            Database::MySql(pool) => {
                let mut builder = sqlx::QueryBuilder::<sqlx::MySql>::new(format!(
                    "UPDATE {table} AS m JOIN {table} AS r
                        ON r.conversation_id = m.conversation_id AND r.seq = m.seq
                     SET m.revoked_at = r.revoked_at, m.revoked_by = r.revoked_by
                     WHERE r.callback = "
                ));
                builder.push_bind(AFTER_REVOKE_MSG.key);
                builder.push(" AND m.callback <> ").push_bind(AFTER_REVOKE_MSG.key);
                builder.push(" AND m.revoked_at IS NULL AND m.conversation_id IN (");
                let mut list = builder.separated(", ");
                for conversation in &conversations {
                    list.push_bind(conversation);
                }
                builder.push(")");
                builder.build().execute(pool).await?;
            }
        }
        Ok(())
    }
}

/// One callback as its row's values.
struct Row {
    role: Role,
    server_msg_id: String,
    client_msg_id: String,
    send_id: String,
    recv_id: String,
    sender_platform_id: i64,
    sender_nickname: String,
    session_type: i64,
    msg_from: i64,
    content_type: i64,
    status: i64,
    create_time: i64,
    send_time: i64,
    seq: i64,
    content: String,
    at_user_list: String,
    face_url: String,
    ex: String,
    operation_id: String,
    received_us: i64,
    packet: String,
    group_id: String,
    conversation_id: String,
    /// The `webhooks.yml` key of the command that made the row.
    callback: &'static str,
    revoked_us: Option<i64>,
    revoked_by: Option<String>,
}

impl Row {
    /// `postgres`: PostgreSQL's TEXT and JSONB cannot hold U+0000, which JSON
    /// can; it becomes U+FFFD there (the other database keeps it).
    fn of(entry: &Entry, postgres: bool) -> Row {
        let message = &entry.message;
        let text = |value: &str| if postgres { value.replace('\0', "\u{fffd}") } else { value.to_owned() };
        let raw = String::from_utf8_lossy(&message.raw);
        let raw = if postgres { raw.replace("\\u0000", "\\ufffd") } else { raw.into_owned() };
        let received_us = crate::epoch::micros(message.received_at);
        let packet = match &message.callback {
            Callback::Message(packet) => packet,
            // A revoke's own row, until its message's row has the seq it names.
            Callback::Revoke(revoke) => {
                return Row {
                    role: Role::Revoked,
                    server_msg_id: text(&message.idempotency_key()),
                    client_msg_id: String::new(),
                    send_id: String::new(),
                    recv_id: String::new(),
                    sender_platform_id: 0,
                    sender_nickname: String::new(),
                    session_type: 0,
                    msg_from: 0,
                    content_type: 0,
                    status: 0,
                    create_time: received_us / 1000,
                    send_time: 0,
                    seq: revoke.seq,
                    content: String::new(),
                    at_user_list: "[]".to_owned(),
                    face_url: String::new(),
                    ex: String::new(),
                    operation_id: text(&message.operation_id.value),
                    received_us,
                    packet: raw,
                    group_id: String::new(),
                    conversation_id: text(&revoke.conversation_id),
                    callback: message.command.key,
                    revoked_us: Some(received_us),
                    revoked_by: Some(text(&revoke.user_id)),
                };
            }
        };
        // OpenIM always sets serverMsgID; a packet without one still gets a stable key.
        let server_msg_id = if packet.server_msg_id.is_empty() {
            format!("journal-{}-{}", entry.seq, message.operation_id.value)
        } else {
            text(&packet.server_msg_id)
        };
        Row {
            role: message.command.role,
            server_msg_id,
            client_msg_id: text(&packet.client_msg_id),
            send_id: text(&packet.send_id),
            recv_id: text(&packet.recv_id),
            sender_platform_id: packet.sender_platform_id.0.into(),
            sender_nickname: text(&packet.sender_nickname),
            session_type: packet.session_type.0.into(),
            msg_from: packet.msg_from.0.into(),
            content_type: packet.content_type.0.into(),
            status: packet.status.0.into(),
            create_time: packet.create_time,
            send_time: packet.send_time,
            seq: packet.seq.into(),
            content: text(&packet.content),
            at_user_list: text(&serde_json::to_string(&packet.at_user_list).unwrap_or_else(|_| "[]".into())),
            face_url: text(&packet.face_url),
            ex: text(&packet.ex),
            operation_id: text(&message.operation_id.value),
            received_us,
            packet: raw,
            group_id: text(&packet.group_id),
            conversation_id: text(&packet.conversation_id()),
            callback: message.command.key,
            revoked_us: None,
            revoked_by: None,
        }
    }
}

/// Data the database refuses (a value too long, bad JSON) is permanent for
/// that row; everything else (no connection, a timeout, a restart) may pass.
fn is_refused_data(error: &sqlx::Error) -> bool {
    // SQLSTATE classes 22 (data exception) and 23 (integrity constraint); MySQL
    // reports data errors as 22xxx and 23xxx too, or HY000 with these codes.
    let sqlx::Error::Database(database) = error else { return false };
    let code = database.code().unwrap_or_default();
    code.starts_with("22") || code.starts_with("23")
}

/// sqlx says "pool timed out" whatever kept a connection away: the database
/// refusing or denying it, being slow, or every pooled connection busy. One
/// attempt outside the pool finds out which, so `last_error` tells the
/// operator what to fix. (The pool's acquire timeout is `connect_timeout`,
/// its size `pool_size`.)
async fn why_no_connection<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> String {
    use sqlx::{ConnectOptions, Connection};
    let timeout = pool.options().get_acquire_timeout();
    let cause = match tokio::time::timeout(timeout, pool.connect_options().connect()).await {
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
            format!(
                "a connection outside the pool came at once: the database just came back, \
                 or all {} connections of sinks.sql.pool_size were busy",
                pool.options().get_max_connections()
            )
        }
        Ok(Err(error)) => error.to_string(),
        Err(_) => "connecting takes longer than that".into(),
    };
    format!(
        "no database connection within sinks.sql.connect_timeout ({}): {cause}",
        humantime::format_duration(timeout)
    )
}

impl Sink for SqlSink {
    fn name(&self) -> &'static str {
        "sql"
    }

    fn describe(&self) -> String {
        format!("table {} at {}", self.table, self.shown_url)
    }

    /// Connects and creates the table if it is missing, at start.
    async fn check(&mut self) -> Result<(), SinkError> {
        match self.migrate().await {
            Ok(()) => Ok(()),
            // The server answered, and said no: a wrong user, password or database.
            Err(sqlx::Error::Database(error)) => Err(SinkError::permanent(format!(
                "the database refused: {error}; check the user, password and database name in sinks.sql.url, \
                 and that the user may create the table {}",
                self.table
            ))),
            Err(error) => Err(self.transient(error).await),
        }
    }

    /// Inserts the batch's rows in one statement. A row the database refuses
    /// fails the batch for good; the runner then delivers its records one by
    /// one, so only the refused row is left out.
    async fn deliver(&mut self, batch: &[Entry]) -> Result<(), SinkError> {
        if !self.migrated {
            // Creating the table is never the rows' fault: whatever fails is retried.
            if let Err(error) = self.migrate().await {
                return Err(self.transient(error).await);
            }
        }
        let postgres = matches!(self.database, Database::Postgres(_));
        let rows: Vec<Row> = batch.iter().map(|entry| Row::of(entry, postgres)).collect();
        match self.write(&rows).await {
            Ok(()) => Ok(()),
            Err(error) if is_refused_data(&error) => Err(SinkError::permanent(error.to_string())),
            Err(error) => Err(self.transient(error).await),
        }
    }

    fn attempt_timeout(&self) -> Option<(std::time::Duration, &'static str)> {
        Some((self.timeout, "sinks.sql.timeout"))
    }

    /// The database being down is its own outage, not this host's: `/stats`
    /// shows the sink degraded, `/readyz` stays 200, the journal holds the rows.
    fn failures_affect_readiness(&self) -> bool {
        false
    }
}
