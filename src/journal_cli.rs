//! `openim-callback-receiver journal ls|cat|verify [--dir DIR]`: a look
//! inside the journal from the command line, read only (see `journal::inspect`).

use crate::callbacks::Command;
use crate::journal::inspect::{self, SegmentSummary};
use crate::journal::record::Record;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::io::{self, Write};
use std::path::Path;
use std::time::SystemTime;

/// Where `cat` starts or stops: a sequence number, or a time of arrival.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    Seq(u64),
    ReceivedAt(SystemTime),
}

impl std::str::FromStr for Bound {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if let Ok(seq) = text.parse() {
            return Ok(Bound::Seq(seq));
        }
        crate::epoch::parse_rfc3339(text).map(Bound::ReceivedAt).ok_or_else(|| {
            format!("{text:?} is neither a sequence number nor a time like 2026-12-01T08:00:00Z")
        })
    }
}

impl Bound {
    fn before(self, record: &Record) -> bool {
        match self {
            Bound::Seq(seq) => record.seq < seq,
            Bound::ReceivedAt(at) => record.received_at < at,
        }
    }

    fn after(self, record: &Record) -> bool {
        match self {
            Bound::Seq(seq) => record.seq > seq,
            Bound::ReceivedAt(at) => record.received_at > at,
        }
    }
}

/// A bar over the journal's bytes on a terminal; nothing when stderr is not one.
fn progress(dir: &Path) -> io::Result<ProgressBar> {
    let total: u64 = inspect::segment_files(dir)?
        .iter()
        .map(|(_, path)| std::fs::metadata(path).map(|metadata| metadata.len()).unwrap_or(0))
        .sum();
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    Ok(bar)
}

fn time_text(at: SystemTime) -> String {
    crate::epoch::rfc3339_micros(at).as_str().to_owned()
}

/// `ls`: each segment (its records, size, times), each saved position and how far behind it is.
pub fn ls(dir: &Path, out: &mut impl Write) -> io::Result<()> {
    let bar = progress(dir)?;
    let mut summaries: Vec<SegmentSummary> = Vec::new();
    for (_, path) in inspect::segment_files(dir)? {
        summaries.push(inspect::read_segment(&path, |_| true)?);
        bar.inc(summaries.last().map_or(0, |summary| summary.bytes));
    }
    bar.finish_and_clear();
    writeln!(out, "journal {}", dir.display())?;
    writeln!(
        out,
        "{:<28} {:>10} {:>10} {:>12}  {:<27}  {:<27}  damaged",
        "segment", "first", "last", "bytes", "first received", "last received"
    )?;
    for summary in &summaries {
        let name =
            summary.path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
        let (first, last) = summary
            .records
            .map_or(("-".into(), "-".into()), |(first, last)| (first.to_string(), last.to_string()));
        let (since, until) = summary
            .received
            .map_or(("-".into(), "-".into()), |(since, until)| (time_text(since), time_text(until)));
        let damaged: u64 = summary.damaged.iter().map(|damage| damage.bytes).sum();
        writeln!(
            out,
            "{name:<28} {first:>10} {last:>10} {:>12}  {since:<27}  {until:<27}  {damaged}",
            summary.bytes
        )?;
    }
    let last =
        summaries.iter().filter_map(|summary| summary.records).map(|(_, last)| last).max().unwrap_or(0);
    writeln!(out)?;
    writeln!(out, "{:<16} {:>10} {:>12}", "sink", "next", "lag (records)")?;
    for (sink, next) in inspect::saved_positions(dir)? {
        match next {
            Some(next) => writeln!(out, "{sink:<16} {next:>10} {:>12}", (last + 1).saturating_sub(next))?,
            None => writeln!(out, "{sink:<16} {:>10} {:>12}", "-", "-")?,
        }
    }
    writeln!(out, "(the stats sink keeps its position in its snapshot, not here)")?;
    let dead: Vec<(String, Vec<u64>)> =
        dead_letters(dir)?.into_iter().filter(|(_, seqs)| !seqs.is_empty()).collect();
    if dead.is_empty() {
        return writeln!(out, "dead letters: none");
    }
    for (sink, seqs) in dead {
        let listed: Vec<String> = seqs.iter().map(u64::to_string).collect();
        writeln!(out, "dead letters of {sink}: {} (records {})", seqs.len(), listed.join(", "))?;
    }
    Ok(())
}

/// The dead letters each sink keeps beside the journal, as (sink, their sequence numbers).
fn dead_letters(dir: &Path) -> io::Result<Vec<(String, Vec<u64>)>> {
    let mut found = Vec::new();
    for path in inspect::files_in(&dir.join("dead-letters"))? {
        let Some(sink) =
            path.file_name().and_then(|name| name.to_str()).and_then(|name| name.strip_suffix(".jsonl"))
        else {
            continue;
        };
        let mut seqs: Vec<u64> =
            crate::sinks::dead_letters::read_lines(&path)?.iter().map(|letter| letter.seq).collect();
        seqs.sort_unstable();
        seqs.dedup();
        found.push((sink.to_owned(), seqs));
    }
    found.sort();
    Ok(found)
}

/// One record as `cat` prints it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CatLine<'a> {
    seq: u64,
    received_at: String,
    /// The command, by the record's kind (empty for a kind this release does not know).
    callback_command: &'a str,
    #[serde(rename = "operationID")]
    operation_id: &'a str,
    #[serde(rename = "operationIDGenerated", skip_serializing_if = "std::ops::Not::not")]
    operation_id_generated: bool,
    /// The body as it came; a body that is not JSON as a string.
    packet: serde_json::Value,
}

/// `cat`: records from `from` to `to` (inclusive), at most `limit`, as JSON lines.
pub fn cat(
    dir: &Path,
    from: Option<Bound>,
    to: Option<Bound>,
    limit: Option<u64>,
    out: &mut impl Write,
) -> io::Result<()> {
    let mut printed = 0;
    let mut failed = None;
    for (first, path) in inspect::segment_files(dir)? {
        if let Some(Bound::Seq(to)) = to
            && first > to
        {
            break;
        }
        let mut done = false;
        inspect::read_segment(&path, |record| {
            if from.is_some_and(|from| from.before(&record)) {
                return true;
            }
            if to.is_some_and(|to| to.after(&record)) || limit.is_some_and(|limit| printed >= limit) {
                done = true;
                return false;
            }
            let packet = serde_json::from_slice(&record.body).unwrap_or_else(|_| {
                serde_json::Value::String(String::from_utf8_lossy(&record.body).into_owned())
            });
            let line = CatLine {
                seq: record.seq,
                received_at: time_text(record.received_at),
                callback_command: Command::by_code(record.kind).map_or("", |command| command.name),
                operation_id: &record.operation_id.value,
                operation_id_generated: record.operation_id.generated,
                packet,
            };
            let written = serde_json::to_writer(&mut *out, &line)
                .map_err(io::Error::from)
                .and_then(|()| out.write_all(b"\n"));
            if let Err(error) = written {
                failed = Some(error);
                return false;
            }
            printed += 1;
            true
        })?;
        if let Some(error) = failed.take() {
            // A closed pipe (`| head`) is the reader being done, not a failure.
            return if error.kind() == io::ErrorKind::BrokenPipe { Ok(()) } else { Err(error) };
        }
        if done {
            break;
        }
    }
    out.flush()
}

/// `verify`: every frame's checksum; each damaged span named with its segment
/// and offset. True when the journal is clean.
pub fn verify(dir: &Path, out: &mut impl Write) -> io::Result<bool> {
    let bar = progress(dir)?;
    let (mut records, mut damaged) = (0u64, 0usize);
    for (_, path) in inspect::segment_files(dir)? {
        let summary = inspect::read_segment(&path, |_| {
            records += 1;
            true
        })?;
        bar.inc(summary.bytes);
        for damage in &summary.damaged {
            bar.suspend(|| {
                writeln!(
                    out,
                    "damaged: {} at offset {}: {} bytes are not records",
                    damage.segment.display(),
                    damage.offset,
                    damage.bytes
                )
            })?;
            damaged += 1;
        }
    }
    bar.finish_and_clear();
    if damaged == 0 {
        writeln!(out, "clean: {records} records, every checksum matches")?;
    } else {
        writeln!(out, "damaged: {damaged} span(s); {records} records read whole around them")?;
    }
    Ok(damaged == 0)
}
