//! Ingest's per-event step (`streams.stages.Ingest.handle`) over a batch of input lines, in
//! one call: each line parsed and validated (`crate::ev::parse_lines`, the parser every
//! stage reads events with), each event put in the batch of the resolve partition of the
//! post it needs (a reshare its parent's, anything else its own: `zlib.crc32` of the
//! id's UTF-8), kept compiled (`EvBatch`: no Python record per event), the rejections
//! (Python's records, for the dead letter), and the newest event time read from each
//! input partition (the reader's clock moves once per partition a batch, not per event).

use std::collections::HashMap;

use pyo3::prelude::*;
use pyo3::types::PyList;

use viralwatch_core::posts::partition_for;
use viralwatch_core::unbanked::Kind;

use crate::ev::{parse_lines, Ev, EvBatch, Line};

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
    let parts = partitions.max(1);
    let mut items: Vec<Vec<Ev>> = (0..parts).map(|_| Vec::new()).collect();
    let mut rejected = Vec::new();
    let mut newest: Vec<(i64, Option<i64>)> = Vec::new();
    let mut at: HashMap<i64, usize> = HashMap::new();
    for (i, line) in parse_lines(py, lines)?.into_iter().enumerate() {
        let source = sources.get(i).copied().unwrap_or_default();
        let slot = *at.entry(source).or_insert_with(|| {
            newest.push((source, None));
            newest.len() - 1
        });
        let ev = match line {
            Line::Rejected(r) => {
                rejected.push((i, r));
                continue;
            }
            Line::Event(ev) => ev,
        };
        let ts = ev.ts_ms(py)?;
        let last = &mut newest[slot].1;
        *last = Some(last.map_or(ts, |t| t.max(ts)));
        let share = ev.kind(py)? == Kind::Share;
        let k = ev.with_posts(py, |post, parent| {
            partition_for(if share { parent } else { post }, parts)
        })? as usize;
        items[k].push(ev);
    }
    let batches = items
        .into_iter()
        .map(|evs| (!evs.is_empty()).then(|| EvBatch::to_route(evs)))
        .collect();
    Ok((batches, rejected, newest))
}
