//! Limits and hostile transports: idle connections, slow clients, bursts past
//! the in-flight limit, requests malformed below HTTP's surface, and who may call.

use crate::helpers::{COMMAND_PATH, TestReceiver, packet, raw_request, settings, wait_until};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection (or `limit` passes); true if it closed.
async fn closed_by_server(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buffer = [0u8; 1024];
    let reading = async {
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(limit, reading).await.is_ok()
}

#[tokio::test]
async fn a_thousand_idle_connections_do_not_keep_a_callback_from_its_answer() {
    let receiver = TestReceiver::start().await;
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(TcpStream::connect(receiver.address).await.unwrap());
    }
    let answer = receiver.post_packet("op-busy", &packet("a", "b", 101)).await;
    answer.assert_accepted();
    assert_eq!(receiver.get_json("/stats").await["requests"]["accepted"], 1);
    drop(idle);
}

#[tokio::test]
async fn a_client_sending_its_headers_a_byte_at_a_time_is_disconnected() {
    let receiver = TestReceiver::start_with(
        // The keep-alive timeout is far shorter, so a close can be told apart: the slowloris keeps
        // sending (never idle), and only the header-read timeout may end it.
        settings(&[("SERVER__HEADER_READ_TIMEOUT", "800ms"), ("SERVER__KEEP_ALIVE_TIMEOUT", "100ms")]),
        |_| {},
    )
    .await;
    let mut stream = TcpStream::connect(receiver.address).await.unwrap();
    let connected = std::time::Instant::now();
    let head = format!("POST {COMMAND_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n");
    let mut disconnected = false;
    for byte in head.bytes() {
        if stream.write_all(&[byte]).await.is_err() {
            disconnected = true;
            break;
        }
        // Paced writes: a slowloris client, not a timing assertion.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The whole head would take 4 s at this pace; the server must not wait for it.
    assert!(disconnected || closed_by_server(&mut stream, Duration::from_secs(10)).await);
    // Not before the header-read timeout: the connection was busy, so the (shorter)
    // keep-alive timeout did not close it. A lower bound only, which no slow machine breaks.
    assert!(connected.elapsed() >= Duration::from_millis(800), "closed after {:?}", connected.elapsed());
    receiver.post_packet("op", &packet("a", "b", 101)).await.assert_accepted();
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let receiver =
        TestReceiver::start_with(settings(&[("SERVER__KEEP_ALIVE_TIMEOUT", "300ms")]), |_| {}).await;
    let mut stream = TcpStream::connect(receiver.address).await.unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut answer = [0u8; 512];
    let read = stream.read(&mut answer).await.unwrap();
    assert!(answer[..read].starts_with(b"HTTP/1.1 200"));
    assert!(
        closed_by_server(&mut stream, Duration::from_secs(10)).await,
        "the idle connection was kept open"
    );
}

/// One callback written as OpenIM's Go client writes it, on an open connection; the answer's status line.
async fn post_on(stream: &mut TcpStream, operation_id: &str) -> String {
    let body = packet("a", "b", 101).to_string();
    let request = format!(
        "POST {COMMAND_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json; charset=utf-8\r\n\
         Operationid: {operation_id}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0; 4096];
    let read =
        tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer)).await.unwrap().unwrap();
    String::from_utf8_lossy(&answer[..read]).lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_keep_alive_connection_outlives_the_header_read_timeout_between_callbacks() {
    // OpenIM's Go client keeps an idle connection for 90 s and does not resend a POST that
    // fails on a connection the server has just closed: the idle wait between two callbacks
    // must not be cut by the (short) header-read timeout.
    let receiver =
        TestReceiver::start_with(settings(&[("SERVER__HEADER_READ_TIMEOUT", "200ms")]), |_| {}).await;
    let mut stream = TcpStream::connect(receiver.address).await.unwrap();
    assert_eq!(post_on(&mut stream, "op-first").await, "HTTP/1.1 200 OK");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(post_on(&mut stream, "op-second").await, "HTTP/1.1 200 OK", "the same connection, still open");
    assert_eq!(receiver.get_json("/stats").await["requests"]["accepted"], 2);
}

#[tokio::test]
async fn a_connection_that_never_sends_a_request_is_closed_after_the_header_read_timeout() {
    let receiver =
        TestReceiver::start_with(settings(&[("SERVER__HEADER_READ_TIMEOUT", "300ms")]), |_| {}).await;
    let mut silent = TcpStream::connect(receiver.address).await.unwrap();
    // The keep-alive timeout (120 s by default) is for connections that have served a request.
    assert!(closed_by_server(&mut silent, Duration::from_secs(10)).await, "the silent connection was kept");
}

#[tokio::test]
async fn a_burst_past_the_in_flight_limit_is_shed_with_503_and_the_server_recovers() {
    let receiver = TestReceiver::start_with(
        settings(&[("SERVER__MAX_IN_FLIGHT", "4"), ("SERVER__RESPONSE_TIMEOUT", "20s")]),
        |_| {},
    )
    .await;
    // Four requests whose bodies have not finished arriving: the limit is reached.
    let body = packet("a", "b", 101).to_string();
    let (first_half, second_half) = body.split_at(body.len() / 2);
    let mut waiting = Vec::new();
    for index in 0..4 {
        let mut stream = TcpStream::connect(receiver.address).await.unwrap();
        let head = format!(
            "POST {COMMAND_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             operationID: op-w{index}\r\nContent-Length: {}\r\n\r\n{first_half}",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        waiting.push(stream);
    }
    wait_until(Duration::from_secs(60), async || {
        let in_flight = receiver.get_json("/stats").await["requests"]["in_flight"].clone();
        if in_flight == 4 { Ok(()) } else { Err(format!("{in_flight} requests in flight, not 4")) }
    })
    .await;
    for index in 0..10 {
        let shed = receiver.post_packet(&format!("op-s{index}"), &packet("a", "b", 101)).await;
        shed.assert_rejected(503, 5033);
    }
    // The bodies complete: the waiting requests are accepted, and new ones are served again.
    for mut stream in waiting {
        stream.write_all(second_half.as_bytes()).await.unwrap();
        let mut answer = vec![0; 4096];
        let read =
            tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer)).await.unwrap().unwrap();
        let answer = String::from_utf8_lossy(&answer[..read]);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    receiver.post_packet("op-after", &packet("a", "b", 101)).await.assert_accepted();
    let stats = receiver.stats_after(5).await;
    assert_eq!(stats["requests"]["rejected"]["overloaded"], 10);
    assert_eq!(stats["requests"]["accepted"], 5);
}

/// Requests broken below JSON: framing, headers, protocol versions.
#[tokio::test]
async fn requests_malformed_at_the_http_level_get_clear_answers() {
    let receiver = TestReceiver::start_with(settings(&[("SERVER__RESPONSE_TIMEOUT", "300ms")]), |_| {}).await;
    let body = packet("a", "b", 101).to_string();
    let head = |extra: &str, length: usize| {
        format!(
            "POST {COMMAND_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\noperationID: op\r\n\
             Connection: close\r\n{extra}Content-Length: {length}\r\n\r\n"
        )
    };
    let cases: Vec<(&str, String, &str, Option<&str>)> = vec![
        ("body longer than Content-Length", head("", body.len() - 5) + &body, "HTTP/1.1 400", Some("4006")),
        ("body shorter than Content-Length", head("", body.len() + 50) + &body, "HTTP/1.1 503", Some("5030")),
        (
            "chunked body",
            format!(
                "POST {COMMAND_PATH} HTTP/1.1\r\nHost: x\r\noperationID: op\r\nTransfer-Encoding: chunked\r\n\
                 Connection: close\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                body.len()
            ),
            "HTTP/1.1 200",
            Some("\"errCode\":0"),
        ),
        (
            "no Host header",
            format!(
                "POST {COMMAND_PATH} HTTP/1.1\r\noperationID: op\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
            "HTTP/1.1 200",
            None,
        ),
        (
            "HTTP/1.0",
            format!(
                "POST {COMMAND_PATH} HTTP/1.0\r\noperationID: op\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
            "HTTP/1.0 200",
            None,
        ),
        (
            "a 64 KiB header",
            head(&format!("X-Junk: {}\r\n", "j".repeat(64 * 1024)), body.len()) + &body,
            "HTTP/1.1 431",
            None,
        ),
        (
            "garbage instead of a request line",
            "\x16\x03\x01 not http at all\r\n\r\n".to_owned(),
            "HTTP/1.1 400",
            None,
        ),
    ];
    for (what, request, status_line, contains) in cases {
        let answer = raw_request(receiver.address, request.as_bytes()).await;
        assert!(answer.starts_with(status_line), "{what}: {answer:?}");
        if let Some(text) = contains {
            assert!(answer.contains(text), "{what}: {answer:?}");
        }
    }
    receiver.post_packet("op", &packet("a", "b", 101)).await.assert_accepted();
}

mod auth {
    use super::*;

    const TOKEN: &str = "k3y-0123456789-abcdef";

    async fn with_token() -> TestReceiver {
        TestReceiver::start_with(settings(&[("AUTH__TOKEN", TOKEN)]), |_| {}).await
    }

    #[tokio::test]
    async fn the_token_as_a_path_segment_or_bearer_lets_a_callback_in() {
        let receiver = with_token().await;
        let body = packet("a", "b", 101).to_string();
        for url in [
            format!("/callbackExample/{TOKEN}/callbackAfterSendSingleMsgCommand"),
            format!("/callbackExample/{TOKEN}?command=callbackAfterSendSingleMsgCommand"),
            format!("/callbackExample/{TOKEN}//callbackAfterSendSingleMsgCommand"),
        ] {
            receiver.post(&url, "op", body.clone()).await.assert_accepted();
        }
        let bearer = receiver
            .client
            .post(receiver.url(COMMAND_PATH))
            .header("operationID", "op")
            .bearer_auth(TOKEN)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(bearer.status(), 200);
        assert_eq!(receiver.log.wait_for(4).await.len(), 4);
    }

    #[tokio::test]
    async fn a_missing_or_wrong_token_gets_401_without_detail() {
        let receiver = with_token().await;
        let body = packet("a", "b", 101).to_string();
        for url in [
            COMMAND_PATH.to_owned(),
            "/callbackExample/wrong-token-0123456789/callbackAfterSendSingleMsgCommand".to_owned(),
            format!("/callbackExample/{}/callbackAfterSendSingleMsgCommand", &TOKEN[..TOKEN.len() - 1]),
        ] {
            let answer = receiver.post(&url, "op", body.clone()).await;
            answer.assert_rejected(401, 4010);
            assert_eq!(answer.body["errMsg"], "unauthorized");
            assert_eq!(answer.body["errDlt"], "");
        }
        let wrong_bearer = receiver
            .client
            .post(receiver.url(COMMAND_PATH))
            .bearer_auth("nope")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(wrong_bearer.status(), 401);
        assert_eq!(receiver.get_json("/stats").await["errCode"], 4010, "/stats needs the token too");
        let probe = receiver.client.get(receiver.url("/healthz")).send().await.unwrap();
        assert_eq!(probe.status(), 200, "probes stay open");
        let stats: serde_json::Value = receiver
            .client
            .get(receiver.url("/stats"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(stats["requests"]["rejected"]["unauthorized"], 4, "three URLs, a wrong bearer");
        assert_eq!(stats["requests"]["other_refused"]["unauthorized"], 1, "/stats: not a callback");
    }

    #[tokio::test]
    async fn callers_outside_the_allowlist_get_403_naming_their_address() {
        let only_elsewhere =
            TestReceiver::start_with(settings(&[("AUTH__ALLOW_IPS", "10.0.0.0/8")]), |_| {}).await;
        let refused = only_elsewhere.post_packet("op", &packet("a", "b", 101)).await;
        refused.assert_rejected(403, 4030);
        assert!(refused.body["errMsg"].as_str().unwrap().contains("127.0.0.1"));

        let loopback =
            TestReceiver::start_with(settings(&[("AUTH__ALLOW_IPS", "127.0.0.1,10.0.0.0/8")]), |_| {}).await;
        loopback.post_packet("op", &packet("a", "b", 101)).await.assert_accepted();
    }

    #[tokio::test]
    async fn the_health_probes_answer_loopback_whatever_the_allowlist_says() {
        // openim-docker's network, as an operator sets it: the image's HEALTHCHECK runs on loopback.
        let receiver =
            TestReceiver::start_with(settings(&[("AUTH__ALLOW_IPS", "172.18.0.0/16")]), |_| {}).await;
        for probe in ["/healthz", "/readyz"] {
            let answer = receiver.client.get(receiver.url(probe)).send().await.unwrap();
            assert_eq!(answer.status(), 200, "{probe}");
        }
        // Everything else keeps to the allowlist, /metrics included: add Prometheus's address to it.
        for path in ["/metrics", "/stats"] {
            let answer = receiver.client.get(receiver.url(path)).send().await.unwrap();
            assert_eq!(answer.status(), 403, "{path}");
        }
        receiver.post_packet("op", &packet("a", "b", 101)).await.assert_rejected(403, 4030);
        // A loopback proxy's forwarded caller is not a local probe.
        let behind_proxy = TestReceiver::start_with(
            settings(&[("AUTH__ALLOW_IPS", "172.18.0.0/16"), ("SERVER__TRUSTED_PROXIES", "127.0.0.1")]),
            |_| {},
        )
        .await;
        let forwarded = behind_proxy
            .client
            .get(behind_proxy.url("/healthz"))
            .header("X-Forwarded-For", "203.0.113.7")
            .send()
            .await
            .unwrap();
        assert_eq!(forwarded.status(), 200, "the peer is loopback: probes are about the peer");
    }

    #[tokio::test]
    async fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
        let behind_proxy = TestReceiver::start_with(
            settings(&[("AUTH__ALLOW_IPS", "10.0.0.0/8"), ("SERVER__TRUSTED_PROXIES", "127.0.0.1")]),
            |_| {},
        )
        .await;
        let post = |forwarded: &'static str| {
            behind_proxy
                .client
                .post(behind_proxy.url(COMMAND_PATH))
                .header("operationID", "op")
                .header("X-Forwarded-For", forwarded)
                .body(packet("a", "b", 101).to_string())
                .send()
        };
        assert_eq!(post("10.1.2.3").await.unwrap().status(), 200);
        let outsider = crate::helpers::Answer::read(post("203.0.113.7").await.unwrap()).await;
        outsider.assert_rejected(403, 4030);
        assert!(outsider.body["errMsg"].as_str().unwrap().contains("203.0.113.7"));

        let untrusted =
            TestReceiver::start_with(settings(&[("AUTH__ALLOW_IPS", "10.0.0.0/8")]), |_| {}).await;
        let spoofed = untrusted
            .client
            .post(untrusted.url(COMMAND_PATH))
            .header("X-Forwarded-For", "10.1.2.3")
            .body(packet("a", "b", 101).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(spoofed.status(), 403, "a header from an untrusted peer is ignored");
    }
}

mod tls {
    use super::*;
    use std::sync::Arc;
    use tokio_rustls::TlsConnector;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};

    #[tokio::test]
    async fn https_serves_callbacks_with_the_configured_certificate() {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert_path, certified.cert.pem()).unwrap();
        std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();
        let receiver = TestReceiver::start_with(
            settings(&[
                ("SERVER__TLS__CERT_PATH", cert_path.to_str().unwrap()),
                ("SERVER__TLS__KEY_PATH", key_path.to_str().unwrap()),
            ]),
            |_| {},
        )
        .await;

        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(certified.cert.der().to_vec())).unwrap();
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(receiver.address).await.unwrap();
        let mut stream = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
        let body = packet("a", "b", 101).to_string();
        let request = format!(
            "POST {COMMAND_PATH} HTTP/1.1\r\nHost: localhost\r\noperationID: op-tls\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert_eq!(receiver.log.wait_for(1).await[0]["operationID"], "op-tls");

        // Plain HTTP to the TLS port gets no answer a client could mistake for success.
        let plain = receiver.client.post(receiver.url(COMMAND_PATH)).body(body).send().await;
        assert!(plain.is_err() || plain.unwrap().status() != 200);
    }
}

mod auth_on_observability {
    use super::*;

    #[tokio::test]
    async fn metrics_need_the_bearer_token_when_one_is_set() {
        let receiver =
            TestReceiver::start_with(settings(&[("AUTH__TOKEN", "k3y-0123456789-abcdef")]), |_| {}).await;
        let anonymous = receiver.client.get(receiver.url("/metrics")).send().await.unwrap();
        assert_eq!(anonymous.status(), 401);
        let scraper = receiver
            .client
            .get(receiver.url("/metrics"))
            .bearer_auth("k3y-0123456789-abcdef")
            .send()
            .await
            .unwrap();
        assert_eq!(scraper.status(), 200);
        assert!(scraper.text().await.unwrap().contains("openim_callback_requests_total"));
    }
}

#[tokio::test]
async fn more_header_fields_than_server_max_headers_get_431_and_the_limit_is_a_setting() {
    let head = |fields: usize| {
        let extra: String = (0..fields).map(|index| format!("X-Extra-{index}: 1\r\n")).collect();
        let body = packet("a", "b", 101).to_string();
        format!(
            "POST {COMMAND_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\noperationID: op\r\n\
             Connection: close\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let default = TestReceiver::start().await;
    let answer = raw_request(default.address, head(120).as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    let answer = raw_request(default.address, head(80).as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let raised = TestReceiver::start_with(settings(&[("SERVER__MAX_HEADERS", "200")]), |_| {}).await;
    let answer = raw_request(raised.address, head(120).as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// The layers around every route, with routes of the test's own inside: a
/// handler that panics, and one that would never answer.
mod layers {
    use crate::helpers::settings;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::post;
    use tower::ServiceExt;

    async fn answer(
        router: openim_callback_receiver::http::App,
        path: &str,
    ) -> (StatusCode, serde_json::Value) {
        let request = Request::post(path).body(Body::empty()).unwrap();
        let response = router.oneshot(request).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null))
    }

    async fn boom() -> &'static str {
        panic!("a bug, on purpose")
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_in_the_envelope_and_a_hung_one_is_cut_off() {
        let journal = tempfile::tempdir().unwrap();
        let dir = journal.path().to_str().unwrap();
        let settings = settings(&[("JOURNAL__DIR", dir), ("SERVER__RESPONSE_TIMEOUT", "100ms")]);
        let receiver = openim_callback_receiver::Receiver::from_settings(settings).unwrap();
        let state = receiver.state().clone();
        let routes = axum::Router::new()
            .route("/boom", post(boom))
            .route("/hang", post(std::future::pending::<&'static str>));
        let router = openim_callback_receiver::http::with_layers(routes, state.clone());

        let (status, envelope) = answer(router.clone(), "/boom").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(envelope["errCode"], 5000, "{envelope}");
        assert_eq!(envelope["actionCode"], 1);

        let started = std::time::Instant::now();
        let (status, envelope) = answer(router, "/hang").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(envelope["errCode"], 5030, "the safety net answers in the envelope: {envelope}");
        assert!(started.elapsed() < std::time::Duration::from_secs(30));
        assert_eq!(state.requests.rejected(openim_callback_receiver::http::error::Rejection::Internal), 1);
        assert_eq!(
            state.requests.rejected(openim_callback_receiver::http::error::Rejection::DeadlineExceeded),
            1
        );
    }

    /// What a handler sees of Authorization: each value marked sensitive, so
    /// that no debug output of the headers shows the token.
    async fn authorization_debug(headers: axum::http::HeaderMap) -> String {
        let values: Vec<_> = headers.get_all("authorization").iter().collect();
        format!("{} {values:?}", values.iter().all(|value| value.is_sensitive()))
    }

    #[tokio::test]
    async fn every_authorization_value_reaches_handlers_marked_sensitive() {
        let journal = tempfile::tempdir().unwrap();
        let settings = settings(&[("JOURNAL__DIR", journal.path().to_str().unwrap())]);
        let receiver = openim_callback_receiver::Receiver::from_settings(settings).unwrap();
        let routes = axum::Router::new().route("/seen", post(authorization_debug));
        let router = openim_callback_receiver::http::with_layers(routes, receiver.state().clone());
        let request = Request::post("/seen")
            .header("authorization", "Bearer secret-one")
            .header("authorization", "Bearer secret-two")
            .body(Body::empty())
            .unwrap();
        let response = router.oneshot(request).await.unwrap();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        assert_eq!(std::str::from_utf8(&body).unwrap(), "true [Sensitive, Sensitive]");
    }
}

#[tokio::test]
async fn requests_that_cannot_be_callbacks_are_not_counted_or_logged_as_refused_callbacks() {
    let receiver = TestReceiver::start().await;
    for path in [
        "/favicon.ico",
        "/wp-login.php",
        "/stats/daily?from=bad",
        "/callbackExample/callbackAfterSendSingleMsgCommand",
    ] {
        let _ = receiver.client.get(receiver.url(path)).send().await.unwrap();
    }
    let favicon = receiver.client.get(receiver.url("/favicon.ico")).send().await.unwrap();
    assert_eq!(
        (favicon.status().as_u16(), favicon.headers()["content-type"].to_str().unwrap()),
        (200, "image/svg+xml")
    );
    // A POST to a wrong path may be OpenIM misconfigured: that one is a refused callback.
    let misdirected = receiver
        .post("/wrong/callbackAfterSendSingleMsgCommand", "op", packet("a", "b", 101).to_string())
        .await;
    misdirected.assert_rejected(404, 4040);
    let stats = receiver.get_json("/stats").await;
    assert_eq!(stats["requests"]["rejected"], serde_json::json!({"not_found": 1}), "{}", stats["requests"]);
    assert_eq!(
        stats["requests"]["other_refused"],
        serde_json::json!({"not_found": 1, "invalid_query": 1, "method_not_allowed": 1}),
        "{}",
        stats["requests"]
    );
    let metrics = crate::helpers::http_get(receiver.url("/metrics")).await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(r#"openim_callback_other_requests_refused_total{reason="not_found"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"openim_callback_requests_total{outcome="not_found"} 1"#));
}
