//! `streams._core.ReorderBuffer`: records held until the watermark passes them
//! (`viralwatch_core::reorder`), holding references to Python records.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PySet};
use pyo3::{PyTraverseError, PyVisit};

use viralwatch_core::reorder;

use crate::dedupe::with_id;

/// A min-heap of records by ``(ts, key)`` (equal pairs in arrival order; records are never
/// compared), released up to a watermark.
#[pyclass(module = "streams._core", generic)]
#[derive(Default)]
pub struct ReorderBuffer {
    held: reorder::ReorderBuffer<Py<PyAny>>,
}

#[pymethods]
impl ReorderBuffer {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    /// Hold ``item`` until the watermark reaches ``ts_ms``; ``key`` (a ``str``) breaks ties.
    fn push(&mut self, ts_ms: i64, key: &Bound<'_, PyAny>, item: Py<PyAny>) -> PyResult<()> {
        with_id(key, |k| self.held.push(ts_ms, k, item))
    }

    /// Every record at or before the watermark, in event-time order.
    fn release(&mut self, watermark_ms: i64) -> Vec<Py<PyAny>> {
        self.held.release(watermark_ms)
    }

    /// Everything, in order (the end of the input).
    fn drain(&mut self) -> Vec<Py<PyAny>> {
        self.held.drain()
    }

    /// The keys of the records held.
    fn keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PySet>> {
        let set = PySet::empty(py)?;
        for key in self.held.keys() {
            // a key went in as a str: its bytes are UTF-8, or surrogatepass's for a lone one
            let text = PyBytes::new(py, key).call_method1("decode", ("utf-8", "surrogatepass"))?;
            set.add(text)?;
        }
        Ok(set)
    }

    /// The event time of the latest record released (``-1`` before any).
    #[getter]
    fn released_ms(&self) -> i64 {
        self.held.released_ms()
    }

    /// The event time of the earliest record held (``2**63 - 1`` when none is): a watermark
    /// before it releases nothing.
    #[getter]
    fn next_ms(&self) -> i64 {
        self.held.next_ms()
    }

    fn __len__(&self) -> usize {
        self.held.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "ReorderBuffer(<{} held, released to {}>)",
            self.held.len(),
            self.held.released_ms()
        )
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        for item in self.held.items() {
            visit.call(item)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.held.clear();
    }
}
