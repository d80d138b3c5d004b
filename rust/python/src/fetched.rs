//! `streams._core.read_fetched`: a fetched partition's record batches read where they lie
//! (`viralwatch_core::fetched`), for the ``shares`` reader's consumer
//! (`streams.runtime.faust_adapter`'s bare records): runs of records taken from it
//! (``RecordRun``) that the ingest stage parses in place (`crate::ingest::ingest_records`),
//! with no Python object made per record.
//!
//! A run is a sequence of records all the same (``len``, an index, iteration: each record
//! then made, as aiokafka's record holds it: ``offset``, ``timestamp``, ``key``, ``value``,
//! ``headers``), for what reads a record or two of it (the run's first timestamp, its
//! last offset, a dead letter's source).

use std::sync::Arc;

use pyo3::exceptions::{PyIndexError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyTuple};

use viralwatch_core::fetched::{self, Fetched};

/// What a fetch's records lie in: its bytes (a ``bytes``: immutable, so they may be read
/// with the GIL released) and the records read from them.
pub(crate) struct Shared {
    raw: Py<PyBytes>,
    fetched: Fetched,
    fetch_offset: i64,
}

impl Shared {
    pub(crate) fn raw<'a>(&'a self, py: Python<'a>) -> &'a [u8] {
        self.raw.bind(py).as_bytes()
    }
}

/// A fetched partition read (see the module doc): its records, taken in runs.
#[pyclass(module = "streams._core", frozen)]
pub struct FetchedRecords {
    shared: Arc<Shared>,
}

#[pymethods]
impl FetchedRecords {
    fn __len__(&self) -> usize {
        self.shared.fetched.records.len()
    }

    /// Records ``lo`` to ``hi`` (as a slice bounds them).
    fn run(&self, lo: usize, hi: usize) -> RecordRun {
        let n = self.shared.fetched.records.len();
        let hi = hi.min(n);
        RecordRun {
            shared: Arc::clone(&self.shared),
            lo: lo.min(hi),
            hi,
        }
    }

    /// The partition's next fetch offset once the first ``taken`` records are taken
    /// (aiokafka's ``next_fetch_offset``; past the control batches after them once all are).
    fn next_after(&self, taken: usize) -> i64 {
        let s = &self.shared;
        s.fetched.next_after(taken, s.fetch_offset)
    }
}

/// Read ``raw``, a partition's fetched bytes, fetched from ``fetch_offset``, as a consumer
/// reading uncommitted records reads it (``check_crcs``: each batch's CRC-32C checked):
/// its records, or ``(reason, detail)`` where it is not read here (a compressed batch, a
/// legacy one, a CRC that does not hold, bytes not a well-formed batch): aiokafka's own
/// loop reads it then, or refuses it with its own error. Read with the GIL released.
#[pyfunction]
pub fn read_fetched(
    py: Python<'_>,
    raw: Bound<'_, PyBytes>,
    fetch_offset: i64,
    check_crcs: bool,
) -> PyResult<Py<PyAny>> {
    let data = raw.as_bytes();
    match py.detach(|| fetched::read(data, fetch_offset, check_crcs)) {
        Ok(fetched) => Ok(Py::new(
            py,
            FetchedRecords {
                shared: Arc::new(Shared {
                    raw: raw.clone().unbind(),
                    fetched,
                    fetch_offset,
                }),
            },
        )?
        .into_any()),
        Err(unread) => Ok(PyTuple::new(py, [unread.reason(), unread.detail()])?
            .into_any()
            .unbind()),
    }
}

/// ``(end, holds)`` of the record batch at ``start`` of ``raw``, for aiokafka's loop where
/// ``read_fetched`` leaves a fetch to it: where the batch ends (the next one starts), and
/// whether it is a magic-2 batch whose CRC-32C holds (``False`` also where that is not
/// known here: aiokafka's own check decides); ``None`` where ``raw`` holds no batch length
/// there. The header's fields are placed once, by the core's record batch
/// (`viralwatch_core::fetched::batch_at`).
#[pyfunction]
pub fn record_batch_at(py: Python<'_>, raw: &[u8], start: usize) -> Option<(usize, bool)> {
    py.detach(|| fetched::batch_at(raw, start))
}

/// Records taken from a fetched partition, in offset order (see the module doc).
#[pyclass(module = "streams._core", frozen, sequence)]
pub struct RecordRun {
    pub(crate) shared: Arc<Shared>,
    pub(crate) lo: usize,
    pub(crate) hi: usize,
}

impl RecordRun {
    /// The run's records as the core read them.
    pub(crate) fn records(&self) -> &[fetched::Record] {
        &self.shared.fetched.records[self.lo..self.hi]
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    fn record(&self, py: Python<'_>, r: &fetched::Record) -> PyResult<FetchedRecord> {
        let raw = self.shared.raw(py);
        let (key, value, headers) =
            fetched::fields(raw, r.at as usize).map_err(|u| PyValueError::new_err(u.detail()))?;
        let bytes = |b: Option<&[u8]>| b.map(|b| PyBytes::new(py, b).unbind());
        let headers = PyList::new(
            py,
            headers
                .into_iter()
                .map(|(k, v)| (k, v.map(|v| PyBytes::new(py, v))))
                .collect::<Vec<_>>(),
        )?;
        // aiokafka's record: a timestamp of -1 is none, and so is its type then
        let known = r.timestamp != -1;
        Ok(FetchedRecord {
            offset: r.offset,
            timestamp: known.then_some(r.timestamp),
            timestamp_type: known.then_some(i64::from(r.log_append_time)),
            key: bytes(key),
            value: bytes(value),
            headers: headers.unbind(),
        })
    }
}

#[pymethods]
impl RecordRun {
    fn __len__(&self) -> usize {
        self.hi - self.lo
    }

    /// The record at ``i`` (negative from the end), made now.
    fn __getitem__(&self, py: Python<'_>, i: isize) -> PyResult<FetchedRecord> {
        let records = self.records();
        let n = records.len() as isize;
        let at = if i < 0 { i + n } else { i };
        if !(0..n).contains(&at) {
            return Err(PyIndexError::new_err("record run index out of range"));
        }
        self.record(py, &records[at as usize])
    }

    /// Every record, made now.
    fn __iter__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let made = self
            .records()
            .iter()
            .map(|r| self.record(py, r))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(PyList::new(py, made)?
            .as_any()
            .try_iter()?
            .into_any()
            .unbind())
    }
}

/// A record of a run, as aiokafka's record batch gives it (``checksum`` is ``None`` at magic 2).
#[pyclass(module = "streams._core", frozen, get_all)]
pub struct FetchedRecord {
    offset: i64,
    timestamp: Option<i64>,
    timestamp_type: Option<i64>,
    key: Option<Py<PyBytes>>,
    value: Option<Py<PyBytes>>,
    headers: Py<PyList>,
}

#[pymethods]
impl FetchedRecord {
    #[getter]
    fn checksum(&self) -> Option<u32> {
        None
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let show = |b: &Option<Py<PyBytes>>| -> PyResult<String> {
            match b {
                Some(b) => Ok(b.bind(py).repr()?.to_string()),
                None => Ok("None".to_owned()),
            }
        };
        Ok(format!(
            "FetchedRecord(offset={}, timestamp={:?}, key={}, value={}, headers={})",
            self.offset,
            self.timestamp,
            show(&self.key)?,
            show(&self.value)?,
            self.headers.bind(py).repr()?
        ))
    }
}
