//! Ingest's per-event step (`streams.stages.Ingest.handle`) over a batch of input lines, in
//! one call: each line parsed and validated (`crate::ev::parse_lines`, the parser every
//! stage reads events with), each event put in the batch of the resolve partition of the
//! post it needs (a reshare its parent's, anything else its own: `zlib.crc32` of the
//! id's UTF-8), kept compiled (`EvBatch`: no Python record per event), the rejections
//! (Python's records, for the dead letter), and the newest event time read from each
//! input partition (the reader's clock moves once per partition a batch, not per event).

use std::collections::HashMap;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

use viralwatch_core::posts::partition_for;

use crate::ev::{parse_data, parse_lines, Ev, EvBatch, Line};
use crate::fetched::RecordRun;
use crate::line_bytes;

/// What a batch of lines became: ``(an EvBatch of events to route per resolve partition
/// (``None``: none for it), [(position, Rejection)], [(input partition, newest event time
/// or None)] in first-read order)``.
type Ingested = (
    Vec<Option<EvBatch>>,
    Vec<(usize, Py<PyAny>)>,
    Vec<(i64, Option<i64>)>,
);

/// ``lines[i]`` (bytes) was read from input partition ``sources[i]``; see the module doc.
#[pyfunction]
pub fn ingest_lines(
    py: Python<'_>,
    lines: &Bound<'_, PyList>,
    sources: Vec<i64>,
    partitions: u32,
) -> PyResult<Ingested> {
    let parsed = parse_lines(py, lines)?;
    route(
        py,
        parsed,
        |i| sources.get(i).copied().unwrap_or_default(),
        partitions,
    )
}

/// What a batch of the ``shares`` reader's records became: as [`Ingested`], but each
/// rejection with its record's ``(input partition, offset)`` (its dead letter's source)
/// in place of its position.
type IngestedRecords = (
    Vec<Option<EvBatch>>,
    Vec<(i64, i64, Py<PyAny>)>,
    Vec<(i64, Option<i64>)>,
);

/// A partition's records as the reader hands them over: a run of a fetch read by the core
/// (parsed where its values lie), or the Kafka client's own records (``offset``, ``value``:
/// a fetch the core left to it), their values held.
enum Run<'py> {
    Read(Bound<'py, RecordRun>),
    Listed(Vec<(i64, Bound<'py, PyBytes>)>),
}

/// ``runs``: ``[(input partition, records)]`` in the order read, each partition's records in
/// offset order (a ``RecordRun``, or records with ``offset`` and ``value``: a ``None``
/// value is read as an empty line); the batch as :func:`ingest_lines` makes it of the
/// records' values, no ``bytes`` made of a run's value but a rejected one's.
#[pyfunction]
pub fn ingest_records(
    py: Python<'_>,
    runs: Vec<(i64, Bound<'_, PyAny>)>,
    partitions: u32,
) -> PyResult<IngestedRecords> {
    let empty = PyBytes::new(py, b"");
    let mut held = Vec::with_capacity(runs.len());
    for (partition, records) in runs {
        let run = match records.cast_into::<RecordRun>() {
            Ok(run) => Run::Read(run),
            Err(e) => {
                let mut listed = Vec::new();
                for r in e.into_inner().try_iter()? {
                    let r = r?;
                    let value = r.getattr(intern!(py, "value"))?;
                    let value = if value.is_none() {
                        empty.clone()
                    } else {
                        line_bytes(value)?
                    };
                    listed.push((r.getattr(intern!(py, "offset"))?.extract()?, value));
                }
                Run::Listed(listed)
            }
        };
        held.push((partition, run));
    }
    // made to size (they grew one record at a time: 5,241 growths in a worker's 299,058
    // records, 50 instructions a record counted)
    let lines = held
        .iter()
        .map(|(_, run)| match run {
            Run::Read(run) => run.get().records().len(),
            Run::Listed(listed) => listed.len(),
        })
        .sum();
    let mut data: Vec<&[u8]> = Vec::with_capacity(lines);
    let mut at: Vec<(i64, i64)> = Vec::with_capacity(lines); // each line's partition and offset
    for (partition, run) in &held {
        match run {
            Run::Read(run) => {
                let run = run.get();
                let raw = run.shared().raw(py);
                for r in run.records() {
                    data.push(r.value(raw).unwrap_or_default());
                    at.push((*partition, r.offset));
                }
            }
            Run::Listed(listed) => {
                for (offset, value) in listed {
                    data.push(value.as_bytes());
                    at.push((*partition, *offset));
                }
            }
        }
    }
    let parsed = parse_data(py, &data, |i| Ok(PyBytes::new(py, data[i])))?;
    let (batches, rejected, newest) = route(py, parsed, |i| at[i].0, partitions)?;
    let rejected = rejected
        .into_iter()
        .map(|(i, r)| (at[i].0, at[i].1, r))
        .collect();
    Ok((batches, rejected, newest))
}

/// Each parsed line put in the batch of its resolve partition (`source(i)`: line `i`'s
/// input partition), as the module doc says.
fn route(
    py: Python<'_>,
    parsed: Vec<Line>,
    source: impl Fn(usize) -> i64,
    partitions: u32,
) -> PyResult<Ingested> {
    let parts = partitions.max(1);
    // each partition's batch made for its share of the lines and a quarter more (the
    // routed posts' CRC spreads them evenly: a batch of a worker's fetch, some 850 lines
    // a partition, strays by about 25), where it grew from none by doubling
    let share = parsed.len().div_ceil(parts as usize);
    let mut items: Vec<Vec<Ev>> = (0..parts)
        .map(|_| Vec::with_capacity(share + share / 4))
        .collect();
    let mut rejected = Vec::new();
    let mut newest: Vec<(i64, Option<i64>)> = Vec::new();
    let mut at: HashMap<i64, usize> = HashMap::new();
    // the lines come in runs of one partition: its slot looked up once a run, not a line
    let mut last: Option<(i64, usize)> = None;
    for (i, line) in parsed.into_iter().enumerate() {
        let source = source(i);
        let slot = match last {
            Some((s, slot)) if s == source => slot,
            _ => {
                let slot = *at.entry(source).or_insert_with(|| {
                    newest.push((source, None));
                    newest.len() - 1
                });
                last = Some((source, slot));
                slot
            }
        };
        let ev = match line {
            Line::Rejected(r) => {
                rejected.push((i, r));
                continue;
            }
            Line::Event(ev) => ev,
        };
        // a compact event's time and routed post (`Compact::target_post_id`, the rule's
        // one owner, as `Ev::with_posts` reads it) read in place: through `Ev`'s methods
        // (each a call that matches the event's form and wraps a `PyResult`) they were 32
        // instructions a record more (callgrind, a worker's ingest)
        let (ts, k) = match &ev {
            Ev::Core(c) => (
                c.ts_ms(),
                partition_for(c.target_post_id().as_bytes(), parts),
            ),
            Ev::Py(_) => (
                ev.ts_ms(py)?,
                ev.with_posts(py, |_, target| partition_for(target, parts))?,
            ),
        };
        let last = &mut newest[slot].1;
        *last = Some(last.map_or(ts, |t| t.max(ts)));
        let k = k as usize;
        items[k].push(ev);
    }
    let batches = items
        .into_iter()
        .map(|evs| (!evs.is_empty()).then(|| EvBatch::to_route(evs)))
        .collect();
    Ok((batches, rejected, newest))
}
