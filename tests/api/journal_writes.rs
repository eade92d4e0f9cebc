//! How the journal writes: callbacks that arrive while a write is in progress
//! queue without holding a thread, and share the next `pwritev`.

use crate::helpers::{TestReceiver, packet, wait_until};
use std::time::Duration;

#[tokio::test]
async fn callbacks_arriving_during_a_stalled_write_wait_without_a_thread_and_share_one_writev() {
    let receiver = TestReceiver::start().await;
    receiver.post_packet("op-first", &packet("a", "b", 101)).await.assert_accepted();
    let writes_before = receiver.get_json("/stats").await["journal"]["writes"].as_u64().unwrap();
    // A write that does not finish, as on a slow disk.
    let stalled = receiver.journal.hold_writer_turn().expect("nobody else is writing");
    let waiting: Vec<_> = (0..8)
        .map(|index| {
            let (client, url) = (receiver.client.clone(), receiver.url(crate::helpers::COMMAND_PATH));
            tokio::spawn(async move {
                let response = client
                    .post(url)
                    .header("Content-Type", "application/json")
                    .header("operationID", format!("op-{index}"))
                    .body(packet("a", &format!("to-{index}"), 101).to_string())
                    .send()
                    .await
                    .unwrap();
                crate::helpers::Answer::read(response).await
            })
        })
        .collect();
    wait_until(Duration::from_secs(30), async || match receiver.journal.queued() {
        8 => Ok(()),
        queued => Err(format!("{queued} of 8 callbacks queued for the writer")),
    })
    .await;
    // This test's runtime has one thread: had a queued callback held it, nothing here would run.
    let health = receiver.client.get(receiver.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(
        receiver.get_json("/stats").await["requests"]["accepted"],
        1,
        "none answered before it is written"
    );

    drop(stalled);
    for answer in waiting {
        answer.await.unwrap().assert_accepted();
    }
    let journal = &receiver.get_json("/stats").await["journal"];
    assert_eq!(journal["last_seq"], 9);
    assert_eq!(journal["writes"].as_u64().unwrap() - writes_before, 1, "one pwritev for the 8: {journal}");
    // Written whole and in order: every sink reads them back, the log included.
    let logged = receiver.log.wait_for(9).await;
    let ids: Vec<_> =
        logged.iter().map(|record| record["operationID"].as_str().unwrap().to_owned()).collect();
    assert_eq!(ids.len(), 9, "{ids:?}");
    assert_eq!(ids[0], "op-first");
    let mut later: Vec<_> = ids[1..].to_vec();
    later.sort();
    assert_eq!(later, (0..8).map(|index| format!("op-{index}")).collect::<Vec<_>>());
}
