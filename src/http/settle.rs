//! What wraps the router, once for every request: a handler's panic becomes
//! a 500 envelope (the connection kept; hyper would drop it unanswered), a
//! request that outlives every deadline gets the safety net's 503 envelope,
//! each answer is counted by its outcome, and refusals are marked for the
//! connection to log.
//!
//! A hand-written tower service around the whole router, rather than
//! tower-http's catch-panic and timeout layers and `axum::middleware`
//! applied with `Router::layer`: axum puts each such layer inside every
//! route and boxes its future, so four layers cost every request four
//! allocations and the copies of four nested futures (5,600 of the 51,000
//! instructions a callback cost, scripts/bench-instructions.sh). Its
//! future, [`Settling`], is written by hand too, so that it is not boxed and
//! the router's future inside it is never moved.

use super::error::{ApiError, Outcome};
use super::fast_lane::{Routes, RoutesFuture};
use super::{AppState, SAFETY_NET_MARGIN, auth, refusals};
use axum::extract::{ConnectInfo, Request};
use axum::http::header::{self, Entry};
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The router inside the services that see every request. A connection calls
/// [`SettleOutcome::answer`] on its own copy, by reference: the only thing a
/// request clones is the state its future keeps. (A clone of the whole stack
/// per request, as tower's `oneshot` makes, took five reference counts that
/// every runtime thread shares up and down again: 611 of 36,327 instructions
/// a callback, scripts/bench-instructions.sh; under load at 64 connections
/// the gain was inside the noise, README round 9.)
#[derive(Clone)]
pub struct SettleOutcome {
    inner: Routes,
    state: AppState,
}

impl SettleOutcome {
    pub fn new(inner: Routes, state: AppState) -> Self {
        SettleOutcome { inner, state }
    }

    /// Answers `request`, under the safety net, counted.
    pub fn answer(&self, mut request: Request) -> Settling<RoutesFuture> {
        // Authorization is kept out of any debug output of the headers. Looked
        // up first: `entry` makes room for an insert, even when none follows.
        if request.headers().contains_key(header::AUTHORIZATION)
            && let Entry::Occupied(mut authorization) = request.headers_mut().entry(header::AUTHORIZATION)
        {
            authorization.iter_mut().for_each(|value| value.set_sensitive(true));
        }
        let state = self.state.clone();
        // The peer is known here only when auth.allow_ips asked for it; else the connection adds it.
        let client = request.extensions().get::<ConnectInfo<std::net::SocketAddr>>().map(|info| {
            auth::client_address(info.0.ip(), request.headers(), &state.settings.server.trusted_proxies)
        });
        let operation_id = request.headers().get(super::extract::OPERATION_ID).cloned();
        // Only a POST can be a callback (OpenIM sends nothing else): other refused
        // requests are counted apart, and not logged as callbacks lost.
        let could_be_callback = request.method() == axum::http::Method::POST;
        let (answering, panicked) =
            match std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.answer(request))) {
                Ok(answering) => (Some(answering), None),
                Err(panic) => (None, Some(panic)),
            };
        Settling {
            answering,
            safety_net: None,
            panicked,
            request: RequestFacts { state, client, operation_id, could_be_callback },
        }
    }
}

impl tower::Service<Request> for SettleOutcome {
    type Response = Response;
    type Error = Infallible;
    type Future = Settling<RoutesFuture>;

    fn poll_ready(&mut self, _context: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The router is always ready.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        self.answer(request)
    }
}

pin_project_lite::pin_project! {
    /// A request's answer on its way out: the router's future, polled in
    /// place (an `async` block here would be boxed, and the router's future
    /// moved into it, on every request), under the safety net, which is made
    /// only if the answer is not ready at the first poll.
    pub struct Settling<F> {
        #[pin]
        answering: Option<F>,
        #[pin]
        safety_net: Option<tokio::time::Sleep>,
        // The router's own call panicked: no future to poll.
        panicked: Option<Box<dyn std::any::Any + Send + 'static>>,
        request: RequestFacts,
    }
}

/// What the answer is counted and logged with.
struct RequestFacts {
    state: AppState,
    client: Option<std::net::IpAddr>,
    operation_id: Option<axum::http::HeaderValue>,
    could_be_callback: bool,
}

impl<F, R> Future for Settling<F>
where
    F: Future<Output = Result<R, Infallible>>,
    R: IntoResponse,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let response = match this.answering.as_mut().as_pin_mut() {
            None => match this.panicked.take() {
                Some(panic) => answer_panic(panic),
                // Polled again after its answer: a caller's bug, never hyper's.
                None => return Poll::Pending,
            },
            Some(answering) => match std::panic::catch_unwind(AssertUnwindSafe(|| answering.poll(context))) {
                Ok(Poll::Ready(Ok(answer))) => answer.into_response(),
                Err(panic) => answer_panic(panic),
                Ok(Poll::Pending) => {
                    // Every handler answers by its own deadline: the safety net fires only on a bug.
                    let limit = this.request.state.settings.server.response_timeout + SAFETY_NET_MARGIN;
                    if this.safety_net.is_none() {
                        this.safety_net.set(Some(tokio::time::sleep(limit)));
                    }
                    let fired = this.safety_net.as_pin_mut().is_some_and(|net| net.poll(context).is_ready());
                    if !fired {
                        return Poll::Pending;
                    }
                    tracing::error!(
                        limit_ms = limit.as_millis(),
                        "a request outlived every deadline: answered 503 by the safety net"
                    );
                    ApiError::DeadlineExceeded { deadline_ms: limit.as_millis() }.into_response()
                }
            },
        };
        // The router's future is done with (or cut off): dropped now, not with the connection's next request.
        this.answering.set(None);
        Poll::Ready(Ok(this.request.count(response)))
    }
}

impl RequestFacts {
    /// Counts the answer by its outcome, and marks a refused callback for the connection to log.
    fn count(&mut self, mut response: Response) -> Response {
        match response.extensions_mut().remove::<Outcome>() {
            Some(Outcome::Rejected(rejection)) if !self.could_be_callback => {
                self.state.requests.count_other_refused(rejection);
            }
            Some(outcome) => {
                self.state.requests.count(outcome);
                if let Outcome::Rejected(rejection) = outcome {
                    response.extensions_mut().insert(refusals::Refused {
                        rejection,
                        operation_id: self.operation_id.take(),
                        client: self.client,
                    });
                }
            }
            None => {}
        }
        response
    }
}

/// A handler's panic: logged at ERROR and answered with a 500 envelope
/// (counted like any other answer, by the outcome it carries).
fn answer_panic(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let reason = crate::sinks::panic_reason(&*panic);
    tracing::error!(reason, "a request handler panicked: answered 500");
    ApiError::Internal.into_response()
}
