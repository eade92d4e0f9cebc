//! The SQL archive at a million messages, on each database: the sustained
//! insert rate through the real sink (batches of `sinks.sql.batch_size`, the
//! text index kept as rows go in), the disk it takes, and how long
//! `GET /messages` searches take, by the same query code the endpoint runs.
//!
//!   cargo bench --bench archive                       # SQLite, PostgreSQL, MariaDB; 1,000,000 rows each
//!   ROWS=100000 ENGINES=sqlite cargo bench --bench archive
//!
//! PostgreSQL and MariaDB are the ones on 127.0.0.1 (OPENIM_CALLBACK_TEST_POSTGRES_URL,
//! OPENIM_CALLBACK_TEST_MYSQL_URL to point elsewhere); each run makes its own table and drops it.

use openim_callback_receiver::callbacks::{
    AFTER_SEND_GROUP_MSG, AFTER_SEND_SINGLE_MSG, Callback, ContentType, MessagePacket, OperationId,
    ReceivedMessage, SessionType,
};
use openim_callback_receiver::settings::{EnvSource, Settings};
use openim_callback_receiver::sinks::sql::SqlSink;
use openim_callback_receiver::sinks::sql::search::Query;
use openim_callback_receiver::sinks::{Entry, Sink};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const ENGLISH: [&str; 16] = [
    "hello", "meeting", "tomorrow", "thanks", "photo", "order", "shipping", "invoice", "weekend", "lunch",
    "project", "deadline", "coffee", "ticket", "update", "family",
];
const CHINESE: [&str; 16] = [
    "今天", "明天", "开会", "谢谢", "照片", "订单", "发货", "发票", "周末", "午饭", "项目", "截止", "咖啡",
    "车票", "更新", "家人",
];

/// Message `i`: 10,000 people in 50,000 single chats and 500 groups; two
/// English words and two Chinese ones; one in a thousand says "needle" and
/// 天气预报 (the rare terms searched for).
fn message(i: u64, now: SystemTime) -> ReceivedMessage {
    let word = |list: &[&'static str; 16], salt: u64| list[((i * 2654435761 + salt) % 16) as usize];
    let rare = if i % 1000 == 7 { " needle 天气预报" } else { "" };
    let text = format!(
        "{} {} {}{} #{i}{rare}",
        word(&ENGLISH, 1),
        word(&ENGLISH, 5),
        word(&CHINESE, 3),
        word(&CHINESE, 11)
    );
    let group = i.is_multiple_of(10);
    let packet = MessagePacket {
        server_msg_id: format!("bench-{i:08}"),
        client_msg_id: format!("client-{i:08}"),
        send_id: format!("user-{}", i % 10_000),
        recv_id: if group { String::new() } else { format!("user-{}", (i * 7 + 1) % 10_000) },
        group_id: if group { format!("group-{}", i % 500) } else { String::new() },
        session_type: if group { SessionType::READ_GROUP } else { SessionType::SINGLE_CHAT },
        content_type: ContentType(101),
        content: serde_json::json!({ "content": text }).to_string(),
        create_time: 1_732_675_200_000 + i as i64 * 250,
        send_time: 1_732_675_200_000 + i as i64 * 250,
        sender_nickname: format!("User {}", i % 10_000),
        ..Default::default()
    };
    let raw = serde_json::to_vec(&packet).expect("a packet serializes");
    ReceivedMessage {
        command: if group { AFTER_SEND_GROUP_MSG } else { AFTER_SEND_SINGLE_MSG },
        callback: Callback::Message(packet),
        raw: raw.into(),
        operation_id: OperationId { value: format!("op-{i}"), generated: false },
        received_at: now,
    }
}

fn settings_for(url: &str, table: &str) -> Settings {
    let env = [
        ("OPENIM_CALLBACK__SINKS__SQL__URL", url),
        ("OPENIM_CALLBACK__SINKS__SQL__TABLE", table),
        // The bench measures the database, not the free-space floor of this machine's disk.
        ("OPENIM_CALLBACK__SINKS__SQL__MIN_FREE_BYTES", "0"),
        ("OPENIM_CALLBACK__SINKS__SQL__TIMEOUT", "10m"),
    ];
    let env = env.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect();
    Settings::load(None, EnvSource::Map(env)).expect("bench settings are valid")
}

/// Median wall time of `runs` runs of `query`, and how many rows it found.
async fn time_query(
    archive: &openim_callback_receiver::sinks::sql::search::Archive,
    query: &Query,
) -> (Duration, usize) {
    let mut times = Vec::new();
    let mut found = 0;
    for _ in 0..5 {
        let started = Instant::now();
        found = archive.find(query).await.expect("the query runs").messages.len();
        times.push(started.elapsed());
    }
    times.sort();
    (times[times.len() / 2], found)
}

async fn bench(engine: &str, url: &str, rows: u64) {
    let table = format!("bench_{}", uuid::Uuid::new_v4().simple().to_string().get(..12).unwrap_or("x"));
    let settings = settings_for(url, &table);
    let mut sink = SqlSink::new(&settings.sinks.sql).expect("a sink for the URL");
    sink.check().await.expect("the table is made");
    let archive = sink.archive();
    let now = SystemTime::now();
    let batch_size = settings.sinks.sql.batch_size as u64;
    let started = Instant::now();
    let mut seq = 0;
    while seq < rows {
        let batch: Vec<Entry> = (seq..(seq + batch_size).min(rows))
            .map(|i| Entry { seq: i + 1, message: Arc::new(message(i, now)) })
            .collect();
        sink.deliver(&batch).await.expect("the batch is archived");
        seq += batch.len() as u64;
    }
    let took = started.elapsed();
    let bytes = archive.size_bytes().await.unwrap_or(0);
    println!(
        "{engine:<9} insert {rows} rows: {:.1} s, {:.0} rows/s; on disk {:.0} MiB ({:.0} bytes a row)",
        took.as_secs_f64(),
        rows as f64 / took.as_secs_f64(),
        bytes as f64 / (1024.0 * 1024.0),
        bytes as f64 / rows as f64
    );
    let searches: [(&str, Query); 6] = [
        ("q=needle (1 in 1,000)", Query { text: Some("needle".into()), limit: 50, ..Query::default() }),
        ("q=天气预报 (1 in 1,000)", Query { text: Some("天气预报".into()), limit: 50, ..Query::default() }),
        ("q=hello (1 in 8)", Query { text: Some("hello".into()), limit: 50, ..Query::default() }),
        ("q=你好 (2 chars, none)", Query { text: Some("你好".into()), limit: 50, ..Query::default() }),
        ("q=周末 (2 chars, 1 in 8)", Query { text: Some("周末".into()), limit: 50, ..Query::default() }),
        (
            "conversation, oldest first",
            Query {
                conversation_id: Some("sg_group-10".into()),
                ascending: true,
                limit: 50,
                ..Query::default()
            },
        ),
    ];
    for (what, query) in &searches {
        let (median, found) = time_query(&archive, query).await;
        println!(
            "{engine:<9} search {what:<28} {:>8.1} ms  ({found} rows on the page)",
            median.as_secs_f64() * 1000.0
        );
    }
    archive.drop_table().await.ok();
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // `cargo bench` passes --bench; nothing else is taken from the command line.
    let rows: u64 = std::env::var("ROWS").ok().and_then(|rows| rows.parse().ok()).unwrap_or(1_000_000);
    let engines = std::env::var("ENGINES").unwrap_or_else(|_| "sqlite,postgres,mariadb".into());
    let directory = tempfile::tempdir().expect("a temporary directory");
    for engine in engines.split(',') {
        let url = match engine {
            "sqlite" => format!("sqlite://{}/archive.sqlite3", directory.path().display()),
            "postgres" => std::env::var("OPENIM_CALLBACK_TEST_POSTGRES_URL")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into()),
            "mariadb" => std::env::var("OPENIM_CALLBACK_TEST_MYSQL_URL")
                .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into()),
            other => panic!("unknown engine {other}: sqlite, postgres or mariadb"),
        };
        bench(engine, &url, rows).await;
    }
}
