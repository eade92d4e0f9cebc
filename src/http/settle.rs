//! The outermost of the router's own layers: counts each answer by its
//! outcome, marks refusals for the connection to log, and answers the
//! safety net's bare 503 with the envelope.
//!
//! A hand-written tower service rather than `axum::middleware::from_fn`:
//! `from_fn` clones and boxes the whole inner service for every request,
//! about 2,500 instructions of the request path (measured with callgrind);
//! this costs one boxed future.

use super::error::{ApiError, Outcome};
use super::{AppState, SAFETY_NET_MARGIN, auth, refusals};
use axum::extract::{ConnectInfo, Request};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::future::BoxFuture;
use std::convert::Infallible;
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
        let answered = self.inner.call(request);
        Box::pin(async move {
            let Ok(answer) = answered.await;
            let mut response = answer.into_response();
            if response.status() == StatusCode::SERVICE_UNAVAILABLE
                && !response.headers().contains_key(header::CONTENT_TYPE)
                && response.extensions().get::<Outcome>().is_none()
            {
                let limit = state.settings.server.response_timeout + SAFETY_NET_MARGIN;
                tracing::error!(
                    limit_ms = limit.as_millis(),
                    "a request outlived every deadline: answered 503 by the safety net"
                );
                response = ApiError::DeadlineExceeded { deadline_ms: limit.as_millis() }.into_response();
            }
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
