//! Who may call. The open-source OpenIMServer signs nothing: the operator
//! controls only the URL it posts to. So the checks are the caller's address
//! (`auth.allow_ips`, with `X-Forwarded-For` believed only from
//! `server.trusted_proxies`) and a secret in the URL (`auth.token`, as the path
//! segment after the base, or as `Authorization: Bearer` for callers that can
//! send headers).
//!
//! This runs before routing: a token found in the path is cut out of the URI,
//! so the routes, and every log line and error after this point, never see it.

use super::AppState;
use super::error::ApiError;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Uri, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use subtle::ConstantTimeEq;

/// Paths that stay open with a token set: the container's probes. They also
/// answer a peer on loopback whatever `auth.allow_ips` says: the image's
/// HEALTHCHECK and a kubelet's exec probe run there, and an orchestrator that
/// never sees the receiver healthy never starts OpenIM after it.
const OPEN_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// The pages a person opens in a browser: asked for the token as a password.
const BROWSER_PAGES: [&str; 2] = ["/", "/messages.html"];

pub async fn check_caller(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let auth = &state.settings.auth;
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip());
    let probe = OPEN_PATHS.contains(&request.uri().path());
    // The peer itself, not a forwarded address: a proxy on loopback is not the probe.
    let local_probe = probe && peer.is_some_and(|peer| peer.is_loopback());
    if !auth.allow_ips.is_empty() && !local_probe {
        let caller =
            peer.map(|peer| client_address(peer, request.headers(), &state.settings.server.trusted_proxies));
        if !caller.is_some_and(|ip| auth.allow_ips.iter().any(|range| range.contains(&ip))) {
            return ApiError::Forbidden { caller }.into_response();
        }
    }
    let token = auth.token.expose();
    if !token.is_empty() && !probe {
        match strip_token(request.uri(), state.settings.callback_base(), token) {
            Some(stripped) => *request.uri_mut() = stripped,
            None if credentials_match(request.headers(), token) => {}
            None if BROWSER_PAGES.contains(&request.uri().path()) => {
                // A page, opened in a browser: ask for the token as the password;
                // the browser then sends it with the page's own requests.
                let mut refused = ApiError::Unauthorized.into_response();
                refused.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static(
                        r#"Basic realm="openim-callback-receiver", charset="UTF-8""#,
                    ),
                );
                return refused;
            }
            None => return ApiError::Unauthorized.into_response(),
        }
    }
    next.run(request).await
}

/// The caller, when it may use an endpoint that is private to loopback
/// without `auth.token` (`/messages`, the admin endpoints); else the refusal
/// saying `what`. With a token set, the caller check before routing has let
/// only its holders in.
pub fn loopback_or_token(
    state: &AppState,
    request: &Request,
    what: &'static str,
) -> Result<IpAddr, ApiError> {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|info| info.0.ip());
    // No peer address (a transport that gives none) is no loopback.
    let peer = peer.unwrap_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED));
    let caller = client_address(peer, request.headers(), &state.settings.server.trusted_proxies);
    if state.settings.auth.token.expose().is_empty() && !caller.is_loopback() {
        return Err(ApiError::LoopbackOnly { caller, what });
    }
    Ok(caller)
}

/// True for the paths that need the peer's address whatever `auth.allow_ips`
/// says: those private to loopback without a token.
pub fn private_to_loopback(path: &str) -> bool {
    path.starts_with(super::MESSAGES_PATH) || path.starts_with("/sinks/")
}

/// The caller's address: the peer, or, when the peer is a trusted proxy, the
/// nearest address in `X-Forwarded-For` that is not one of the trusted proxies.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[IpNet]) -> IpAddr {
    let trusted = |ip: &IpAddr| trusted_proxies.iter().any(|range| range.contains(ip));
    if !trusted(&peer) {
        return peer;
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    // Right to left: each proxy appends the address it saw.
    for hop in forwarded.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if trusted(&ip) => continue,
            Ok(ip) => return ip,
            // Garbage in the chain: nothing left of it can be believed.
            Err(_) => return peer,
        }
    }
    peer
}

/// `{base}/<token>/rest?query` → `{base}/rest?query` when the segment is the token.
fn strip_token(uri: &Uri, base: &str, token: &str) -> Option<Uri> {
    let rest = uri.path().strip_prefix(base)?.strip_prefix('/')?;
    let (segment, after) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    if !bool::from(segment.as_bytes().ct_eq(token.as_bytes())) {
        return None;
    }
    let path = if base.is_empty() && after.is_empty() { "/" } else { after };
    let query = uri.query().map(|query| format!("?{query}")).unwrap_or_default();
    format!("{base}{path}{query}").parse().ok()
}

/// `Authorization: Bearer <token>`, or `Basic` with the token as the
/// password (any user name): what a browser sends for the status page.
fn credentials_match(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|value| value.to_str().ok()) else {
        return false;
    };
    // Scheme names are case-insensitive (RFC 9110, 11.1): "bearer" is "Bearer".
    let (scheme, credentials) = value.trim_start().split_once(' ').unwrap_or((value, ""));
    let presented = if scheme.eq_ignore_ascii_case("Bearer") {
        credentials.trim().as_bytes().to_vec()
    } else if scheme.eq_ignore_ascii_case("Basic") {
        let basic = credentials;
        use base64::Engine;
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(basic.trim()) else {
            return false;
        };
        match decoded.iter().position(|byte| *byte == b':') {
            Some(colon) => decoded[colon + 1..].to_vec(),
            None => return false,
        }
    } else {
        return false;
    };
    bool::from(presented.as_slice().ct_eq(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef";

    fn stripped(uri: &str, base: &str) -> Option<String> {
        strip_token(&uri.parse().unwrap(), base, TOKEN).map(|uri| uri.to_string())
    }

    #[test]
    fn the_token_segment_is_cut_out_of_every_url_form() {
        let base = "/callbackExample";
        assert_eq!(
            stripped("/callbackExample/0123456789abcdef/callbackAfterSendSingleMsgCommand", base).as_deref(),
            Some("/callbackExample/callbackAfterSendSingleMsgCommand")
        );
        assert_eq!(
            stripped("/callbackExample/0123456789abcdef?command=x", base).as_deref(),
            Some("/callbackExample?command=x")
        );
        assert_eq!(
            stripped("/callbackExample/0123456789abcdef//c", base).as_deref(),
            Some("/callbackExample//c")
        );
        assert_eq!(stripped("/0123456789abcdef?command=x", "").as_deref(), Some("/?command=x"));
        assert_eq!(stripped("/callbackExample/0123456789abcdeX/c", base), None);
        assert_eq!(stripped("/callbackExample/c", base), None);
        assert_eq!(stripped("/elsewhere/0123456789abcdef/c", base), None);
    }

    #[test]
    fn scheme_names_match_in_any_case() {
        use base64::Engine;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("any:{TOKEN}"));
        for value in [
            format!("Bearer {TOKEN}"),
            format!("bearer {TOKEN}"),
            format!("BEARER  {TOKEN}"),
            format!("basic {basic}"),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            assert!(credentials_match(&headers, TOKEN), "{value}");
        }
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, format!("Token {TOKEN}").parse().unwrap());
        assert!(!credentials_match(&headers, TOKEN));
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.9, 10.0.0.7".parse().unwrap());
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let stranger: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(client_address(proxy, &headers, &proxies), "203.0.113.9".parse::<IpAddr>().unwrap());
        assert_eq!(client_address(stranger, &headers, &proxies), stranger, "a stranger's header is ignored");
        headers.insert("x-forwarded-for", "junk, 10.0.0.7".parse().unwrap());
        assert_eq!(client_address(proxy, &headers, &proxies), proxy);
    }
}
