//! Ingest's per-event step (`streams.stages.Ingest.handle`) over a parsed batch, in one
//! call: each event made a `ToRoute` in the list of the resolve partition of the post it
//! needs (a reshare its parent's, anything else its own: `zlib.crc32` of the id's UTF-8),
//! the rejections' positions, and the newest event time read from each input partition
//! (the reader's clock moves once per partition a batch, not once per event).

use std::collections::HashMap;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyType};

use viralwatch_core::posts::partition_for;
use viralwatch_core::unbanked::Kind;

use crate::dedupe::with_id;
use crate::record;
use crate::unbanked::kind_of;

/// What a parsed batch became: ``(ToRoute items per resolve partition, positions of the
/// rejections, [(input partition, newest event time or None)] in first-read order)``.
type Ingested = (Vec<Vec<Py<PyAny>>>, Vec<usize>, Vec<(i64, Option<i64>)>);

/// ``parsed[i]`` (a ``ShareEvent`` or a ``Rejection``) was read from input partition
/// ``sources[i]``; see the module doc.
#[pyfunction]
pub fn ingest_batch(
    py: Python<'_>,
    parsed: &Bound<'_, PyList>,
    sources: &Bound<'_, PyList>,
    partitions: u32,
    to_route: &Bound<'_, PyType>,
    rejection: &Bound<'_, PyType>,
) -> PyResult<Ingested> {
    let parts = partitions.max(1);
    let mut items: Vec<Vec<Py<PyAny>>> = (0..parts).map(|_| Vec::new()).collect();
    let mut rejected = Vec::new();
    let mut newest: Vec<(i64, Option<i64>)> = Vec::new();
    let mut at: HashMap<i64, usize> = HashMap::new();
    for (i, ev) in parsed.iter().enumerate() {
        let source: i64 = sources.get_item(i)?.extract()?;
        let slot = *at.entry(source).or_insert_with(|| {
            newest.push((source, None));
            newest.len() - 1
        });
        if ev.get_type().is(rejection) {
            rejected.push(i);
            continue;
        }
        let ts: i64 = ev.getattr(intern!(py, "ts_ms"))?.extract()?;
        let last = &mut newest[slot].1;
        *last = Some(last.map_or(ts, |t| t.max(ts)));
        let key = match kind_of(&ev.getattr(intern!(py, "type"))?)? {
            Kind::Share => ev.getattr(intern!(py, "parent_post_id"))?,
            _ => ev.getattr(intern!(py, "post_id"))?,
        };
        let k = with_id(&key, |k| partition_for(k, parts))? as usize;
        items[k].push(record(to_route, &[(intern!(py, "event"), ev)])?.unbind());
    }
    Ok((items, rejected, newest))
}
