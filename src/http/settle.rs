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
//! instructions a callback cost, scripts/bench-instructions.sh). This is
//! one boxed future.

use super::deadline::within;
use super::error::{ApiError, Outcome};
use super::{AppState, SAFETY_NET_MARGIN, auth, refusals};
use axum::extract::{ConnectInfo, Request};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll};

#[derive(Clone)]
pub struct SettleOutcomeLayer(pub AppState);

impl<S> tower::Layer<S> for SettleOutcomeLayer {
    type Service = SettleOutcome<S>;

    fn layer(&self, inner: S) -> SettleOutcome<S> {
        SettleOutcome { inner, state: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct SettleOutcome<S> {
    inner: S,
    state: AppState,
}

impl<S> tower::Service<Request> for SettleOutcome<S>
where
    S: tower::Service<Request, Error = Infallible> + Send + 'static,
    S::Response: IntoResponse,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let state = self.state.clone();
        // The peer is known here only when auth.allow_ips asked for it; else the connection adds it.
        let client = request.extensions().get::<ConnectInfo<std::net::SocketAddr>>().map(|info| {
            auth::client_address(info.0.ip(), request.headers(), &state.settings.server.trusted_proxies)
        });
        let operation_id = request.headers().get(super::extract::OPERATION_ID).cloned();
        // Only a POST can be a callback (OpenIM sends nothing else): other refused
        // requests are counted apart, and not logged as callbacks lost.
        let could_be_callback = request.method() == axum::http::Method::POST;
        let answered = std::panic::catch_unwind(AssertUnwindSafe(|| self.inner.call(request)));
        let safety_net = state.settings.server.response_timeout + SAFETY_NET_MARGIN;
        Box::pin(async move {
            let outcome = match answered {
                // Every handler answers by its own deadline: the safety net fires only on a bug.
                Ok(answered) => {
                    let deadline = || tokio::time::Instant::now() + safety_net;
                    within(deadline, AssertUnwindSafe(answered).catch_unwind()).await
                }
                Err(panic) => Ok(Err(panic)),
            };
            let mut response = match outcome {
                Ok(Ok(Ok(answer))) => answer.into_response(),
                Ok(Err(panic)) => answer_panic(panic),
                Err(_elapsed) => {
                    tracing::error!(
                        limit_ms = safety_net.as_millis(),
                        "a request outlived every deadline: answered 503 by the safety net"
                    );
                    ApiError::DeadlineExceeded { deadline_ms: safety_net.as_millis() }.into_response()
                }
            };
            match response.extensions_mut().remove::<Outcome>() {
                Some(Outcome::Rejected(rejection)) if !could_be_callback => {
                    state.requests.count_other_refused(rejection);
                }
                Some(outcome) => {
                    state.requests.count(outcome);
                    if let Outcome::Rejected(rejection) = outcome {
                        response.extensions_mut().insert(refusals::Refused {
                            rejection,
                            operation_id,
                            client,
                        });
                    }
                }
                None => {}
            }
            Ok(response)
        })
    }
}

/// A handler's panic: logged at ERROR and answered with a 500 envelope
/// (counted like any other answer, by the outcome it carries).
fn answer_panic(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let reason = crate::sinks::panic_reason(&*panic);
    tracing::error!(reason, "a request handler panicked: answered 500");
    ApiError::Internal.into_response()
}
