//! Callbacks straight to their handler; every other request through the router.
//!
//! For each callback, axum's router matches the path in its tree, clones the
//! route's boxed service and wraps the handler's future in two more layers:
//! 2,646 of the 43,329 instructions a callback cost (callgrind,
//! scripts/bench-instructions.sh). A callback's paths are fixed when the router is
//! built (`app` collects the exact paths it gives the callback handler), so a
//! POST to one of them is handed to that handler here, through the same
//! extractors. Any other method on those paths, and every other path, goes
//! through the router, which answers them as it always has. With
//! `auth.token` or `auth.allow_ips` set there is no fast lane: the caller
//! check runs before routing, and may cut the token out of the path.

use super::{AppState, callback};
use axum::Router;
use axum::extract::Request;
use axum::http::Method;
use axum::response::Response;
use axum::routing::future::RouteFuture;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Either};
use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use tower::Service;

/// The paths whose POST is a callback, exactly as the router has them.
pub type CallbackPaths = HashSet<String, foldhash::fast::RandomState>;

/// A request's answer from [`Routes::answer`]: the callback handler's, or the router's.
pub type RoutesFuture = Either<BoxFuture<'static, Result<Response, Infallible>>, RouteFuture<Infallible>>;

#[derive(Clone)]
pub struct Routes {
    router: Router,
    callback_paths: Arc<CallbackPaths>,
    state: AppState,
}

impl Routes {
    pub fn new(router: Router, callback_paths: CallbackPaths, state: AppState) -> Self {
        Routes { router, callback_paths: Arc::new(callback_paths), state }
    }

    /// Answers `request`, by reference: a callback takes one clone of the
    /// state (its future keeps it); the router, a clone of itself.
    pub fn answer(&self, request: Request) -> RoutesFuture {
        if request.method() == Method::POST && self.callback_paths.contains(request.uri().path()) {
            return Either::Left(Box::pin(callback::receive_request(self.state.clone(), request).map(Ok)));
        }
        Either::Right(self.router.clone().call(request))
    }
}
