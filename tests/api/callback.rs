//! What OpenIM really sends is accepted: both URL forms, `//`, header casings,
//! null lists, missing and unknown keys, trailing newlines.

use crate::helpers::{COMMAND_PATH, TestReceiver, packet, raw_request, sample, settings};

#[tokio::test]
async fn every_sample_packet_is_accepted_and_logged_under_its_operation_id() {
    let receiver = TestReceiver::start().await;
    for (index, name) in ["text.json", "picture.json", "rest-api-v3.0.json"].iter().enumerate() {
        receiver.post(COMMAND_PATH, &format!("op-{index}"), sample(name)).await.assert_accepted();
    }
    let records = receiver.log.wait_for(3).await;
    let ids: Vec<_> = records.iter().map(|r| r["operationID"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids, ["op-0", "op-1", "op-2"]);
    assert_eq!(records[1]["contentTypeName"], "picture");
    assert!(receiver.stop().await.is_clean());
}

#[tokio::test]
async fn both_url_forms_a_double_slash_and_extra_query_parameters_are_accepted() {
    let receiver = TestReceiver::start().await;
    let command = "callbackAfterSendSingleMsgCommand";
    let urls = [
        format!("/callbackExample/{command}"),
        format!("/callbackExample?command={command}"),
        format!("/callbackExample/?command={command}"),
        format!("/callbackExample//{command}"),
        format!("/callbackExample?command={command}&contenttype=json"),
        format!("/callbackExample/{command}?key=eyJzZW5kSUQiOiJhIn0%3D"),
        format!("/callbackExample/{command}?command={command}"),
    ];
    for (index, url) in urls.iter().enumerate() {
        let answer = receiver.post(url, &format!("op-{index}"), packet("a", "b", 101).to_string()).await;
        assert_eq!(answer.status, 200, "{url}: {:?}", answer.body);
        answer.assert_accepted();
    }
    assert_eq!(receiver.log.wait_for(urls.len()).await.len(), urls.len());
}

#[tokio::test]
async fn a_configured_base_path_and_the_root_both_work() {
    for (base, url) in [
        ("/openim/hooks", "/openim/hooks/callbackAfterSendSingleMsgCommand"),
        ("/", "/?command=callbackAfterSendSingleMsgCommand"),
    ] {
        let receiver = TestReceiver::start_with(settings(&[("SERVER__BASE_PATH", base)]), |_| {}).await;
        receiver.post(url, "op", packet("a", "b", 101).to_string()).await.assert_accepted();
        let default = receiver.post(COMMAND_PATH, "op", packet("a", "b", 101).to_string()).await;
        assert_eq!(default.status, 404, "{base}: {:?}", default.body);
    }
}

/// Go's HTTP/1.1 client writes the header as `Operationid`; send raw bytes to be sure.
#[tokio::test]
async fn the_operation_id_header_is_matched_in_any_casing() {
    let receiver = TestReceiver::start().await;
    for (index, name) in ["Operationid", "operationID", "OPERATIONID", "operationid"].iter().enumerate() {
        let body = packet("a", "b", 101).to_string();
        let request = format!(
            "POST {COMMAND_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: Go-http-client/1.1\r\n\
             Content-Type: application/json; charset=utf-8\r\n{name}: raw-{index}\r\n\
             Content-Length: {}\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let answer = raw_request(receiver.address, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    let records = receiver.log.wait_for(4).await;
    let ids: Vec<_> = records.iter().map(|r| r["operationID"].as_str().unwrap()).collect();
    assert_eq!(ids, ["raw-0", "raw-1", "raw-2", "raw-3"]);
}

#[tokio::test]
async fn an_empty_header_falls_back_to_the_body_operation_id() {
    let receiver = TestReceiver::start().await;
    let mut body = packet("a", "b", 101);
    body["operationID"] = "from-body".into();
    receiver.post_packet("", &body).await.assert_accepted();
    let no_header =
        receiver.client.post(receiver.url(COMMAND_PATH)).body(body.to_string()).send().await.unwrap();
    assert_eq!(no_header.status(), 200);
    let records = receiver.log.wait_for(2).await;
    assert!(records.iter().all(|record| record["operationID"] == "from-body"));
}

#[tokio::test]
async fn without_any_operation_id_a_generated_one_is_used_when_allowed() {
    let receiver =
        TestReceiver::start_with(settings(&[("SERVER__REQUIRE_OPERATION_ID", "false")]), |_| {}).await;
    receiver.post_packet("", &packet("a", "b", 101)).await.assert_accepted();
    let record = &receiver.log.wait_for(1).await[0];
    assert!(record["operationID"].as_str().unwrap().starts_with("gen-"), "{record}");
    assert_eq!(record["operationIDGenerated"], true);
}

#[tokio::test]
async fn nulls_missing_keys_unknown_keys_and_a_trailing_newline_are_read() {
    let receiver = TestReceiver::start().await;
    let packets = [
        r#"{"sendID":"a","recvID":"b","contentType":101,"atUserList":null}"#.to_owned() + "\n",
        r#"{"sendID":"a","recvID":"b","contentType":101,"futureField":{"x":[1,2]},"ex":null}"#.to_owned(),
        r#"{"sendID":"a","recvID":"b","contentType":4321,"senderPlatformID":77,"status":9}"#.to_owned(),
        r#"{"sendID":"a","recvID":"b","contentType":106,"atUserList":["x","y"],"seq":0}"#.to_owned(),
    ];
    for (index, body) in packets.iter().enumerate() {
        receiver.post(COMMAND_PATH, &format!("op-{index}"), body.clone()).await.assert_accepted();
    }
    let records = receiver.log.wait_for(4).await;
    assert_eq!(records[0]["atUserList"], serde_json::json!([]), "null reads as an empty list");
    assert_eq!(records[2]["contentTypeName"], "4321", "unknown codes are kept by number");
    assert_eq!(records[2]["senderPlatform"], "77");
    assert_eq!(records[3]["atUserList"], serde_json::json!(["x", "y"]));
}

#[tokio::test]
async fn a_request_without_content_type_is_read_as_json() {
    let receiver = TestReceiver::start().await;
    let response = receiver
        .client
        .post(receiver.url(COMMAND_PATH))
        .header("operationID", "op")
        .body(packet("a", "b", 101).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn probes_answer_envelopes_and_are_not_counted_as_callbacks() {
    let receiver = TestReceiver::start().await;
    for probe in ["/healthz", "/readyz"] {
        let response = receiver.client.get(receiver.url(probe)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.json::<serde_json::Value>().await.unwrap()["errCode"], 0);
    }
    let stats = receiver.get_json("/stats").await;
    assert_eq!(stats["requests"]["accepted"], 0);
    assert_eq!(stats["requests"]["rejected"], serde_json::json!({}), "no probe counted as a refusal");
    let metrics = receiver.client.get(receiver.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let counted: u64 = metrics
        .lines()
        .filter(|line| line.starts_with("openim_callback_requests_total{"))
        .map(|line| line.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(counted, 0, "no probe in the request counters");
}
