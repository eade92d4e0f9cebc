//! The SQL archive sink: every message as one row of `sinks.sql.table` in
//! SQLite (embedded, the default: `data/archive.sqlite3`), PostgreSQL or
//! MySQL/MariaDB, through sqlx.
//!
//! Rows are inserted a batch per statement (UNNEST arrays on PostgreSQL,
//! multi-row VALUES on MySQL and SQLite: one transaction, so one fsync, per
//! batch) and keyed by `server_msg_id`, with `ON CONFLICT DO NOTHING` /
//! `ON DUPLICATE KEY UPDATE` (a no-op): a batch
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

pub mod partitions;
pub mod retention;
pub mod search;

use super::{Entry, Sink, SinkError};
use crate::callbacks::{AFTER_REVOKE_MSG, Callback, Role};
use serde::{Deserialize, Serialize};
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqlitePool, SqlitePoolOptions};

/// Rows per statement with multi-row VALUES (26 parameters a row: MySQL takes
/// 65,535 parameters a statement, SQLite 32,766).
const ROWS_PER_STATEMENT: usize = 1000;

/// Up to this many rows, a multi-row INSERT stays prepared for the next batch
/// of its length: a trickle of callbacks makes statements of a row or a few.
const SMALL_STATEMENT_ROWS: usize = 8;

/// Whether the INSERT of `rows` rows is kept prepared by the connection. sqlx
/// keeps a statement per text, up to 100 a connection, and the text of a
/// multi-row INSERT is its row count: kept for every length a batch happened
/// to have, they held 200–300 MiB (a prepared INSERT of hundreds of rows is
/// megabytes), so only the small ones and the full batch (`full_rows`, every
/// batch while the sink is behind) are; another length is prepared for its
/// batch alone (about a millisecond for hundreds of rows, paid when the sink
/// is keeping up). One statement per batch, not several: cut into
/// power-of-two statements, SQLite inserted about 8% fewer rows a second
/// (`cargo bench --bench archive`; its text index seems to flush per statement).
fn kept_prepared(rows: usize, full_rows: usize) -> bool {
    rows <= SMALL_STATEMENT_ROWS || rows == full_rows
}

/// Which database a definition or a statement is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Engine {
    Postgres,
    MySql,
    Sqlite,
}

impl Engine {
    /// This engine's one of (PostgreSQL, MySQL, SQLite).
    fn pick<'a>(self, (postgres, mysql, sqlite): (&'a str, &'a str, &'a str)) -> &'a str {
        match self {
            Engine::Postgres => postgres,
            Engine::MySql => mysql,
            Engine::Sqlite => sqlite,
        }
    }
}

/// The first release's columns, with their types per engine (PostgreSQL,
/// MySQL, SQLite). MySQL keeps text in LONGTEXT, so that nothing is cut short,
/// and ids in VARCHAR(255), so that they can be keys.
const FIRST_COLUMNS: [(&str, (&str, &str, &str)); 20] = [
    ("server_msg_id", ("TEXT PRIMARY KEY", "VARCHAR(255) NOT NULL PRIMARY KEY", "TEXT PRIMARY KEY NOT NULL")),
    ("client_msg_id", ("TEXT NOT NULL", "VARCHAR(255) NOT NULL", "TEXT NOT NULL")),
    ("send_id", ("TEXT NOT NULL", "VARCHAR(255) NOT NULL", "TEXT NOT NULL")),
    ("recv_id", ("TEXT NOT NULL", "VARCHAR(255) NOT NULL", "TEXT NOT NULL")),
    ("sender_platform_id", ("INTEGER NOT NULL", "INT NOT NULL", "INTEGER NOT NULL")),
    ("sender_nickname", ("TEXT NOT NULL", "LONGTEXT NOT NULL", "TEXT NOT NULL")),
    ("session_type", ("INTEGER NOT NULL", "INT NOT NULL", "INTEGER NOT NULL")),
    ("msg_from", ("INTEGER NOT NULL", "INT NOT NULL", "INTEGER NOT NULL")),
    ("content_type", ("INTEGER NOT NULL", "INT NOT NULL", "INTEGER NOT NULL")),
    ("status", ("INTEGER NOT NULL", "INT NOT NULL", "INTEGER NOT NULL")),
    ("create_time", ("BIGINT NOT NULL", "BIGINT NOT NULL", "INTEGER NOT NULL")),
    ("send_time", ("BIGINT NOT NULL", "BIGINT NOT NULL", "INTEGER NOT NULL")),
    ("seq", ("BIGINT NOT NULL", "BIGINT NOT NULL", "INTEGER NOT NULL")),
    ("content", ("TEXT NOT NULL", "LONGTEXT NOT NULL", "TEXT NOT NULL")),
    ("at_user_list", ("JSONB NOT NULL", "JSON NOT NULL", "TEXT NOT NULL")),
    ("face_url", ("TEXT NOT NULL", "LONGTEXT NOT NULL", "TEXT NOT NULL")),
    ("ex", ("TEXT NOT NULL", "LONGTEXT NOT NULL", "TEXT NOT NULL")),
    ("operation_id", ("TEXT NOT NULL", "VARCHAR(255) NOT NULL", "TEXT NOT NULL")),
    // SQLite has no time type: RFC 3339 text in UTC (see `sqlite_time`).
    ("received_at", ("TIMESTAMPTZ NOT NULL", "DATETIME(6) NOT NULL", "TEXT NOT NULL")),
    ("packet", ("JSONB NOT NULL", "JSON NOT NULL", "TEXT NOT NULL")),
];

/// Columns added since the first release, with their definitions per engine:
/// a table an older release created gains them.
const ADDED_COLUMNS: [(&str, (&str, &str, &str)); 6] = [
    (
        "group_id",
        ("TEXT NOT NULL DEFAULT ''", "VARCHAR(255) NOT NULL DEFAULT ''", "TEXT NOT NULL DEFAULT ''"),
    ),
    (
        "conversation_id",
        ("TEXT NOT NULL DEFAULT ''", "VARCHAR(255) NOT NULL DEFAULT ''", "TEXT NOT NULL DEFAULT ''"),
    ),
    // Every row of an older release came from the single chat's callback.
    (
        "callback",
        (
            "TEXT NOT NULL DEFAULT 'afterSendSingleMsg'",
            "VARCHAR(64) NOT NULL DEFAULT 'afterSendSingleMsg'",
            "TEXT NOT NULL DEFAULT 'afterSendSingleMsg'",
        ),
    ),
    ("revoked_at", ("TIMESTAMPTZ NULL", "DATETIME(6) NULL", "TEXT NULL")),
    ("revoked_by", ("TEXT NULL", "VARCHAR(255) NULL", "TEXT NULL")),
    // The readable text of a text-like message, what `GET /messages?q=` searches
    // (MySQL cannot give a LONGTEXT a literal default: NULL there reads as '').
    ("text", ("TEXT NOT NULL DEFAULT ''", "LONGTEXT NULL", "TEXT NOT NULL DEFAULT ''")),
];

/// The first release's table, as it made it (the added columns come after).
/// `by_month`: PostgreSQL's, partitioned by month of `create_time` (see `partitions`).
fn create_table(engine: Engine, table: &str, by_month: bool) -> String {
    let columns: Vec<String> = FIRST_COLUMNS
        .iter()
        .map(|(name, definitions)| match (*name, by_month) {
            // A partitioned table's key must hold the partition column.
            ("server_msg_id", true) => "server_msg_id TEXT NOT NULL".to_owned(),
            _ => format!("{name} {}", engine.pick(*definitions)),
        })
        .collect();
    let columns = columns.join(", ");
    if by_month && engine == Engine::Postgres {
        return format!(
            "CREATE TABLE IF NOT EXISTS {table} ({columns}, PRIMARY KEY (server_msg_id, create_time))
             PARTITION BY RANGE (create_time)"
        );
    }
    match engine {
        Engine::MySql => format!(
            "CREATE TABLE IF NOT EXISTS {table} ({columns},
                INDEX {table}_conversation (send_id, recv_id, create_time),
                INDEX {table}_create_time (create_time)
            ) DEFAULT CHARSET = utf8mb4"
        ),
        Engine::Postgres | Engine::Sqlite => format!("CREATE TABLE IF NOT EXISTS {table} ({columns})"),
    }
}

/// SQLite's text search: an FTS5 index of `text` by trigrams (so `q` finds a
/// substring in any script, Chinese as well as English, any case), kept
/// from the table by triggers. It refers to rows by rowid, which only a
/// VACUUM changes: after one, rebuild it (README, "Finding messages").
fn sqlite_text_index(table: &str) -> [String; 4] {
    let index = format!("{table}_text");
    [
        format!(
            "CREATE VIRTUAL TABLE IF NOT EXISTS {index}
             USING fts5(text, content = '{table}', content_rowid = 'rowid', tokenize = 'trigram')"
        ),
        format!(
            "CREATE TRIGGER IF NOT EXISTS {index}_insert AFTER INSERT ON {table} BEGIN
                INSERT INTO {index} (rowid, text) VALUES (new.rowid, new.text);
             END"
        ),
        format!(
            "CREATE TRIGGER IF NOT EXISTS {index}_delete AFTER DELETE ON {table} BEGIN
                INSERT INTO {index} ({index}, rowid, text) VALUES ('delete', old.rowid, old.text);
             END"
        ),
        format!(
            "CREATE TRIGGER IF NOT EXISTS {index}_update AFTER UPDATE OF text ON {table} BEGIN
                INSERT INTO {index} ({index}, rowid, text) VALUES ('delete', old.rowid, old.text);
                INSERT INTO {index} (rowid, text) VALUES (new.rowid, new.text);
             END"
        ),
    ]
}

/// PostgreSQL's text search: a trigram GIN index on `text` (`pg_trgm`), which
/// `ILIKE '%term%'` uses for a term of three characters or more. The
/// extension needs a privileged user once per database: without it, search
/// still works, by a scan, and the start-up log says so.
async fn postgres_text_index(pool: &PgPool, table: &str) {
    let statements = [
        "CREATE EXTENSION IF NOT EXISTS pg_trgm".to_owned(),
        format!("CREATE INDEX IF NOT EXISTS {table}_text_trgm ON {table} USING gin (text gin_trgm_ops)"),
    ];
    for statement in &statements {
        if let Err(error) = sqlx::query(statement).execute(pool).await {
            tracing::warn!(%error, statement = statement.as_str(),
                "no trigram index for text search: GET /messages?q= scans the table instead");
            return;
        }
    }
}

/// Fills in OpenIM's conversation id of rows an older release wrote (single
/// chats and notifications: the two ids sorted byte-wise, as Go sorts them).
fn backfill_conversations(engine: Engine, table: &str) -> String {
    let rows = "WHERE conversation_id = '' AND session_type IN (1, 4)";
    match engine {
        Engine::MySql => format!(
            "UPDATE {table} SET conversation_id = CONCAT(IF(session_type = 4, 'sn_', 'si_'),
                IF(BINARY send_id <= BINARY recv_id, CONCAT(send_id, '_', recv_id), CONCAT(recv_id, '_', send_id)))
             {rows}"
        ),
        Engine::Postgres | Engine::Sqlite => {
            // SQLite compares text byte-wise already (BINARY); PostgreSQL by its collation unless told.
            let bytewise = if engine == Engine::Postgres { " COLLATE \"C\"" } else { "" };
            format!(
                "UPDATE {table} SET conversation_id = CASE session_type WHEN 4 THEN 'sn_' ELSE 'si_' END ||
                    CASE WHEN send_id{bytewise} <= recv_id{bytewise} THEN send_id || '_' || recv_id
                    ELSE recv_id || '_' || send_id END
                 {rows}"
            )
        }
    }
}

/// The columns every insert writes, in the order of its values.
const INSERT_COLUMNS: &str = "server_msg_id, client_msg_id, send_id, recv_id, sender_platform_id,
    sender_nickname, session_type, msg_from, content_type, status, create_time, send_time, seq, content,
    at_user_list, face_url, ex, operation_id, received_at, packet, group_id, conversation_id, callback,
    revoked_at, revoked_by, text";

/// SQLite has no time type: a time is RFC 3339 text in UTC to the
/// microsecond (`2026-12-01T19:01:25.123456Z`, which sorts as it reads).
fn sqlite_time(micros: i64) -> String {
    crate::epoch::rfc3339_micros(crate::epoch::from_micros(micros)).as_str().to_owned()
}

/// Multi-row VALUES, for MySQL and SQLite: the same columns and binds; each
/// engine writes a time its own way (`$time`, given the builder and the
/// microseconds) and says what a repeat of a key does (`$on_conflict`). The
/// statements of a batch share one transaction: one commit (SQLite's
/// `synchronous = FULL` and InnoDB fsync at each), and the rows land together.
macro_rules! insert_values {
    ($db:ty, $pool:expr, $table:expr, $rows:expr, $full_rows:expr, $time:expr, $on_conflict:expr) => {{
        let mut transaction = $pool.begin().await?;
        for chunk in $rows.chunks(ROWS_PER_STATEMENT) {
            let mut builder =
                sqlx::QueryBuilder::<$db>::new(format!("INSERT INTO {} ({INSERT_COLUMNS}) ", $table));
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
                    .push_bind(&row.operation_id);
                $time(&mut values, Some(row.received_us));
                values
                    .push_bind(&row.packet)
                    .push_bind(&row.group_id)
                    .push_bind(&row.conversation_id)
                    .push_bind(row.callback);
                $time(&mut values, row.revoked_us);
                values.push_bind(&row.revoked_by).push_bind(&row.text);
            });
            builder.push($on_conflict);
            builder
                .build()
                .persistent(kept_prepared(chunk.len(), $full_rows))
                .execute(&mut *transaction)
                .await?;
        }
        transaction.commit().await?;
    }};
}

/// What a batch of rows does when its key is there already.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OnConflict {
    /// A replay, or the message's saved-to-database row came first: nothing.
    Keep,
    /// Saved to OpenIM's database: the row takes the real seq.
    SetSeq,
}

crate::sinks::sink_settings! {
    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SqlSinkSettings {
        pub enabled: bool,
        /// `sqlite://path` (the default, `sqlite://data/archive.sqlite3`),
        /// `postgres://…` or `mysql://…` (MariaDB too); empty for no archive.
        /// Holds a password, so never shown.
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
        /// With SQLite: below this much free space on the database's disk the
        /// archive stops writing (degraded) and resumes by itself once there is
        /// room, so a growing archive never fills the disk the journal shares.
        #[serde(deserialize_with = "crate::settings::byte_size")]
        pub min_free_bytes: u64,
        /// Rows whose `create_time` is older than this many days are deleted, at
        /// start and every hour; 0 keeps everything.
        pub retention_days: u32,
        /// PostgreSQL only: `"month"` makes a new table partitioned by month of
        /// `create_time`, so retention drops whole months.
        pub partition: partitions::Partition,
    }
}

impl SqlSinkSettings {
    /// True when an archive is configured: enabled, with a URL.
    pub fn is_on(&self) -> bool {
        self.enabled && !self.url.expose().is_empty()
    }

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
        check_count("sinks.sql.min_free_bytes", self.min_free_bytes, 0, 1 << 50)?;
        check_count("sinks.sql.retention_days", self.retention_days.into(), 0, 100_000)?;
        let postgres =
            ["postgres://", "postgresql://"].iter().any(|scheme| self.url.expose().starts_with(scheme));
        if self.partition == partitions::Partition::Month && self.is_on() && !postgres {
            return Err(Invalid::new(
                "sinks.sql.partition",
                "\"month\" is for PostgreSQL only (sinks.sql.url)",
            ));
        }
        let schemes = ["sqlite:", "postgres://", "postgresql://", "mysql://", "mariadb://"];
        if self.is_on() && !schemes.iter().any(|scheme| self.url.expose().starts_with(scheme)) {
            let why = "must start with sqlite://, postgres://, postgresql://, mysql:// or mariadb:// (empty: no archive)";
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
    /// With SQLite: the database file's directory, and the free space it must keep.
    keep_free: Option<(std::path::PathBuf, u64)>,
    retention_days: u32,
    /// What `sinks.sql.partition` asks for a table this sink makes.
    partition: partitions::Partition,
    /// The table as it is: partitioned by month (PostgreSQL), with the months made so far.
    partitioned: bool,
    months_made: std::collections::HashSet<i64>,
    /// Rows in the INSERT of a full batch (see [`kept_prepared`]).
    full_rows: usize,
}

#[derive(Clone)]
pub(crate) enum Database {
    Postgres(PgPool),
    MySql(MySqlPool),
    Sqlite(SqlitePool),
}

impl Database {
    fn engine(&self) -> Engine {
        match self {
            Database::Postgres(_) => Engine::Postgres,
            Database::MySql(_) => Engine::MySql,
            Database::Sqlite(_) => Engine::Sqlite,
        }
    }
}

impl SqlSink {
    /// A sink for the database at `settings.url`. Connects lazily: the
    /// receiver starts (and accepts messages) while the database is down.
    pub fn new(settings: &SqlSinkSettings) -> Result<Self, SinkError> {
        let url = settings.url.expose();
        let timeout = settings.connect_timeout;
        let mut keep_free = None;
        let database = if url.starts_with("sqlite:") {
            let (pool, directory) = sqlite_pool(url, settings)?;
            keep_free = Some((directory, settings.min_free_bytes));
            Database::Sqlite(pool)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
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
            keep_free,
            retention_days: settings.retention_days,
            partition: settings.partition,
            partitioned: false,
            months_made: std::collections::HashSet::new(),
            full_rows: settings.batch_size.min(ROWS_PER_STATEMENT),
        })
    }

    /// On a table partitioned by month, makes the partitions `rows` need.
    async fn make_months(&mut self, rows: &[Row]) -> Result<(), sqlx::Error> {
        let Database::Postgres(pool) = &self.database else { return Ok(()) };
        if !self.partitioned {
            return Ok(());
        }
        for row in rows {
            let month = partitions::month_of(row.create_time);
            if !self.months_made.contains(&month) {
                partitions::make(pool, &self.table, month).await?;
                self.months_made.insert(month);
            }
        }
        Ok(())
    }

    /// Refuses to write while the SQLite database's disk has less free space
    /// than `sinks.sql.min_free_bytes`: a transient failure, so the runner
    /// retries (the sink shows degraded, naming why) and resumes once there is room.
    fn check_free_space(&self) -> Result<(), SinkError> {
        let Some((directory, min_free)) = &self.keep_free else { return Ok(()) };
        let free = crate::journal::free_bytes(directory).map_err(|error| {
            SinkError::transient(format!("free space of {}: {error}", directory.display()))
        })?;
        if free < *min_free {
            return Err(SinkError::transient(format!(
                "not writing: {free} bytes free on the disk of {}, below sinks.sql.min_free_bytes ({min_free}); \
                 the journal keeps the messages, and the archive resumes once there is room",
                directory.display()
            )));
        }
        Ok(())
    }

    /// Creates the table and its indexes if missing, and gives a table an
    /// older release made the columns added since (never alters or drops).
    async fn migrate(&mut self) -> Result<(), sqlx::Error> {
        let table = &self.table;
        let engine = self.engine();
        let by_month = self.partition == partitions::Partition::Month;
        let mut statements = vec![create_table(engine, table, by_month)];
        if engine != Engine::MySql {
            // MySQL's are in its CREATE TABLE: it has no CREATE INDEX IF NOT EXISTS.
            statements.push(format!(
                "CREATE INDEX IF NOT EXISTS {table}_conversation ON {table} (send_id, recv_id, create_time)"
            ));
            statements
                .push(format!("CREATE INDEX IF NOT EXISTS {table}_create_time ON {table} (create_time)"));
        }
        // sqlx types each query by its database: the same steps, once per pool type.
        macro_rules! migrate_with {
            ($pool:expr, $columns_query:expr) => {{
                // Two replicas creating the table at one moment must not race:
                // PostgreSQL takes an advisory lock for the transaction, SQLite
                // has one writer at a time; MySQL's DDL commits as it goes.
                let mut transaction = $pool.begin().await?;
                if engine == Engine::Postgres {
                    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                        .bind(format!("openim-callback-receiver create {table}"))
                        .execute(&mut *transaction)
                        .await?;
                }
                for statement in &statements {
                    sqlx::query(statement).execute(&mut *transaction).await?;
                }
                let present: Vec<String> =
                    sqlx::query_scalar($columns_query).bind(table).fetch_all(&mut *transaction).await?;
                let has = |column: &str| present.iter().any(|name| name.eq_ignore_ascii_case(column));
                let had_conversations = has("conversation_id");
                for (column, definitions) in ADDED_COLUMNS {
                    if !has(column) {
                        let definition = engine.pick(definitions);
                        let statement = format!("ALTER TABLE {table} ADD COLUMN {column} {definition}");
                        sqlx::query(&statement).execute(&mut *transaction).await?;
                    }
                }
                if !had_conversations {
                    let statement = backfill_conversations(engine, table);
                    sqlx::query(&statement).execute(&mut *transaction).await?;
                }
                if engine == Engine::MySql {
                    let indexed: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM information_schema.statistics
                         WHERE table_schema = DATABASE() AND table_name = ? AND index_name = ?",
                    )
                    .bind(table)
                    .bind(format!("{table}_conversation_id"))
                    .fetch_one(&mut *transaction)
                    .await?;
                    if indexed == 0 {
                        let statement = format!(
                            "CREATE INDEX {table}_conversation_id ON {table} (conversation_id, create_time)"
                        );
                        sqlx::query(&statement).execute(&mut *transaction).await?;
                    }
                } else {
                    let statement = format!(
                        "CREATE INDEX IF NOT EXISTS {table}_conversation_id ON {table} (conversation_id, create_time)"
                    );
                    sqlx::query(&statement).execute(&mut *transaction).await?;
                }
                if engine == Engine::Sqlite {
                    let indexed: Option<i64> =
                        sqlx::query_scalar("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1")
                            .bind(format!("{table}_text"))
                            .fetch_optional(&mut *transaction)
                            .await?;
                    for statement in sqlite_text_index(table) {
                        sqlx::query(&statement).execute(&mut *transaction).await?;
                    }
                    if indexed.is_none() {
                        // Rows from before the index: indexed once, from the table.
                        let statement = format!("INSERT INTO {table}_text({table}_text) VALUES ('rebuild')");
                        sqlx::query(&statement).execute(&mut *transaction).await?;
                    }
                }
                transaction.commit().await?;
            }};
        }
        match &self.database {
            Database::Postgres(pool) => migrate_with!(
                pool,
                "SELECT CAST(column_name AS TEXT) FROM information_schema.columns
                 WHERE table_schema = current_schema() AND table_name = $1"
            ),
            Database::MySql(pool) => migrate_with!(
                pool,
                "SELECT CAST(column_name AS CHAR) FROM information_schema.columns
                 WHERE table_schema = DATABASE() AND table_name = ?"
            ),
            Database::Sqlite(pool) => migrate_with!(pool, "SELECT name FROM pragma_table_info(?1)"),
        }
        if let Database::Postgres(pool) = &self.database {
            postgres_text_index(pool, table).await;
            self.partitioned = partitions::is_partitioned(pool, table).await?;
            if by_month && !self.partitioned {
                tracing::warn!(
                    table = table.as_str(),
                    "sinks.sql.partition = \"month\", but the table exists without partitions: it is used as it is"
                );
            }
        }
        self.migrated = true;
        Ok(())
    }

    fn engine(&self) -> Engine {
        self.database.engine()
    }

    /// The archive, for reading it back (`GET /messages`): the same pool.
    pub fn archive(&self) -> search::Archive {
        search::Archive { database: self.database.clone(), table: self.table.clone() }
    }

    /// A failure that may pass, explained: sqlx's bare "pool timed out" gets its cause.
    async fn transient(&self, error: sqlx::Error) -> SinkError {
        let message = match (&error, &self.database) {
            (sqlx::Error::PoolTimedOut, Database::Postgres(pool)) => why_no_connection(pool).await,
            (sqlx::Error::PoolTimedOut, Database::MySql(pool)) => why_no_connection(pool).await,
            (sqlx::Error::PoolTimedOut, Database::Sqlite(pool)) => why_no_connection(pool).await,
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
                // A partitioned table's key holds create_time too (a message keeps its createTime).
                let key = if self.partitioned { "server_msg_id, create_time" } else { "server_msg_id" };
                let statement = format!(
                    "INSERT INTO {table} ({INSERT_COLUMNS})
                     SELECT r.server_msg_id, r.client_msg_id, r.send_id, r.recv_id, r.sender_platform_id::INTEGER,
                        r.sender_nickname, r.session_type::INTEGER, r.msg_from::INTEGER, r.content_type::INTEGER,
                        r.status::INTEGER, r.create_time, r.send_time, r.seq, r.content, r.at_user_list::JSONB,
                        r.face_url, r.ex, r.operation_id, TIMESTAMPTZ 'epoch' + r.received_us * INTERVAL '1 microsecond', r.packet::JSONB,
                        r.group_id, r.conversation_id, r.callback,
                        TIMESTAMPTZ 'epoch' + r.revoked_us * INTERVAL '1 microsecond', r.revoked_by, r.text
                     FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::BIGINT[], $6::TEXT[],
                        $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::BIGINT[], $11::BIGINT[], $12::BIGINT[],
                        $13::BIGINT[], $14::TEXT[], $15::TEXT[], $16::TEXT[], $17::TEXT[], $18::TEXT[],
                        $19::BIGINT[], $20::TEXT[], $21::TEXT[], $22::TEXT[], $23::TEXT[], $24::BIGINT[], $25::TEXT[], $26::TEXT[])
                        AS r(server_msg_id, client_msg_id, send_id, recv_id, sender_platform_id, sender_nickname,
                        session_type, msg_from, content_type, status, create_time, send_time, seq, content,
                        at_user_list, face_url, ex, operation_id, received_us, packet,
                        group_id, conversation_id, callback, revoked_us, revoked_by, text)
                     ON CONFLICT ({key}) {on_conflict}"
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
                    .bind(column(|r| r.text.clone()))
                    .execute(pool)
                    .await?;
            }
            Database::MySql(pool) => {
                use sqlx::query_builder::Separated;
                // Exact to the microsecond, whatever the session's time zone.
                let time = |values: &mut Separated<'_, '_, sqlx::MySql, &str>, micros: Option<i64>| {
                    values
                        .push("TIMESTAMPADD(MICROSECOND, ")
                        .push_bind_unseparated(micros)
                        .push_unseparated(", '1970-01-01 00:00:00')");
                };
                // A repeat (a replay after a crash) changes nothing; unlike INSERT
                // IGNORE, this keeps every other error an error, so a value too
                // long for its column is refused loudly instead of cut short.
                let on_conflict = match on_conflict {
                    OnConflict::Keep => " ON DUPLICATE KEY UPDATE server_msg_id = server_msg_id",
                    OnConflict::SetSeq => " ON DUPLICATE KEY UPDATE seq = VALUES(seq)",
                };
                insert_values!(sqlx::MySql, pool, table, rows, self.full_rows, time, on_conflict);
            }
            Database::Sqlite(pool) => {
                use sqlx::query_builder::Separated;
                let time = |values: &mut Separated<'_, '_, sqlx::Sqlite, &str>, micros: Option<i64>| {
                    values.push_bind(micros.map(sqlite_time));
                };
                let on_conflict = match on_conflict {
                    OnConflict::Keep => " ON CONFLICT (server_msg_id) DO NOTHING",
                    OnConflict::SetSeq => " ON CONFLICT (server_msg_id) DO UPDATE SET seq = excluded.seq",
                };
                insert_values!(sqlx::Sqlite, pool, table, rows, self.full_rows, time, on_conflict);
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
            Database::Sqlite(_) => at.clone(),
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
            ($pool:expr, $revoked_at:expr) => {{
                let marked = sqlx::query(&update)
                    .bind($revoked_at)
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
            Database::Postgres(pool) => mark_or_count!(pool, revoked_us),
            Database::MySql(pool) => mark_or_count!(pool, revoked_us),
            Database::Sqlite(pool) => mark_or_count!(pool, sqlite_time(revoked_us)),
        }
    }

    /// The `index`th bind parameter as this database writes it.
    fn parameter(&self, index: usize) -> String {
        match self.database {
            Database::Postgres(_) => format!("${index}"),
            Database::MySql(_) => "?".to_owned(),
            Database::Sqlite(_) => format!("?{index}"),
        }
    }

    /// Marks the newly saved messages that a revoke kept on its own names.
    async fn link_revokes(&self, saved: &[&Row]) -> Result<(), sqlx::Error> {
        let table = &self.table;
        let conversations: Vec<String> = saved.iter().map(|row| row.conversation_id.clone()).collect();
        // `head` joins each message row `m` to a revoke's row `r`; the rest is the same.
        macro_rules! link_with {
            ($db:ty, $pool:expr, $head:expr) => {{
                let mut builder = sqlx::QueryBuilder::<$db>::new($head);
                builder.push_bind(AFTER_REVOKE_MSG.key);
                builder.push(" AND m.callback <> ").push_bind(AFTER_REVOKE_MSG.key);
                builder.push(" AND m.revoked_at IS NULL AND m.conversation_id IN (");
                let mut list = builder.separated(", ");
                for conversation in &conversations {
                    list.push_bind(conversation);
                }
                builder.push(")");
                builder.build().execute($pool).await?;
            }};
        }
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
                let head = format!(
                    "UPDATE {table} AS m JOIN {table} AS r
                        ON r.conversation_id = m.conversation_id AND r.seq = m.seq
                     SET m.revoked_at = r.revoked_at, m.revoked_by = r.revoked_by
                     WHERE r.callback = "
                );
                link_with!(sqlx::MySql, pool, head);
            }
            Database::Sqlite(pool) => {
                let head = format!(
                    "UPDATE {table} AS m SET revoked_at = r.revoked_at, revoked_by = r.revoked_by
                     FROM {table} AS r
                     WHERE r.conversation_id = m.conversation_id AND r.seq = m.seq AND r.callback = "
                );
                link_with!(sqlx::Sqlite, pool, head);
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
    text: String,
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
                    text: String::new(),
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
            text: text(&packet.readable_text()),
        }
    }
}

/// The pool for `sqlite:<path>`: the file (and its directory) created if
/// missing, WAL (readers such as `GET /messages` never wait for the writer),
/// and a commit durable when it returns (`synchronous = FULL`): the sink's
/// position moves past a batch only once its rows would survive a power loss.
fn sqlite_pool(url: &str, settings: &SqlSinkSettings) -> Result<(SqlitePool, std::path::PathBuf), SinkError> {
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
    use std::str::FromStr;
    let invalid = |error: sqlx::Error| SinkError::permanent(format!("sinks.sql.url: {error}"));
    let options = SqliteConnectOptions::from_str(url)
        .map_err(invalid)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(settings.timeout);
    let file = options.get_filename().to_owned();
    let directory = match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&directory).map_err(|error| {
        SinkError::permanent(format!("sinks.sql.url: cannot create {}: {error}", directory.display()))
    })?;
    let pool = SqlitePoolOptions::new()
        .max_connections(settings.pool_size)
        .acquire_timeout(settings.connect_timeout)
        .connect_lazy_with(options);
    Ok((pool, directory))
}

/// Data the database refuses (a value too long, bad JSON) is permanent for
/// that row; everything else (no connection, a timeout, a restart) may pass.
fn is_refused_data(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(database) = error else { return false };
    let code = database.code().unwrap_or_default();
    if database.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        // SQLite's primary result code, the low byte of an extended one:
        // SQLITE_TOOBIG (18), SQLITE_CONSTRAINT (19), SQLITE_MISMATCH (20).
        // A full disk (SQLITE_FULL, 13) or a busy lock passes.
        let primary = code.parse::<i32>().ok().map(|code| code & 0xff);
        return matches!(primary, Some(18..=20));
    }
    // SQLSTATE classes 22 (data exception) and 23 (integrity constraint); MySQL
    // reports data errors as 22xxx and 23xxx too, or HY000 with these codes.
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

    /// Connects and creates the table if it is missing, at start; then trims
    /// it to `retention_days` once (an hourly task does it from then on).
    async fn check(&mut self) -> Result<(), SinkError> {
        match self.migrate().await {
            Ok(()) if self.retention_days > 0 => {
                self.archive().trim(self.retention_days).await.map_err(|error| {
                    SinkError::transient(format!("trimming the archive to sinks.sql.retention_days: {error}"))
                })?;
                Ok(())
            }
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
        self.check_free_space()?;
        let postgres = matches!(self.database, Database::Postgres(_));
        let rows: Vec<Row> = batch.iter().map(|entry| Row::of(entry, postgres)).collect();
        if let Err(error) = self.make_months(&rows).await {
            return Err(self.transient(error).await);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_small_inserts_and_the_full_batch_stay_prepared() {
        let full_rows = 500;
        let kept: Vec<usize> =
            (1..=ROWS_PER_STATEMENT).filter(|&rows| kept_prepared(rows, full_rows)).collect();
        assert_eq!(kept, [1, 2, 3, 4, 5, 6, 7, 8, 500]);
        assert!(kept_prepared(ROWS_PER_STATEMENT, ROWS_PER_STATEMENT));
    }

    fn entry(seq: u64) -> Entry {
        use crate::callbacks::{
            AFTER_SEND_SINGLE_MSG, ContentType, MessagePacket, OperationId, ReceivedMessage,
        };
        let packet = MessagePacket {
            server_msg_id: format!("msg-{seq}"),
            send_id: "alice".to_owned(),
            recv_id: "bob".to_owned(),
            content_type: ContentType(101),
            content: r#"{"content":"hello"}"#.to_owned(),
            ..Default::default()
        };
        let message = ReceivedMessage {
            command: AFTER_SEND_SINGLE_MSG,
            raw: serde_json::to_vec(&packet).unwrap().into(),
            callback: Callback::Message(packet),
            operation_id: OperationId { value: format!("op-{seq}"), generated: false },
            received_at: std::time::SystemTime::now(),
        };
        Entry { seq, message: std::sync::Arc::new(message) }
    }

    #[tokio::test]
    async fn a_batch_of_an_odd_length_leaves_no_prepared_insert_behind() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("archive.sqlite3").display());
        let env = [
            ("OPENIM_CALLBACK__SINKS__SQL__URL", url.as_str()),
            ("OPENIM_CALLBACK__SINKS__SQL__BATCH_SIZE", "50"),
            // One connection: the one whose prepared statements are counted.
            ("OPENIM_CALLBACK__SINKS__SQL__POOL_SIZE", "1"),
            ("OPENIM_CALLBACK__SINKS__SQL__MIN_FREE_BYTES", "0"),
        ];
        let env = env.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect();
        let settings = crate::settings::Settings::load(None, crate::settings::EnvSource::Map(env)).unwrap();
        let mut sink = SqlSink::new(&settings.sinks.sql).unwrap();
        sink.check().await.unwrap();
        let mut next = 0;
        let mut batch = |rows: u64| {
            let batch: Vec<Entry> = (next + 1..=next + rows).map(entry).collect();
            next += rows;
            batch
        };
        let Database::Sqlite(pool) = sink.database.clone() else { unreachable!("a sqlite URL") };
        let prepared = || async { sqlx::Connection::cached_statements_size(&*pool.acquire().await.unwrap()) };

        sink.deliver(&batch(1)).await.unwrap();
        let before = prepared().await;
        for rows in 9..50 {
            sink.deliver(&batch(rows)).await.unwrap();
        }
        assert_eq!(prepared().await, before, "41 batch lengths, none of them kept");
        sink.deliver(&batch(50)).await.unwrap();
        sink.deliver(&batch(50)).await.unwrap();
        assert_eq!(prepared().await, before + 1, "the full batch's INSERT, kept once");

        let archived: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM openim_messages").fetch_one(&pool).await.unwrap();
        assert_eq!(archived as u64, next, "every row of every batch");
    }
}
