//! A deadline whose timer is made only when it is needed.
//!
//! `tokio::time::timeout` makes a timer entry up front (the runtime's handle
//! cloned, the entry dropped afterwards) even when the future it guards is
//! done at its first poll, and a callback's steps usually are: its body came
//! with its headers, its journal write needs no wait, the whole handler
//! answers at its first poll. (The safety net in `settle.rs` makes its
//! timer lazily the same way, inside its hand-written future.)

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use tokio::time::Instant;
use tokio::time::error::Elapsed;

/// `future`'s output, or `Elapsed` once `deadline` passes. A future done at
/// its first poll counts as in time, as with `tokio::time::timeout`, which
/// also polls the future before its timer.
pub async fn within<F: Future>(deadline: Instant, future: F) -> Result<F::Output, Elapsed> {
    let mut future = pin!(future);
    if let Poll::Ready(output) =
        std::future::poll_fn(|context| Poll::Ready(future.as_mut().poll(context))).await
    {
        return Ok(output);
    }
    tokio::time::timeout_at(deadline, future).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_future_done_at_once_is_in_time_even_past_its_deadline() {
        let answer = within(Instant::now() - Duration::from_millis(1), async { 7 }).await;
        assert_eq!(answer.unwrap(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn a_future_that_waits_is_cut_at_the_deadline() {
        let started = Instant::now();
        let deadline = started + Duration::from_millis(50);
        let answer = within(deadline, std::future::pending::<()>()).await;
        assert!(answer.is_err());
        assert_eq!(Instant::now() - started, Duration::from_millis(50));
    }

    #[tokio::test(start_paused = true)]
    async fn a_future_that_waits_but_finishes_in_time_gives_its_output() {
        let deadline = Instant::now() + Duration::from_millis(50);
        let answer = within(deadline, async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            "done"
        })
        .await;
        assert_eq!(answer.unwrap(), "done");
    }
}
