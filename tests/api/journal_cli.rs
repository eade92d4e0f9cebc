//! `openim-callback-receiver journal ls|cat|verify`, through the built binary,
//! on a journal the binary wrote: every posted message printed in order,
//! bounds and limits, a clean verify, and a flipped byte found and named.

use crate::binary::{BINARY, RunningBinary, post_to};
use tokio::process::Command;

/// Runs `journal <arguments> --dir <dir>`: exit code and stdout.
async fn journal(dir: &std::path::Path, arguments: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(BINARY)
        .arg("journal")
        .args(arguments)
        .arg("--dir")
        .arg(dir)
        .env_clear()
        .output()
        .await
        .unwrap();
    (output.status.code(), String::from_utf8(output.stdout).unwrap())
}

fn cat_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect()
}

#[tokio::test]
async fn the_journal_command_lists_prints_and_verifies_what_the_receiver_wrote() {
    let workdir = tempfile::tempdir().unwrap();
    let mut binary = RunningBinary::start(workdir.path(), &[("OPENIM_CALLBACK__SINKS__SQL__URL", "")]).await;
    let senders: Vec<String> = (0..30).map(|index| format!("sender-{index:02}")).collect();
    for sender in &senders {
        post_to(binary.address, sender).await;
    }
    let dir = workdir.path().join("data/journal");
    // Read only beside the running receiver: it holds the journal's lock.
    let (code, beside) = journal(&dir, &["cat", "--limit", "3"]).await;
    assert_eq!((code, cat_lines(&beside).len()), (Some(0), 3), "{beside}");
    assert_eq!(binary.terminate().await.code(), Some(0));

    let (code, printed) = journal(&dir, &["cat"]).await;
    assert_eq!(code, Some(0));
    let lines = cat_lines(&printed);
    let ids: Vec<&str> = lines.iter().map(|line| line["packet"]["serverMsgID"].as_str().unwrap()).collect();
    let expected: Vec<String> = senders.iter().map(|sender| format!("srv-{sender}-bob-101")).collect();
    assert_eq!(ids, expected, "every posted message, in order");
    let seqs: Vec<u64> = lines.iter().map(|line| line["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=30).collect::<Vec<_>>());
    assert_eq!(lines[0]["callbackCommand"], "callbackAfterSendSingleMsgCommand");
    assert_eq!(lines[0]["operationID"], "op-restart");
    assert!(lines[0]["receivedAt"].as_str().unwrap().ends_with('Z'));

    let (_, bounded) = journal(&dir, &["cat", "--from", "10", "--to", "12"]).await;
    let seqs: Vec<u64> = cat_lines(&bounded).iter().map(|line| line["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [10, 11, 12]);
    let (_, future) = journal(&dir, &["cat", "--from", "2999-01-01T00:00:00Z"]).await;
    assert!(future.is_empty(), "nothing arrived after that time");

    let (code, listed) = journal(&dir, &["ls"]).await;
    assert_eq!(code, Some(0));
    assert!(listed.contains("00000000000000000001.seg"), "{listed}");
    let log = listed.lines().find(|line| line.starts_with("log ")).unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(log.split_whitespace().collect::<Vec<_>>(), ["log", "31", "0"], "caught up at stop: {log}");

    let (code, verified) = journal(&dir, &["verify"]).await;
    assert_eq!(code, Some(0), "{verified}");
    assert!(verified.contains("clean: 30 records"), "{verified}");
    // A byte flipped in the middle of the segment (inside some record's body).
    let segment = dir.join("00000000000000000001.seg");
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&segment, &bytes).unwrap();
    let (code, verified) = journal(&dir, &["verify"]).await;
    assert_eq!(code, Some(1), "{verified}");
    assert!(
        verified.contains("damaged: ") && verified.contains("00000000000000000001.seg at offset"),
        "{verified}"
    );
    let (_, after) = journal(&dir, &["cat"]).await;
    assert_eq!(cat_lines(&after).len(), 29, "every other record still reads");

    let (code, _) = journal(&workdir.path().join("no-such-journal"), &["ls"]).await;
    assert_eq!(code, Some(2), "a directory that cannot be read is an error");
}
