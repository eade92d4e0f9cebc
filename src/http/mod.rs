//! The HTTP face: routes, shared state, and the request counters.

mod admin;
pub mod auth;
mod callback;
mod deadline;
pub mod error;
mod extract;
mod fast_lane;
mod messages;
pub use messages::MESSAGES_PATH;
mod metrics;
mod probes;
pub mod refusals;
mod settle;
pub use settle::SettleOutcome;
mod status_page;

use crate::MessageJournal;
use crate::callbacks::{COMMANDS, Command};
use crate::settings::Settings;
use crate::sinks::{SinkStatus, StatsHandle};
use axum::Router;
use axum::extract::State;
use axum::http::{Method, Uri};
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use error::{ApiError, Outcome, Rejection};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Semaphore;

/// Everything a request needs. One `Arc`: extractors and middleware clone the
/// state for every request, so a clone is a single reference count.
#[derive(Clone)]
pub struct AppState(Arc<SharedState>);

pub struct SharedState {
    pub settings: Settings,
    /// Where every accepted message goes before its 200.
    pub journal: Arc<MessageJournal>,
    /// Each sink's progress through the journal.
    pub sinks: Vec<Arc<SinkStatus>>,
    /// Present when the stats sink is enabled.
    pub stats: Option<StatsHandle>,
    /// Present when the SQL archive is on: what `/messages` reads.
    pub archive: Option<crate::sinks::sql::search::Archive>,
    pub requests: RequestCounters,
    /// Every refusal logged at WARN, within a rate limit (by the connection, which knows the peer).
    pub refusals: Arc<refusals::RefusalLog>,
    /// One permit per callback being handled (`server.max_in_flight`).
    pub(crate) in_flight: Arc<Semaphore>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppState")
    }
}

impl std::ops::Deref for AppState {
    type Target = SharedState;

    fn deref(&self) -> &SharedState {
        &self.0
    }
}

impl SharedState {
    /// Callbacks being handled right now.
    pub fn in_flight(&self) -> usize {
        self.settings.server.max_in_flight - self.in_flight.available_permits()
    }
}

impl AppState {
    pub fn new(
        settings: Settings,
        journal: Arc<MessageJournal>,
        sinks: Vec<Arc<SinkStatus>>,
        stats: Option<StatsHandle>,
        archive: Option<crate::sinks::sql::search::Archive>,
    ) -> Self {
        let in_flight = Arc::new(Semaphore::new(settings.server.max_in_flight));
        AppState(Arc::new(SharedState {
            settings,
            journal,
            sinks,
            stats,
            archive,
            requests: RequestCounters::new(),
            refusals: Arc::default(),
            in_flight,
        }))
    }

    /// The command named `name`, when `callbacks.record` lists it.
    fn recorded_command(&self, name: &str) -> Option<&'static Command> {
        Command::by_name(name).filter(|command| self.settings.callbacks.records(command))
    }

    /// The refusal for another webhook's command. OpenIM sends every enabled
    /// webhook to one base URL, so this is logged once per command, not per request.
    /// The name is kept, logged and answered cut to [`MAX_COMMAND_CHARS`].
    fn unknown_command(&self, command: &str, source_of: &'static str) -> ApiError {
        let command = crate::callbacks::clip(command, MAX_COMMAND_CHARS);
        if self.requests.count_unknown_command(command) {
            tracing::warn!(
                command,
                source = source_of,
                "refusing a webhook command this receiver does not handle; \
                 disable it in OpenIM or point it at another receiver (logged once per command)"
            );
        }
        ApiError::UnknownCommand { command: command.to_owned(), source_of }
    }
}

/// Outcomes of callback requests since start.
pub struct RequestCounters {
    started: Instant,
    /// Seconds from a callback's arrival to its answer.
    pub request_duration: prometheus_client::metrics::histogram::Histogram,
    accepted: AtomicU64,
    /// When the last accepted message arrived, in ms since the epoch (0: none yet).
    last_accepted_ms: AtomicI64,
    rejected: [AtomicU64; Rejection::ALL.len()],
    /// Requests that could not be callbacks (not a POST: a browser's favicon,
    /// a scanner, a bad query to /stats/daily), refused; by reason.
    other_refused: [AtomicU64; Rejection::ALL.len()],
    unknown_commands: Mutex<HashMap<String, u64>>,
}

/// Longest command name kept, logged or answered (OpenIM's longest is 40 characters).
const MAX_COMMAND_CHARS: usize = 64;

/// Distinct unknown commands remembered by name; more are counted under "other",
/// so a caller inventing names cannot grow memory without bound.
const MAX_UNKNOWN_COMMANDS: usize = 64;

impl RequestCounters {
    fn new() -> Self {
        let seconds =
            [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];
        RequestCounters {
            started: Instant::now(),
            request_duration: prometheus_client::metrics::histogram::Histogram::new(seconds),
            accepted: AtomicU64::new(0),
            last_accepted_ms: AtomicI64::new(0),
            rejected: std::array::from_fn(|_| AtomicU64::new(0)),
            other_refused: std::array::from_fn(|_| AtomicU64::new(0)),
            unknown_commands: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn count(&self, outcome: Outcome) {
        let counter = match outcome {
            Outcome::Accepted => &self.accepted,
            Outcome::Rejected(rejection) => &self.rejected[rejection as usize],
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request for `command`; true the first time it is seen.
    fn count_unknown_command(&self, command: &str) -> bool {
        let mut seen = self.unknown_commands.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = seen.get_mut(command) {
            *count += 1;
            return false;
        }
        let key = if seen.len() < MAX_UNKNOWN_COMMANDS { command } else { "other" };
        let first = !seen.contains_key(key);
        *seen.entry(key.to_owned()).or_default() += 1;
        first
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Notes that a message that arrived at `at` was accepted.
    pub(crate) fn accepted_at(&self, at: std::time::SystemTime) {
        self.last_accepted_ms.fetch_max(crate::epoch::millis(at), Ordering::Relaxed);
    }

    /// When the last accepted message arrived, in ms since the epoch.
    pub fn last_accepted_ms(&self) -> Option<i64> {
        Some(self.last_accepted_ms.load(Ordering::Relaxed)).filter(|ms| *ms > 0)
    }

    pub fn rejected(&self, rejection: Rejection) -> u64 {
        self.rejected[rejection as usize].load(Ordering::Relaxed)
    }

    /// Counts a refused request that could not have been a callback.
    pub(crate) fn count_other_refused(&self, rejection: Rejection) {
        self.other_refused[rejection as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn other_refused(&self, rejection: Rejection) -> u64 {
        self.other_refused[rejection as usize].load(Ordering::Relaxed)
    }

    pub fn unknown_commands(&self) -> HashMap<String, u64> {
        self.unknown_commands.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }
}

/// The router: callback routes under the configured base, the probes, and
/// envelope answers for every path and method that is not served.
pub fn app(state: AppState) -> App {
    let base = state.settings.callback_base().to_owned();
    let callback = || post(callback::receive).fallback(method_not_allowed);
    let other_command = || post(other_command).fallback(method_not_allowed);
    let mut callbacks = Router::new();
    // The paths given the callback handler, for the fast lane.
    let mut callback_paths = fast_lane::CallbackPaths::default();
    // {base}?command=… (OpenIM up to v3.4.0), with and without a trailing slash;
    // {base}/command (v3.4.2+), and "//" when the base in OpenIM ends with "/".
    // Static routes win over {command}, which catches every other webhook.
    let mut query_form = vec![format!("{base}/")];
    if !base.is_empty() {
        query_form.push(base.clone());
    }
    for path in query_form {
        // With the callbacks at the root, `/` is both: POST a callback, GET the status page.
        let route = if path == "/" { callback().get(status_page::page) } else { callback() };
        callbacks = callbacks.route(&path, route);
        callback_paths.insert(path);
    }
    if !base.is_empty() {
        callbacks = callbacks.route("/", get(status_page::page).fallback(method_not_allowed));
    }
    // Browsers ask for it whatever the page says.
    callbacks = callbacks.route("/favicon.ico", get(status_page::favicon).fallback(method_not_allowed));
    let recorded = COMMANDS.iter().filter(|command| state.settings.callbacks.records(command));
    for command in recorded {
        for separator in ["/", "//"] {
            let path = format!("{base}{separator}{}", command.name);
            callbacks = callbacks.route(&path, callback());
            callback_paths.insert(path);
        }
    }
    for separator in ["/", "//"] {
        callbacks = callbacks.route(&format!("{base}{separator}{{command}}"), other_command());
    }
    let routes = callbacks
        .route("/healthz", get(probes::healthz).fallback(method_not_allowed))
        .route("/readyz", get(probes::readyz).fallback(method_not_allowed))
        .route("/stats", get(probes::stats).fallback(method_not_allowed))
        .route("/stats/daily", get(probes::daily).fallback(method_not_allowed))
        .route("/metrics", get(probes::metrics).fallback(method_not_allowed))
        .route(MESSAGES_PATH, get(messages::find).fallback(method_not_allowed))
        .route("/messages/export", get(messages::export).fallback(method_not_allowed))
        .route("/messages.html", get(messages::page).fallback(method_not_allowed))
        .route(
            "/sinks/{name}/dead-letters",
            get(admin::list).delete(admin::drop_letters).fallback(method_not_allowed),
        )
        .route("/sinks/{name}/dead-letters/retry", post(admin::retry).fallback(method_not_allowed))
        .route("/sinks/{name}/rewind", post(admin::rewind).fallback(method_not_allowed))
        .fallback(not_found);
    let auth = &state.settings.auth;
    let routed = if auth.token.is_empty() && auth.allow_ips.is_empty() {
        routes.with_state(state.clone())
    } else {
        callback_paths.clear(); // every request is checked before it is routed
        // The caller check runs before routing (it may cut the token out of the
        // path), so it wraps the routes as a whole, as this router's fallback.
        Router::new()
            .fallback_service(routes.with_state(state.clone()))
            .layer(from_fn_with_state(state.clone(), auth::check_caller))
            .with_state(state.clone())
    };
    layered(fast_lane::Routes::new(routed, callback_paths, state.clone()), state)
}

/// The whole HTTP face, as the server runs it: the router inside the
/// services that see every request.
pub type App = SettleOutcome;

/// What wraps the router: `SettleOutcome` keeps Authorization out of any
/// debug output, answers a handler's panic with a 500 envelope and a request
/// that outlives every deadline with the safety net's 503, counts each answer
/// and marks refusals to be logged. It wraps the router as a whole, not each
/// route (`Router::layer`), which would box a future per layer for every
/// request. Public so tests can put routes of their own (one that panics, one
/// that hangs) inside it.
pub fn with_layers(routed: Router, state: AppState) -> App {
    layered(fast_lane::Routes::new(routed, Default::default(), state.clone()), state)
}

fn layered(routed: fast_lane::Routes, state: AppState) -> App {
    SettleOutcome::new(routed, state)
}

/// How long past `server.response_timeout` the outer safety net waits: every
/// handler answers by its own deadline, so this fires only on a bug.
pub(crate) const SAFETY_NET_MARGIN: std::time::Duration = std::time::Duration::from_secs(2);

async fn not_found(State(state): State<AppState>, uri: Uri) -> ApiError {
    ApiError::NotFound { path: uri.path().to_owned(), base: state.settings.callback_base().to_owned() }
}

/// Another webhook's command in the path: OpenIM v3.7+ sends every enabled
/// webhook to the one base URL.
async fn other_command(State(state): State<AppState>, uri: Uri) -> ApiError {
    let command = uri.path().rsplit('/').next().unwrap_or_default();
    state.unknown_command(command, "path")
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed { method: method.to_string() }
}
