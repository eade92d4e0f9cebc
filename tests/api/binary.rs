//! The built binary, run the way the container runs it: configured by
//! environment only, from an empty working directory, stopped with SIGTERM.

use crate::helpers::{COMMAND_PATH, sample};
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};

const BINARY: &str = env!("CARGO_BIN_EXE_openim-callback-receiver");

fn receiver_command(workdir: &std::path::Path) -> Command {
    let mut command = Command::new(BINARY);
    command
        .current_dir(workdir)
        .env_clear()
        .env("OPENIM_CALLBACK__SERVER__LISTEN", "127.0.0.1:0")
        .env("OPENIM_CALLBACK__TELEMETRY__FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Reads JSON log lines until one satisfies `wanted`.
async fn next_line_where(
    lines: &mut Lines<BufReader<ChildStdout>>,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let reading = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let value: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|_| panic!("stdout line is not JSON: {line}"));
            if wanted(&value) {
                return value;
            }
        }
        panic!("stdout ended before the expected line");
    };
    tokio::time::timeout(Duration::from_secs(30), reading).await.expect("the expected log line in time")
}

#[tokio::test]
async fn the_binary_serves_logs_and_stops_cleanly_on_sigterm() {
    let workdir = tempfile::tempdir().unwrap();
    let mut child = receiver_command(workdir.path()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let started = next_line_where(&mut lines, |line| line["message"] == "receiving OpenIM callbacks").await;
    let address: SocketAddr = started["listen"].as_str().unwrap().parse().unwrap();

    let answer = reqwest::Client::new()
        .post(format!("http://{address}{COMMAND_PATH}"))
        .header("Content-Type", "application/json; charset=utf-8")
        .header("Operationid", "op-binary")
        .body(sample("text.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let record = next_line_where(&mut lines, |line| line["target"] == "message").await;
    assert_eq!(record["operationID"], "op-binary");
    assert_eq!(record["serverMsgID"], "bdb2d2a5c18d4b6a0d4e1e4f2c6d8a11");

    // The container's HEALTHCHECK: the same binary, the same environment.
    let healthy = Command::new(BINARY)
        .arg("healthcheck")
        .env_clear()
        .env("OPENIM_CALLBACK__SERVER__LISTEN", address.to_string())
        .status()
        .await
        .unwrap();
    assert!(healthy.success());

    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().await.unwrap().success());
    let stopped = next_line_where(&mut lines, |line| {
        line["message"].as_str().is_some_and(|m| m.starts_with("stopped"))
    })
    .await;
    assert_eq!(stopped["message"], "stopped cleanly: every accepted message delivered");
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn healthcheck_fails_when_nothing_listens() {
    let free_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let status = Command::new(BINARY)
        .arg("healthcheck")
        .env_clear()
        .env("OPENIM_CALLBACK__SERVER__LISTEN", free_port.to_string())
        .stderr(Stdio::null())
        .status()
        .await
        .unwrap();
    assert_eq!(status.code(), Some(1));
}

#[tokio::test]
async fn a_bad_setting_stops_start_up_with_one_line_naming_the_key() {
    let workdir = tempfile::tempdir().unwrap();
    let output = receiver_command(workdir.path())
        .env("OPENIM_CALLBACK__SERVER__RESPONSE_TIMEOUT", "soon")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("server.response_timeout"), "{stderr}");
}

#[tokio::test]
async fn print_config_shows_the_effective_settings() {
    let workdir = tempfile::tempdir().unwrap();
    let output = receiver_command(workdir.path())
        .env("OPENIM_CALLBACK__SINKS__STATS__QUEUE_CAPACITY", "77")
        .arg("--print-config")
        .output()
        .await
        .unwrap();
    assert!(output.status.success());
    let printed: toml::Value = toml::from_str(&String::from_utf8(output.stdout).unwrap()).unwrap();
    assert_eq!(printed["server"]["listen"].as_str(), Some("127.0.0.1:0"));
    assert_eq!(printed["sinks"]["stats"]["queue_capacity"].as_integer(), Some(77));
    assert_eq!(printed["server"]["response_timeout"].as_str(), Some("3s"));
}
