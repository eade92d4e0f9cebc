//! Every refusal: its status, its errCode, the envelope, and the field it names.

use crate::helpers::{Answer, COMMAND_PATH, FailsFirst, TestReceiver, packet, raw_request, settings};
use openim_callback_receiver::sinks::{Entry, Sink, SinkError};
use reqwest::Method;

/// One bad request and what the receiver must answer.
pub struct Case {
    what: &'static str,
    method: Method,
    path: &'static str,
    content_type: Option<&'static str>,
    operation_id: Option<&'static str>,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
    status: u16,
    err_code: i64,
    /// Text the errMsg or errDlt must contain (the field, the command, …).
    mentions: &'static str,
}

fn case(
    what: &'static str,
    body: impl Into<Vec<u8>>,
    status: u16,
    err_code: i64,
    mentions: &'static str,
) -> Case {
    Case {
        what,
        method: Method::POST,
        path: COMMAND_PATH,
        content_type: Some("application/json"),
        operation_id: Some("op-bad"),
        headers: Vec::new(),
        body: body.into(),
        status,
        err_code,
        mentions,
    }
}

/// At least 40 malformed requests, from a wrong type to a hostile body.
pub fn cases() -> Vec<Case> {
    let valid = packet("a", "b", 101).to_string();
    let with = |key: &str, value: serde_json::Value| {
        let mut body = packet("a", "b", 101);
        body[key] = value;
        body.to_string()
    };
    vec![
        case(
            "seq of the wrong type",
            with("seq", "x".into()),
            400,
            4006,
            r#"seq: invalid type: string "x", expected u32"#,
        ),
        case("negative seq", with("seq", (-1).into()), 400, 4006, "seq"),
        case(
            "contentType over int32",
            with("contentType", 3_000_000_000_i64.into()),
            400,
            4006,
            "contentType",
        ),
        case("createTime as a float", with("createTime", 1.5.into()), 400, 4006, "createTime"),
        case(
            "atUserList element of the wrong type",
            with("atUserList", serde_json::json!(["u", 7])),
            400,
            4006,
            "atUserList[1]",
        ),
        case("sendID of the wrong type", with("sendID", 42.into()), 400, 4006, "sendID"),
        case("missing contentType", r#"{"sendID":"a","recvID":"b"}"#, 400, 4006, "contentType"),
        case("missing recvID", r#"{"sendID":"a","contentType":101}"#, 400, 4007, "recvID"),
        case(
            "null contentType",
            r#"{"sendID":"a","recvID":"b","contentType":null}"#,
            400,
            4006,
            "contentType",
        ),
        case("empty sendID", with("sendID", "".into()), 400, 4007, "sendID"),
        case("empty recvID", with("recvID", "".into()), 400, 4007, "recvID"),
        case("truncated JSON", &valid[..valid.len() / 2], 400, 4006, "EOF"),
        case("not JSON", "hello", 400, 4006, "expected value"),
        case("an array", "[1,2]", 400, 4006, "expected a JSON object"),
        case(
            "an array shaped like the struct",
            r#"["a","cmd","s","c","o",1,"n",1,100,101,1,0,0,"c",0,null,"f","e","b"]"#,
            400,
            4006,
            "expected a JSON object",
        ),
        case("a scalar", "42", 400, 4006, "expected struct"),
        case("null", "null", 400, 4006, "expected struct"),
        case("empty body", "", 400, 4006, "EOF"),
        case(
            "duplicated key",
            r#"{"sendID":"a","sendID":"b","recvID":"b","contentType":1}"#,
            400,
            4006,
            "duplicate field `sendID`",
        ),
        case(
            "lone surrogate",
            r#"{"sendID":"\ud800","recvID":"b","contentType":1}"#,
            400,
            4006,
            "sendID: unexpected end of hex escape",
        ),
        case(
            "another command in the body",
            with("callbackCommand", "callbackAfterSendGroupMsgCommand".into()),
            400,
            4001,
            "callbackAfterSendGroupMsgCommand",
        ),
        Case {
            path: "/callbackExample/callbackBeforeSendSingleMsgCommand",
            ..case(
                "another command in the path",
                valid.clone(),
                400,
                4001,
                "callbackBeforeSendSingleMsgCommand",
            )
        },
        Case {
            path: "/callbackExample?command=callbackBeforeSendGroupMsgCommand",
            ..case(
                "another command in the query",
                valid.clone(),
                400,
                4001,
                "callbackBeforeSendGroupMsgCommand",
            )
        },
        Case {
            path: "/callbackExample/callbackAfterSendSingleMsgCommand?command=callbackAfterSendGroupMsgCommand",
            ..case(
                "path and query name two recorded commands",
                valid.clone(),
                400,
                4001,
                "callbackAfterSendGroupMsgCommand",
            )
        },
        Case {
            path: "/callbackExample/callbackAfterSendSingleMsgCommand?command=callbackBeforeSendSingleMsgCommand",
            ..case("path and query disagree", valid.clone(), 400, 4001, "callbackBeforeSendSingleMsgCommand")
        },
        Case {
            path: "/callbackExample",
            ..case("no command at all", valid.clone(), 400, 4002, "missing command")
        },
        Case {
            path: "/callbackExample?command=callbackAfterSendSingleMsgCommand&contenttype=xml",
            ..case("contenttype other than json", valid.clone(), 400, 4003, "xml")
        },
        Case {
            operation_id: None,
            ..case("no operation id anywhere", valid.clone(), 400, 4004, "operationID")
        },
        Case {
            content_type: Some("text/plain"),
            ..case("text content type", valid.clone(), 415, 4150, "text/plain")
        },
        Case {
            content_type: Some("application/x-www-form-urlencoded"),
            ..case("form content type", valid.clone(), 415, 4150, "application/x-www-form-urlencoded")
        },
        Case { path: "/somewhere/else", ..case("unknown path", valid.clone(), 404, 4040, "/somewhere/else") },
        Case {
            path: "/callbackExample/a/b",
            ..case("too deep a path", valid.clone(), 404, 4040, "/callbackExample/a/b")
        },
        Case { method: Method::GET, body: Vec::new(), ..case("GET on the callback", "", 405, 4050, "GET") },
        Case { method: Method::PUT, ..case("PUT on the callback", valid.clone(), 405, 4050, "PUT") },
        Case { path: "/healthz", ..case("POST on a probe", valid.clone(), 405, 4050, "POST") },
        case("seq over uint32", with("seq", 4_294_967_296_u64.into()), 400, 4006, "seq"),
        case(
            "createTime over int64",
            r#"{"sendID":"a","recvID":"b","contentType":1,"createTime":100000000000000000000}"#,
            400,
            4006,
            "createTime",
        ),
        case(
            "senderPlatformID under int32",
            with("senderPlatformID", (-2_147_483_649_i64).into()),
            400,
            4006,
            "senderPlatformID",
        ),
        case("sendTime as a float", with("sendTime", 1.25.into()), 400, 4006, "sendTime"),
        case("status as a string", with("status", "1".into()), 400, 4006, "status"),
        case(
            "atUserList as an object",
            with("atUserList", serde_json::json!({"a": 1})),
            400,
            4006,
            "atUserList",
        ),
        case(
            "invalid UTF-8 in a string",
            b"{\"sendID\":\"a\xff\xfe\",\"recvID\":\"b\",\"contentType\":1}".to_vec(),
            400,
            4006,
            "sendID",
        ),
        case("100,000 nested arrays", "[".repeat(100_000), 400, 4006, "expected a JSON object"),
        case("100,000 nested objects, unclosed", "{\"x\":".repeat(100_000), 400, 4006, "EOF while parsing"),
        case("two objects back to back", format!("{valid}{valid}"), 400, 4006, "trailing characters"),
        case("a JSON string", "\"hello\"", 400, 4006, "expected struct"),
        case(
            "body over the 4 MiB limit",
            format!("{{\"content\":\"{}\"}}", "x".repeat(4 * 1024 * 1024)),
            413,
            4130,
            "4194304",
        ),
        Case {
            headers: vec![("Content-Encoding", "gzip")],
            ..case("gzip-encoded body", vec![0x1f, 0x8b, 0x08, 0, 0, 0, 0, 0], 415, 4151, "gzip")
        },
        Case {
            path: "/callbackExample?command=%ZZ%E0%A4%A&x=%%%",
            ..case("percent-encoding junk in the query", valid.clone(), 400, 4001, "%ZZ")
        },
        Case {
            path: "/callbackExample/callbackAfterSendSingleMsgCommand?contenttype=%FF",
            ..case("undecodable contenttype", valid.clone(), 400, 4003, "contenttype")
        },
        Case {
            content_type: Some("application/"),
            ..case("a content type without a subtype", valid.clone(), 415, 4150, "application/")
        },
        // Hardening round 2: a blank body operation id is no id, as in the header.
        Case {
            operation_id: None,
            ..case(
                "a blank operationID in the body and none in the header",
                with("operationID", "   ".into()),
                400,
                4004,
                "operationID",
            )
        },
        // Hardening round 2: a huge command name is cut before it is kept, logged or answered.
        case(
            "a 100,000-character callbackCommand",
            with("callbackCommand", format!("callbackX{}", "y".repeat(100_000)).into()),
            400,
            4001,
            "callbackXyyyy",
        ),
    ]
}

pub async fn send(client: &reqwest::Client, address: std::net::SocketAddr, case: &Case) -> Answer {
    let mut request = client.request(case.method.clone(), format!("http://{address}{}", case.path));
    for (name, value) in &case.headers {
        request = request.header(*name, *value);
    }
    if let Some(content_type) = case.content_type {
        request = request.header("Content-Type", content_type);
    }
    if let Some(operation_id) = case.operation_id {
        request = request.header("operationID", operation_id);
    }
    Answer::read(request.body(case.body.clone()).send().await.unwrap()).await
}

/// The answer is the case's status and errCode, in a full envelope that names the cause.
pub fn check(case: &Case, answer: &Answer) {
    assert_eq!(
        (answer.status, answer.err_code()),
        (case.status, case.err_code),
        "{}: {:?}",
        case.what,
        answer.body
    );
    answer.assert_rejected(case.status, case.err_code);
    let said = format!("{} | {}", answer.body["errMsg"], answer.body["errDlt"].as_str().unwrap());
    assert!(said.contains(case.mentions), "{}: {said} does not mention {:?}", case.what, case.mentions);
    assert!(said.len() < 2_000, "{}: a short answer, not {} bytes", case.what, said.len());
}

#[tokio::test]
async fn every_bad_request_gets_its_status_code_and_a_pointer_to_the_cause() {
    let receiver = TestReceiver::start().await;
    let cases = cases();
    assert!(cases.len() >= 40, "the table has {} cases", cases.len());
    for case in &cases {
        let answer = send(&receiver.client, receiver.address, case).await;
        check(case, &answer);
    }
    // Nothing refused reached a sink, every refusal was counted, and the server is fine.
    let stats = receiver.get_json("/stats").await;
    assert_eq!(stats["messages"]["total"], 0);
    let sum = |counts: &serde_json::Value| -> u64 {
        counts.as_object().unwrap().values().map(|count| count.as_u64().unwrap()).sum()
    };
    // Only a POST can be a callback; the others are refused and counted apart.
    let posts = cases.iter().filter(|case| case.method == Method::POST).count() as u64;
    assert_eq!(sum(&stats["requests"]["rejected"]), posts);
    assert_eq!(sum(&stats["requests"]["other_refused"]), cases.len() as u64 - posts);
    assert_eq!(stats["requests"]["rejected"]["invalid_json"], 28);
    assert_eq!(stats["requests"]["unknown_commands"]["callbackBeforeSendSingleMsgCommand"], 2);
    let clipped = format!("callbackX{}", "y".repeat(55));
    assert_eq!(stats["requests"]["unknown_commands"][&clipped], 1, "kept as its first 64 characters");
    assert!(stats.to_string().len() < 20_000, "the long name is not kept whole");
    // A stats query with a bad date is refused with the envelope, counted apart from callbacks.
    let bad_date = receiver.client.get(receiver.url("/stats/daily?from=yesterday")).send().await.unwrap();
    Answer::read(bad_date).await.assert_rejected(400, 4009);
    // /metrics counts every refusal by its reason, as /stats does.
    let stats = receiver.get_json("/stats").await;
    let metrics = receiver.client.get(receiver.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(stats["requests"]["other_refused"]["invalid_query"], 1);
    for (counts, metric, label) in [
        ("rejected", "requests_total", "outcome"),
        ("other_refused", "other_requests_refused_total", "reason"),
    ] {
        for (reason, count) in stats["requests"][counts].as_object().unwrap() {
            let series = format!("openim_callback_{metric}{{{label}=\"{reason}\"}} {count}");
            assert!(metrics.contains(&series), "{series} not in /metrics");
        }
    }
    receiver.post_packet("op-good", &packet("a", "b", 101)).await.assert_accepted();
}

#[tokio::test]
async fn bodies_over_the_limit_get_413_whether_declared_or_streamed() {
    let receiver = TestReceiver::start_with(settings(&[("SERVER__MAX_BODY_BYTES", "1024")]), |_| {}).await;
    let mut just_fits = packet("a", "b", 101);
    just_fits["content"] = "".into();
    let padding = 1024 - just_fits.to_string().len();
    just_fits["content"] = "x".repeat(padding).into();
    assert_eq!(just_fits.to_string().len(), 1024);
    receiver.post_packet("op", &just_fits).await.assert_accepted();

    let mut too_big = just_fits.clone();
    too_big["content"] = "x".repeat(padding + 1).into();
    receiver.post_packet("op", &too_big).await.assert_rejected(413, 4130);

    // Chunked: no Content-Length, so the limit is enforced while reading.
    let body = too_big.to_string();
    let (first, second) = body.split_at(600);
    let request = format!(
        "POST {COMMAND_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\noperationID: op\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
        first.len(),
        second.len()
    );
    let answer = raw_request(receiver.address, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""errCode":4130"#), "{answer}");
}

#[tokio::test]
async fn an_operation_id_header_that_is_not_utf8_is_refused_by_name() {
    let receiver = TestReceiver::start().await;
    let body = packet("a", "b", 101).to_string();
    let mut request = format!(
        "POST {COMMAND_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\noperationID: ",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(b"op-\xff\xfe\r\n\r\n");
    request.extend_from_slice(body.as_bytes());
    let answer = raw_request(receiver.address, &request).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains(r#""errCode":4005"#) && answer.contains("operationID header"), "{answer}");
}

#[tokio::test]
async fn a_sink_that_panics_is_reported_on_readyz_and_retried_without_losing_messages() {
    let receiver = TestReceiver::start_with(settings(&[]), |sinks| {
        sinks.spawn(PanicsOnce { panicked: false }, 16).unwrap()
    })
    .await;
    receiver.post_packet("op-boom", &packet("a", "b", 101)).await.assert_accepted();
    // While the sink rests after its panic, readiness names it.
    let mut not_ready = None;
    for _ in 0..200 {
        let ready = receiver.client.get(receiver.url("/readyz")).send().await.unwrap();
        if ready.status() == 503 {
            not_ready = Some(ready.json::<serde_json::Value>().await.unwrap());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let envelope = not_ready.expect("/readyz turns 503 after the panic");
    assert_eq!(envelope["errCode"], 5032);
    assert!(envelope["errMsg"].as_str().unwrap().contains("panics-once"), "{envelope}");
    // Messages keep being accepted meanwhile, and reach the sink once it is back.
    receiver.post_packet("op-after", &packet("a", "c", 101)).await.assert_accepted();
    let sink = &receiver.sink_report("panics-once", |sink| sink["handled"] == 2).await;
    assert_eq!(
        (
            sink["handled"].as_u64(),
            sink["failed"].as_u64(),
            sink["panics"].as_u64(),
            sink["retries"].as_u64()
        ),
        (Some(2), Some(0), Some(1), Some(1)),
        "the batch that panicked was retried: {sink}"
    );
    assert_eq!(sink["state"], "running");
    assert!(sink["last_error"].as_str().unwrap().contains("a sink bug, on purpose"), "{sink}");
    let ready = receiver.client.get(receiver.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn a_sink_that_refuses_batches_for_good_is_counted_and_goes_on() {
    let receiver =
        TestReceiver::start_with(settings(&[]), |sinks| sinks.spawn(RefusesOddMessages, 16).unwrap()).await;
    let mut sink = serde_json::Value::Null;
    for index in 0..6u64 {
        receiver
            .post_packet(&format!("op-{index}"), &packet(&format!("user-{index}"), "b", 101))
            .await
            .assert_accepted();
        // One at a time, so each batch is one message.
        sink = receiver
            .sink_report("refuses-odd", |sink| {
                sink["handled"].as_u64().unwrap() + sink["failed"].as_u64().unwrap() == index + 1
            })
            .await;
    }
    assert_eq!((sink["handled"].as_u64(), sink["failed"].as_u64()), (Some(3), Some(3)), "{sink}");
    assert_eq!(sink["retries"], 0, "a permanent error is not retried");
    let stats = receiver.stats_after(6).await;
    assert_eq!(stats["messages"]["total"], 6, "the other sinks are not affected");
}

#[tokio::test]
async fn a_sink_whose_target_fails_for_a_while_gets_the_same_batch_again() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let flaky = FailsFirst { failures_left: 3, seen: std::sync::Arc::clone(&seen) };
    let receiver = TestReceiver::start_with(settings(&[]), |sinks| sinks.spawn(flaky, 16).unwrap()).await;
    receiver.post_packet("op-1", &packet("a", "b", 101)).await.assert_accepted();
    let sink = receiver.sink_report("flaky", |sink| sink["handled"] == 1).await;
    assert_eq!((sink["handled"].as_u64(), sink["retries"].as_u64()), (Some(1), Some(3)), "{sink}");
    assert_eq!(sink["state"], "running");
    assert_eq!(sink["last_error"], "target down, on purpose");
    assert_eq!(*seen.lock().unwrap(), vec!["srv-a-b-101".to_owned()], "delivered once, when it worked");
}

/// Panics on its first message, then works.
struct PanicsOnce {
    panicked: bool,
}

impl Sink for PanicsOnce {
    fn name(&self) -> &'static str {
        "panics-once"
    }
    async fn deliver(&mut self, _batch: &[Entry]) -> Result<(), SinkError> {
        if !self.panicked {
            self.panicked = true;
            panic!("a sink bug, on purpose");
        }
        Ok(())
    }
}

/// Refuses messages whose sender ends in an odd digit.
struct RefusesOddMessages;

impl Sink for RefusesOddMessages {
    fn name(&self) -> &'static str {
        "refuses-odd"
    }
    async fn deliver(&mut self, batch: &[Entry]) -> Result<(), SinkError> {
        let last = batch[0].message.message().unwrap().send_id.bytes().last().unwrap_or(b'0');
        if (last - b'0') % 2 == 1 { Err(SinkError::permanent("odd sender, on purpose")) } else { Ok(()) }
    }
}

#[tokio::test]
async fn a_sink_that_panics_while_saving_its_state_is_reported_and_goes_on() {
    let sink = PanicsOnFirstSave { saves: 0 };
    let receiver = TestReceiver::start_with(settings(&[]), |sinks| sinks.spawn(sink, 16).unwrap()).await;
    receiver.post_packet("op-1", &packet("a", "b", 101)).await.assert_accepted();
    // The first save may come before the message's delivery or after it: either
    // way the panic is reported and the sink goes on to deliver.
    let sink = receiver
        .sink_report("panics-on-save", |sink| {
            sink["handled"] == 1
                && sink["last_error"].as_str().is_some_and(|error| error.contains("panicked while saving"))
        })
        .await;
    assert!(sink["last_error"].as_str().unwrap().contains("a save bug, on purpose"), "{sink}");
    receiver.post_packet("op-2", &packet("a", "c", 101)).await.assert_accepted();
    let report = receiver.stop().await;
    assert!(report.is_clean(), "the next save worked and the sink caught up: {report:?}");
}

/// Keeps its position with its state, and panics the first time it saves.
struct PanicsOnFirstSave {
    saves: u32,
}

impl Sink for PanicsOnFirstSave {
    fn name(&self) -> &'static str {
        "panics-on-save"
    }
    async fn deliver(&mut self, _batch: &[Entry]) -> Result<(), SinkError> {
        Ok(())
    }
    fn progress(&self) -> openim_callback_receiver::sinks::Progress {
        let save_interval = std::time::Duration::from_millis(10);
        openim_callback_receiver::sinks::Progress::WithState { restored: None, save_interval }
    }
    async fn save(&mut self, _next: u64) -> Result<(), SinkError> {
        self.saves += 1;
        if self.saves == 1 {
            panic!("a save bug, on purpose");
        }
        Ok(())
    }
}

#[tokio::test]
async fn an_oversized_body_announced_with_expect_100_continue_is_refused_before_it_is_invited() {
    let receiver = TestReceiver::start().await;
    let request = format!(
        "POST {COMMAND_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\noperationID: op\r\n\
         Content-Length: 104857600\r\nExpect: 100-continue\r\n\r\n"
    );
    let answer = raw_request(receiver.address, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "413 first, no 100 Continue: {answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
    assert!(answer.contains(r#""errCode":4130"#), "{answer}");
}
