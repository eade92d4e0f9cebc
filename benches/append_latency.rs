//! Does the journal's periodic fdatasync hold up appends? Times each append
//! (the record written to the OS, what a request waits for with
//! `journal.sync = "os"`) on two journals in the same run: one fdatasynced
//! every 20 ms by its sync thread (fifty times the default rate, so that a
//! stall would show in the tail), one never synced during the run. They take
//! turns, a block of appends each, so both see the same machine. Prints p50,
//! p99, p99.9 and the slowest append of each; then the disk's own fdatasync
//! after one record's write, which bounds `sync = "always"` (a request waits
//! for one, and at OpenIM's two workers at most two records share one), in a
//! file that grows and in one allocated ahead, as segments are.
//!
//!   cargo bench --bench append_latency
//!   APPENDS=1000000 cargo bench --bench append_latency

use futures_util::FutureExt;
use openim_callback_receiver::MessageJournal as Journal;
use openim_callback_receiver::callbacks::{AFTER_SEND_SINGLE_MSG, OperationId, ReceivedMessage};
use openim_callback_receiver::settings::Settings;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const BLOCK: usize = 10_000;

fn journal(dir: &std::path::Path, sync_interval: Duration) -> Arc<Journal> {
    let mut settings = Settings::defaults();
    settings.journal.dir = dir.to_owned();
    settings.journal.sync_interval = sync_interval;
    Journal::open(&settings.journal).expect("the journal opens")
}

fn percentile(sorted: &[Duration], fraction: f64) -> f64 {
    let index = ((sorted.len() as f64 * fraction) as usize).min(sorted.len() - 1);
    sorted[index].as_secs_f64() * 1e6
}

fn main() {
    let appends: usize = std::env::var("APPENDS").ok().and_then(|n| n.parse().ok()).unwrap_or(400_000);
    let raw =
        std::fs::read(format!("{}/samples/text.json", env!("CARGO_MANIFEST_DIR"))).expect("sample packet");
    let operation_id = OperationId { value: "bench".to_owned(), generated: false };
    let message = Arc::new(
        ReceivedMessage::parse(AFTER_SEND_SINGLE_MSG, raw.into(), operation_id, SystemTime::now())
            .expect("the sample parses"),
    );
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let journals = [
        ("fdatasync every 20 ms", journal(dirs[0].path(), Duration::from_millis(20))),
        ("no fdatasync during the run", journal(dirs[1].path(), Duration::from_secs(3600))),
    ];
    let mut times: [Vec<Duration>; 2] = [Vec::with_capacity(appends), Vec::with_capacity(appends)];
    let started = Instant::now();
    while times[1].len() < appends {
        for ((_, journal), times) in journals.iter().zip(&mut times) {
            for _ in 0..BLOCK.min(appends - times.len()) {
                let before = Instant::now();
                journal.append(&message).now_or_never().expect("no other writer").expect("the append");
                times.push(before.elapsed());
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "journal appends of samples/text.json, {appends} on each journal, in blocks of {BLOCK} ({seconds:.1} s):"
    );
    for ((name, journal), times) in journals.iter().zip(&mut times) {
        journal.close();
        times.sort_unstable();
        println!(
            "  {name:<28} p50 {:6.1} µs  p99 {:6.1} µs  p99.9 {:7.1} µs  slowest {:8.0} µs",
            percentile(times, 0.5),
            percentile(times, 0.99),
            percentile(times, 0.999),
            percentile(times, 1.0),
        );
    }
    // Two probe files, taking turns by blocks of 50: one that grows with each
    // write, as a segment did before segments were allocated ahead, and one
    // allocated ahead as the journal's segments are now.
    let probes = [("a file that grows", false), ("a file allocated ahead (as segments are)", true)].map(
        |(name, allocated)| {
            let path = dirs[0].path().join(format!("fdatasync-probe-{allocated}"));
            let file = std::fs::File::create(&path).expect("the probe file");
            if allocated {
                rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, 1 << 20)
                    .expect("fallocate on the bench's disk");
            }
            (name, file, Vec::with_capacity(500))
        },
    );
    let mut probes = probes;
    for _ in 0..10 {
        for (_, file, syncs) in &mut probes {
            for _ in 0..50 {
                let before = Instant::now();
                rustix::io::write(&*file, &[b'x'; 510]).expect("write");
                file.sync_data().expect("fdatasync");
                syncs.push(before.elapsed());
            }
        }
    }
    for (name, _, mut syncs) in probes {
        syncs.sort_unstable();
        let mean = syncs.iter().sum::<Duration>().as_secs_f64() * 1e6 / syncs.len() as f64;
        println!(
            "the disk: a 510-byte write and its fdatasync, 500 times, {name}: p50 {:.0} µs, p99 {:.0} µs, mean {mean:.0} µs",
            percentile(&syncs, 0.5),
            percentile(&syncs, 0.99)
        );
    }
}
