//! `streams._core.Orphans`: events held until their parent post is routed
//! (`viralwatch_core::route`). The events stay Python objects; the core keeps
//! the references and decides what waits, what is refused and what comes out.

use pyo3::prelude::*;

use viralwatch_core::route::{self, Refusal};

use crate::dedupe::with_id;

/// Why an event was not held, as the router's rejection names it, with the items held.
pub(crate) fn refusal(r: Refusal) -> (&'static str, usize) {
    match r {
        Refusal::Cycle => ("cycle", 0),
        Refusal::Overflow { held } => ("orphan_overflow", held),
    }
}

/// Events waiting for their parent (or target) post: held in order, released when it is
/// routed, expired by event time, refused past ``max_held`` or when they would loop.
#[pyclass(module = "streams._core")]
#[derive(Default)]
pub struct Orphans {
    held: route::Orphans<Py<PyAny>>,
}

#[pymethods]
impl Orphans {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    /// Hold ``event`` (a reshare of ``post`` if ``share``, else a takedown) until ``target``
    /// is routed. ``None`` when held; else why not: ``("cycle", 0)`` or
    /// ``("orphan_overflow", items held)``.
    fn hold(
        &mut self,
        target: &Bound<'_, PyAny>,
        post: &Bound<'_, PyAny>,
        share: bool,
        ts_ms: i64,
        event: Py<PyAny>,
        max_held: usize,
    ) -> PyResult<Option<(&'static str, usize)>> {
        let refused = with_id(target, |target| {
            with_id(post, |post| {
                self.held
                    .hold(target, post, share, ts_ms, event, max_held)
                    .err()
            })
        })??;
        Ok(refused.map(refusal))
    }

    /// ``post`` was routed: the events that waited for it, in the order held.
    fn release(&mut self, post: &Bound<'_, PyAny>) -> PyResult<Vec<Py<PyAny>>> {
        with_id(post, |post| self.held.release(post))
    }

    /// Give up on the events at or before ``cut_ms``: by target (in the order each first
    /// got an event), then in the order held.
    fn expire(&mut self, cut_ms: i64) -> Vec<Py<PyAny>> {
        self.held
            .expire(cut_ms)
            .into_iter()
            .map(|(_, ev)| ev)
            .collect()
    }

    fn __len__(&self) -> usize {
        self.held.len()
    }
}
