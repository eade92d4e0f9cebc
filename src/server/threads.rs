//! The threads that serve connections: each runs a single-threaded runtime
//! of its own, and a connection lives on one of them from accept to close.
//!
//! With tokio's shared multi-threaded runtime, a connection's task runs on
//! whichever worker polled the socket's readiness or stole it: a request's
//! memory is often made on one core and freed on the other, its state is
//! cold where it runs, and the workers wake each other to share work. And
//! on a machine whose cores are shared with the client and the sinks, two
//! threads that serve take turns at the cores with them. At 64 connections
//! on 2 cores, the runtime's second thread cost the receiver 3.7 µs of CPU
//! a request (README, Performance, round 11).
//!
//! By default (`server.worker_threads = 0`) there is one thread per core and
//! new connections go to each in turn, as actix-server spreads them, skipping
//! one held up: each thread beats once every [`BEAT_INTERVAL`], and one that
//! has missed [`STALLED_AFTER`] of beats (held up in a record write its disk
//! does not finish) gets no new connections while another beats, so a health
//! probe, which opens a connection of its own, is still answered. With
//! `worker_threads = 1`, one thread serves every connection and a second
//! stands by for the moments the first is held up.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// How often each connection thread says it runs.
const BEAT_INTERVAL: Duration = Duration::from_millis(100);

/// A thread silent this long is taken for held up (by a blocking write).
const STALLED_AFTER: Duration = Duration::from_secs(1);

/// How new connections are given to the threads.
#[derive(Debug)]
enum Spread {
    /// To the first thread that beats: the others stand by.
    FirstBeating,
    /// To each thread that beats in turn.
    InTurn,
}

/// The connection threads, started together and stopped when dropped.
pub struct ConnectionThreads {
    threads: Vec<ConnectionThread>,
    spread: Spread,
    /// When the threads started: beats are milliseconds after it.
    started: Instant,
    next: usize,
}

struct ConnectionThread {
    runtime: Handle,
    /// Milliseconds after `started` of the thread's last beat.
    beat: Arc<AtomicU64>,
    /// Dropped (with the pool), it ends the thread's runtime.
    _stop: oneshot::Sender<()>,
}

impl ConnectionThreads {
    /// The threads `server.worker_threads` asks for: 1, one that serves and
    /// one that stands by; N, N in turn; 0, one per core in turn. Named
    /// `http-0`, `http-1`, ….
    pub fn start(worker_threads: usize) -> io::Result<Self> {
        let serving = match worker_threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            count => count,
        };
        let (count, spread) = match serving {
            1 => (2, Spread::FirstBeating),
            count => (count, Spread::InTurn),
        };
        let started = Instant::now();
        let threads = (0..count)
            .map(|index| ConnectionThread::start(index, started))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(ConnectionThreads { threads, spread, started, next: 0 })
    }

    /// The runtime of the thread that takes the next connection.
    pub fn next(&mut self) -> &Handle {
        let index = self.next_index();
        &self.threads[index].runtime
    }

    /// The thread for the next connection (see [`Spread`]).
    fn next_index(&mut self) -> usize {
        let now_ms = self.started.elapsed().as_millis() as u64;
        let from = match self.spread {
            Spread::FirstBeating => 0,
            Spread::InTurn => self.next,
        };
        let index = next_beating(from, self.threads.len(), |index| {
            beats_since(self.threads[index].beat.load(Ordering::Relaxed), now_ms)
        });
        self.next = index + 1;
        index
    }
}

/// Whether a thread whose last beat was at `beat_ms` still beats at `now_ms`.
fn beats_since(beat_ms: u64, now_ms: u64) -> bool {
    now_ms.saturating_sub(beat_ms) < STALLED_AFTER.as_millis() as u64
}

/// From `next` on, in turn, the first of `count` threads that `beats`;
/// `next` itself if none does.
fn next_beating(next: usize, count: usize, beats: impl Fn(usize) -> bool) -> usize {
    (0..count).map(|offset| (next + offset) % count).find(|&index| beats(index)).unwrap_or(next % count)
}

impl ConnectionThread {
    fn start(index: usize, started: Instant) -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let beat = Arc::new(AtomicU64::new(started.elapsed().as_millis() as u64));
        let (stop, stopped) = oneshot::channel::<()>();
        let beating = Arc::clone(&beat);
        std::thread::Builder::new().name(format!("http-{index}")).spawn(move || {
            runtime.block_on(async move {
                let beats = async {
                    let mut ticks = tokio::time::interval(BEAT_INTERVAL);
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        ticks.tick().await;
                        beating.store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                    }
                };
                tokio::select! {
                    _ = stopped => {}
                    () = beats => {}
                }
            });
            // A connection task still running (the server's shutdown deadline
            // passed) ends here, with its thread; one stuck in a blocking
            // write keeps only this thread, which nobody waits for.
            drop(runtime);
        })?;
        Ok(ConnectionThread { runtime: handle, beat, _stop: stop })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_go_to_the_threads_in_turn_skipping_those_that_stopped_beating() {
        let pick = |next: usize, beats: [u64; 3], now_ms: u64| {
            next_beating(next, beats.len(), |index| beats_since(beats[index], now_ms))
        };
        let fresh = [1_000, 1_000, 1_000];
        let turns: Vec<usize> = (0..4).map(|next| pick(next, fresh, 1_500)).collect();
        assert_eq!(turns, [0, 1, 2, 0]);
        let second_held_up = [1_000, 0, 1_000];
        assert_eq!(pick(1, second_held_up, 1_500), 2);
        assert_eq!(pick(2, second_held_up, 1_500), 2);
        let all_held_up = [0, 0, 0];
        assert_eq!(pick(1, all_held_up, 1_500), 1, "none beats: still in turn");
    }

    #[test]
    fn one_thread_serves_and_the_standby_takes_new_connections_while_it_is_held_up() {
        let mut threads = ConnectionThreads::start(1).unwrap();
        assert_eq!(threads.threads.len(), 2);
        let picked: Vec<usize> = (0..3).map(|_| threads.next_index()).collect();
        assert_eq!(picked, [0, 0, 0]);
        // What a record write that the disk holds up does to its thread.
        threads.threads[0].runtime.spawn(async { std::thread::sleep(STALLED_AFTER * 3) });
        std::thread::sleep(STALLED_AFTER + BEAT_INTERVAL * 3);
        let picked: Vec<usize> = (0..3).map(|_| threads.next_index()).collect();
        assert_eq!(picked, [1, 1, 1]);
    }

    #[test]
    fn more_threads_take_connections_in_turn_and_one_held_up_is_skipped() {
        let mut threads = ConnectionThreads::start(3).unwrap();
        let picked: Vec<usize> = (0..4).map(|_| threads.next_index()).collect();
        assert_eq!(picked, [0, 1, 2, 0]);
        threads.threads[1].runtime.spawn(async { std::thread::sleep(STALLED_AFTER * 3) });
        std::thread::sleep(STALLED_AFTER + BEAT_INTERVAL * 3);
        let picked: Vec<usize> = (0..4).map(|_| threads.next_index()).collect();
        assert_eq!(picked, [2, 0, 2, 0]);
    }
}
