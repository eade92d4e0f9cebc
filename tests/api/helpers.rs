//! One place for the test harness: a receiver on an ephemeral port with its
//! log records captured, sample packets, and small sinks that misbehave on purpose.

use openim_callback_receiver::MessageJournal as Journal;
use openim_callback_receiver::settings::{EnvSource, Settings};
use openim_callback_receiver::sinks::{Entry, Sink, SinkError, SinkSet, SinkStatus};
use openim_callback_receiver::telemetry::RecordWriter;
use openim_callback_receiver::{Receiver, ShutdownReport};
use serde_json::Value;
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const COMMAND_PATH: &str = "/callbackExample/callbackAfterSendSingleMsgCommand";

/// How long a test waits for a sink to catch up after an outage ends: the
/// runner may be sleeping out its longest backoff (30 s) when the target comes back.
pub const AFTER_AN_OUTAGE: Duration = Duration::from_secs(120);

/// Asks `probe` every 10 ms until it answers `Ok`, for at most `within`, and
/// panics with its last `Err` (the state it saw) otherwise. The limit is in
/// time, not rounds: on a loaded machine each round takes longer.
pub async fn wait_until<T>(within: Duration, mut probe: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match probe().await {
            Ok(found) => return found,
            Err(seen) if tokio::time::Instant::now() >= deadline => {
                panic!("not there after {within:?}: {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// A sample packet from `samples/`, as the README's curl lines post it.
pub fn sample(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("samples").join(name);
    std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// A minimal valid packet for `send` → `recv`.
pub fn packet(send: &str, recv: &str, content_type: i32) -> Value {
    serde_json::json!({
        "sendID": send, "recvID": recv, "contentType": content_type,
        "serverMsgID": format!("srv-{send}-{recv}-{content_type}"), "operationID": "",
        "atUserList": null, "createTime": 1732675200123_i64, "content": "{\"content\":\"hi\"}",
    })
}

/// Settings as the built-in defaults, with environment-style overrides.
/// Log records are JSON whatever the terminal, so the tests can parse them,
/// and no stats snapshot is kept unless a test asks for one (tests run in
/// parallel in one working directory). The journal goes to a directory of
/// the receiver's own unless the test names one.
pub fn settings(overrides: &[(&str, &str)]) -> Settings {
    // A small disk reserve: every test makes a journal of its own. The archive
    // (on by default, in data/ of the working directory) only where a test asks for it.
    let env = [
        ("TELEMETRY__FORMAT", "json"),
        ("STATS__SNAPSHOT_PATH", ""),
        ("JOURNAL__RESERVE_BYTES", "64KiB"),
        ("SINKS__SQL__URL", ""),
    ]
    .iter()
    .chain(overrides)
    .map(|(key, value)| (format!("OPENIM_CALLBACK__{key}"), value.to_string()))
    .collect::<HashMap<_, _>>();
    Settings::load(None, EnvSource::Map(env)).expect("test settings are valid")
}

/// Log output captured in memory.
#[derive(Clone, Default)]
pub struct CapturedLog(Arc<Mutex<Vec<u8>>>);

pub struct CapturedLogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for CapturedLogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLog {
    /// A log-sink writer that appends here.
    pub fn record_writer(&self) -> RecordWriter {
        RecordWriter::new(CapturedLogWriter(Arc::clone(&self.0)))
    }

    /// Every JSON line written so far.
    pub fn records(&self) -> Vec<Value> {
        let bytes = self.0.lock().unwrap().clone();
        let text = String::from_utf8(bytes).unwrap();
        // A record still being written has no newline yet.
        let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
        complete
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}")))
            .collect()
    }

    /// Waits (bounded) until at least `count` records are written, and returns them.
    pub async fn wait_for(&self, count: usize) -> Vec<Value> {
        wait_until(Duration::from_secs(60), async || {
            let records = self.records();
            if records.len() >= count {
                Ok(records)
            } else {
                Err(format!("expected {count} log records, have {}", records.len()))
            }
        })
        .await
    }
}

/// The journal of `settings`. A test that restarts on the same directory may
/// find the previous receiver's journal still held for a moment: its stop
/// returns at the shutdown deadline, while a stuck sink's thread is still
/// winding down (and holds the journal's lock until it ends). A process that
/// exits lets go at once; in one test process, the next start waits for it.
async fn open_journal(settings: &Settings) -> Arc<Journal> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match Journal::open(&settings.journal) {
            Ok(journal) => return journal,
            Err(openim_callback_receiver::journal::OpenError::Locked { .. })
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("cannot open the journal: {error}"),
        }
    }
}

/// A receiver serving on 127.0.0.1:0, with its log records captured as JSON.
pub struct TestReceiver {
    pub address: SocketAddr,
    pub client: reqwest::Client,
    pub log: CapturedLog,
    /// The journal's directory when the test did not choose one.
    _journal_dir: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    running: JoinHandle<std::io::Result<ShutdownReport>>,
    sinks: Vec<Arc<SinkStatus>>,
    pub journal: Arc<Journal>,
}

impl TestReceiver {
    pub async fn start() -> Self {
        Self::start_with(settings(&[]), |_| {}).await
    }

    /// Starts with `settings`'s sinks, plus any `add_sinks` adds after them.
    pub async fn start_with(mut settings: Settings, add_sinks: impl FnOnce(&mut SinkSet)) -> Self {
        // Tests with many connections hold both of their ends in this process.
        let _ = rlimit::increase_nofile_limit(u64::MAX);
        let journal_dir = (settings.journal.dir == Settings::defaults().journal.dir).then(|| {
            let dir = tempfile::tempdir().unwrap();
            settings.journal.dir = dir.path().to_owned();
            dir
        });
        let log = CapturedLog::default();
        let records = log.record_writer();
        let journal = open_journal(&settings).await;
        let (mut sinks, stats) = SinkSet::from_settings(&settings, journal, records).unwrap();
        add_sinks(&mut sinks);
        let receiver = Receiver::with_sinks(settings, sinks, stats);
        let sinks = receiver.state().sinks.clone();
        let journal = Arc::clone(&receiver.state().journal);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let running = tokio::spawn(receiver.run(listener, async {
            let _ = stopped.await;
        }));
        TestReceiver {
            address,
            client: crate::helpers::http_client(),
            log,
            _journal_dir: journal_dir,
            stop: Some(stop),
            running,
            sinks,
            journal,
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.address)
    }

    /// POSTs `body` as OpenIM does: JSON content type and an operationID header.
    pub async fn post(
        &self,
        path_and_query: &str,
        operation_id: &str,
        body: impl Into<reqwest::Body>,
    ) -> Answer {
        let response = self
            .client
            .post(self.url(path_and_query))
            .header("Content-Type", "application/json; charset=utf-8")
            .header("operationID", operation_id)
            .body(body)
            .send()
            .await
            .expect("the receiver answers");
        Answer::read(response).await
    }

    pub async fn post_packet(&self, operation_id: &str, packet: &Value) -> Answer {
        self.post(COMMAND_PATH, operation_id, packet.to_string()).await
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        response.json().await.unwrap()
    }

    /// `/stats` once the stats sink has counted `total` messages.
    pub async fn stats_after(&self, total: u64) -> Value {
        wait_until(Duration::from_secs(60), async || {
            let stats = self.get_json("/stats").await;
            if stats["messages"]["total"].as_u64() >= Some(total) {
                Ok(stats)
            } else {
                Err(format!("stats never reached {total} messages: {}", stats["messages"]))
            }
        })
        .await
    }

    /// `/stats` of sink `sink` once `until` holds for it (waits up to 60 s).
    pub async fn sink_report(&self, sink: &str, until: impl Fn(&Value) -> bool) -> Value {
        wait_until(Duration::from_secs(60), async || {
            let report = self.get_json("/stats").await["sinks"][sink].clone();
            if until(&report) { Ok(report) } else { Err(format!("sink {sink}: {report}")) }
        })
        .await
    }

    /// `/stats` of sink `sink` once it has delivered all `records` of the
    /// journal (waiting out an outage's longest backoff if it must).
    pub async fn caught_up(&self, sink: &str, records: u64) -> Value {
        wait_until(AFTER_AN_OUTAGE, async || {
            let stats = self.get_json("/stats").await;
            let report = &stats["sinks"][sink];
            if report["lag_records"] == 0 && stats["journal"]["last_seq"] == records {
                Ok(report.clone())
            } else {
                Err(format!("sink {sink} is behind: {report}"))
            }
        })
        .await
    }

    /// Drops the receiver without a shutdown, as an owner that is gone would,
    /// and returns its sinks' statuses to watch.
    pub fn abandon(self) -> Vec<Arc<SinkStatus>> {
        self.running.abort();
        self.sinks
    }

    /// Signals shutdown and waits for the receiver to finish draining.
    pub async fn stop(mut self) -> ShutdownReport {
        self.stop.take().unwrap().send(()).unwrap();
        self.running.await.unwrap().unwrap()
    }
}

/// An answer: status and the parsed envelope.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    pub async fn read(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text:?}"));
        Answer { status, body }
    }

    pub fn err_code(&self) -> i64 {
        self.body["errCode"].as_i64().unwrap()
    }

    /// Asserts the success envelope, all five keys zero or empty.
    pub fn assert_accepted(&self) {
        assert_eq!(self.status, 200, "{:?}", self.body);
        assert_eq!(
            self.body,
            serde_json::json!({"actionCode":0,"errCode":0,"errMsg":"","errDlt":"","nextCode":0})
        );
    }

    /// Asserts an error envelope with all five keys, the status and errCode.
    pub fn assert_rejected(&self, status: u16, err_code: i64) {
        assert_eq!((self.status, self.err_code()), (status, err_code), "{:?}", self.body);
        assert_eq!(self.body["actionCode"], 1);
        assert_eq!(self.body["nextCode"], 0);
        assert!(self.body["errMsg"].as_str().is_some_and(|msg| !msg.is_empty() && !msg.contains('\n')));
        assert!(self.body["errDlt"].is_string());
    }
}

/// A sink that blocks its thread on each batch until released: a stuck downstream.
pub struct StuckSink {
    entered: std::sync::mpsc::Sender<()>,
    release: std::sync::mpsc::Receiver<()>,
}

/// The test's side of a [`StuckSink`].
pub struct StuckSinkControl {
    /// Receives one `()` each time the sink starts on a batch.
    pub entered: std::sync::mpsc::Receiver<()>,
    /// Each `()` sent lets the sink finish one batch; dropping it frees the sink.
    pub release: std::sync::mpsc::Sender<()>,
}

impl StuckSink {
    pub fn new() -> (Self, StuckSinkControl) {
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        (StuckSink { entered: entered_tx, release: release_rx }, StuckSinkControl { entered, release })
    }
}

impl Sink for StuckSink {
    fn name(&self) -> &'static str {
        "stuck"
    }
    async fn deliver(&mut self, _batch: &[Entry]) -> Result<(), SinkError> {
        let _ = self.entered.send(());
        let _ = self.release.recv();
        Ok(())
    }
}

/// A sink named `name` that remembers each serverMsgID it was given. `hang`
/// makes it wait forever instead (an awaited answer that never comes, which
/// the runner can still cancel); `gate` makes it wait until the test opens it.
pub struct RecordingSink {
    pub name: &'static str,
    pub hang: bool,
    pub gate: Option<tokio::sync::watch::Receiver<bool>>,
    pub seen: Arc<Mutex<Vec<String>>>,
}

impl RecordingSink {
    pub fn new(name: &'static str) -> (Self, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        (RecordingSink { name, hang: false, gate: None, seen: Arc::clone(&seen) }, seen)
    }
}

impl Sink for RecordingSink {
    fn name(&self) -> &'static str {
        self.name
    }
    async fn deliver(&mut self, batch: &[Entry]) -> Result<(), SinkError> {
        if self.hang {
            std::future::pending::<()>().await;
        }
        if let Some(gate) = &mut self.gate {
            let _ = gate.wait_for(|open| *open).await;
        }
        let mut seen = self.seen.lock().unwrap();
        seen.extend(batch.iter().map(|entry| entry.message.server_msg_id().to_owned()));
        Ok(())
    }
}

/// Sends raw bytes on a new connection and returns everything the server answers.
pub async fn raw_request(address: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// The URL of a service the test needs, from `variable` or `default`, once it
/// answers on TCP. None (after a clear "skipped" line) when it does not, unless
/// OPENIM_CALLBACK_REQUIRE_SERVICES is set (as `.ci/run` does): then the test fails.
pub async fn service_url(what: &str, variable: &str, default: &str) -> Option<String> {
    let url = std::env::var(variable).unwrap_or_else(|_| default.to_owned());
    // scheme://[user[:password]@]host:port[/database]
    let authority =
        url.split_once("://").map_or(url.as_str(), |(_, rest)| rest).split('/').next().unwrap_or_default();
    let address = authority.rsplit('@').next().unwrap_or_default().to_owned();
    let reachable = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(&address))
        .await
        .is_ok_and(|connected| connected.is_ok());
    if reachable {
        return Some(url);
    }
    skip(&format!("no {what} at {address} (set {variable} to point at one)"));
    None
}

/// A test that cannot run here says so where a person sees it, or fails
/// when OPENIM_CALLBACK_REQUIRE_SERVICES is set (as `.ci/run` does). The line
/// goes to the process's stderr itself: libtest captures `eprintln!`, which
/// would hide the skip in a plain `cargo test`.
pub fn skip(why: &str) {
    if std::env::var_os("OPENIM_CALLBACK_REQUIRE_SERVICES").is_some() {
        panic!("{why}, and OPENIM_CALLBACK_REQUIRE_SERVICES is set");
    }
    let _ = writeln!(std::io::stderr().lock(), "skipped: {why}");
}

/// A TCP proxy the test controls, between the receiver and a service: while
/// cut, it closes every connection and refuses new ones; while stalled, it
/// keeps every connection open and forwards nothing (a network blackhole).
pub struct TcpProxy {
    pub address: SocketAddr,
    mode: Arc<tokio::sync::watch::Sender<ProxyMode>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ProxyMode {
    Forward,
    Cut,
    Stall,
}

impl TcpProxy {
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mode = Arc::new(tokio::sync::watch::Sender::new(ProxyMode::Forward));
        let target = target.to_owned();
        let modes = Arc::clone(&mode);
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else { return };
                let mut watching = modes.subscribe();
                let target = target.clone();
                tokio::spawn(async move {
                    let mode = *watching.borrow_and_update();
                    match mode {
                        ProxyMode::Cut => return, // dropped: the connection is closed at once
                        // Held open, silent, until the mode changes; then closed.
                        ProxyMode::Stall => {
                            let _ = watching.changed().await;
                            return;
                        }
                        ProxyMode::Forward => {}
                    }
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else { return };
                    // Without it, a body in several segments waits out delayed ACKs (40 ms each).
                    let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = watching.changed() => {
                            let stalled = *watching.borrow_and_update() == ProxyMode::Stall;
                            if stalled {
                                let _ = watching.changed().await;
                            }
                        }
                    }
                });
            }
        });
        TcpProxy { address, mode }
    }

    /// Closes every open connection and refuses new ones until [`Self::restore`].
    pub fn cut(&self) {
        self.mode.send_replace(ProxyMode::Cut);
    }

    /// Stops forwarding: connections stay open and nothing comes back, until
    /// [`Self::restore`] closes them.
    pub fn stall(&self) {
        self.mode.send_replace(ProxyMode::Stall);
    }

    pub fn restore(&self) {
        self.mode.send_replace(ProxyMode::Forward);
    }
}

/// A table name of this test's own, so tests can run in parallel.
pub fn unique_table(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{}", &id[..16])
}

/// An HTTP client for the tests. reqwest is built without a TLS crypto
/// provider of its own (the receiver's is ring): the first client installs it.
pub fn http_client() -> reqwest::Client {
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

pub async fn http_get(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::Response> {
    http_client().get(url).send().await
}

/// Fails (transiently) its first `failures_left` attempts, then records what it gets.
pub struct FailsFirst {
    pub failures_left: u32,
    pub seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Sink for FailsFirst {
    fn name(&self) -> &'static str {
        "flaky"
    }
    async fn deliver(&mut self, batch: &[Entry]) -> Result<(), SinkError> {
        if self.failures_left > 0 {
            self.failures_left -= 1;
            return Err(SinkError::transient("target down, on purpose"));
        }
        let mut seen = self.seen.lock().unwrap();
        seen.extend(batch.iter().map(|entry| entry.message.server_msg_id().to_owned()));
        Ok(())
    }
}
