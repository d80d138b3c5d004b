//! `streams._core.EventIds`: the ids a cluster has applied (`viralwatch_core::dedupe`).

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

use viralwatch_core::dedupe::EventIdSet;

/// An id's bytes: its UTF-8 (an id holding a lone surrogate, which no parsed event has,
/// is hashed as ``surrogatepass`` writes it, so any ``str`` is an id).
pub(crate) fn with_id<R>(id: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    let text = id
        .cast::<PyString>()
        .map_err(|_| PyTypeError::new_err("an event id is a str"))?;
    match text.to_str() {
        Ok(s) => Ok(f(s.as_bytes())),
        Err(_) => {
            let raw = text.call_method1("encode", ("utf-8", "surrogatepass"))?;
            Ok(f(raw.cast::<PyBytes>()?.as_bytes()))
        }
    }
}

/// The event ids a cluster has applied, as 128-bit keyed hashes (16 bytes an id; see
/// ``rust/core/src/dedupe.rs`` for why a collision cannot matter). Sets of the same ids
/// are equal within one process; the hashes never leave it.
#[pyclass(module = "streams._core", eq)]
#[derive(Default, PartialEq)]
pub struct EventIds {
    ids: EventIdSet,
}

impl EventIds {
    /// The Python face of ids hashed already (a cluster the core kept, handed over).
    pub(crate) fn from_set(ids: EventIdSet) -> Self {
        Self { ids }
    }
}

#[pymethods]
impl EventIds {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    /// Add ``event_id``; ``False`` if it was here already.
    fn add(&mut self, event_id: &Bound<'_, PyAny>) -> PyResult<bool> {
        with_id(event_id, |id| self.ids.insert(id))
    }

    /// Add a batch of ids in order: for each, whether it was new.
    fn add_many(&mut self, event_ids: &Bound<'_, PyAny>) -> PyResult<Vec<bool>> {
        let mut out = Vec::new();
        for id in event_ids.try_iter()? {
            out.push(with_id(&id?, |id| self.ids.insert(id))?);
        }
        Ok(out)
    }

    /// Whether each id of a batch was applied here.
    fn contains_many(&self, event_ids: &Bound<'_, PyAny>) -> PyResult<Vec<bool>> {
        let mut out = Vec::new();
        for id in event_ids.try_iter()? {
            out.push(with_id(&id?, |id| self.ids.contains(id))?);
        }
        Ok(out)
    }

    /// ``id in ids``: ``False`` for anything that is not a ``str``, as a set of ``str`` says.
    fn __contains__(&self, event_id: &Bound<'_, PyAny>) -> bool {
        with_id(event_id, |id| self.ids.contains(id)).unwrap_or(false)
    }

    fn __len__(&self) -> usize {
        self.ids.len()
    }

    fn __repr__(&self) -> String {
        format!("EventIds(<{} ids>)", self.ids.len())
    }
}
