//! `streams._core.IdleClusters`: unbanked uploads' clusters at the index's owner
//! (`viralwatch_core::emerging`), over the `ContentSignals` that
//! `streams.emerging.ContentIndex` also holds (it searches videos in Python).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use pyo3::{PyTraverseError, PyVisit};

use viralwatch_core::content::{Cid, Kind};
use viralwatch_core::emerging;
use viralwatch_core::wire_index;

use crate::content::{texts, PyContentSignals};
use crate::dedupe::with_id;

/// The id of the cluster unbanked content starts: ``"u-"`` and the 8-byte BLAKE2b of
/// ``key``'s UTF-8 (``viralwatch_core::emerging::unbanked_id``).
#[pyfunction]
pub fn unbanked_id(key: &Bound<'_, PyAny>) -> PyResult<String> {
    with_id(key, emerging::unbanked_id)
}

/// Which cluster an unbanked upload joins, the clusters' idle order and what changed for
/// the state log (see ``streams.emerging.EmergingClusters``), over ``signals``.
#[pyclass(module = "streams._core", name = "IdleClusters")]
pub struct PyIdleClusters {
    pub(crate) signals: Py<PyContentSignals>,
    pub(crate) inner: emerging::IdleClusters,
    pub(crate) threshold: u32,
}

#[pymethods]
impl PyIdleClusters {
    /// ``log=False``: no change is kept for a state log (replay's; :meth:`take_changes`
    /// gives nothing).
    #[new]
    #[pyo3(signature = (signals, idle_ms, threshold, log = true))]
    fn new(
        signals: Py<PyContentSignals>,
        idle_ms: i64,
        threshold: u32,
        log: bool,
    ) -> PyResult<Self> {
        if threshold > 256 {
            return Err(PyValueError::new_err(format!(
                "threshold must be 0..256, not {threshold}"
            )));
        }
        Ok(Self {
            signals,
            inner: if log {
                emerging::IdleClusters::new(idle_ms)
            } else {
                emerging::IdleClusters::unlogged(idle_ms)
            },
            threshold,
        })
    }

    /// The content index it shares, for the garbage collector (the index holds no Python
    /// object: nothing to clear).
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.signals)
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// Uploads that joined a live cluster of other content.
    #[getter]
    fn joined(&self) -> u64 {
        self.inner.joined
    }

    #[setter]
    fn set_joined(&mut self, n: u64) {
        self.inner.joined = n;
    }

    /// The cluster an unbanked upload with these ``(kind, text)`` signals (MD5 first) joins
    /// (``own``: the one it starts if none is near), touched at ``ts_ms``. A PDQ text that
    /// is not 64 hex digits raises ``ValueError`` and changes nothing.
    fn assign(
        &mut self,
        py: Python<'_>,
        signals: Vec<(String, String)>,
        own: &str,
        ts_ms: i64,
    ) -> PyResult<String> {
        let signals: Vec<(Kind, &str)> = signals
            .iter()
            .map(|(k, t)| (Kind::of(k), t.as_str()))
            .collect();
        let mut held = self.signals.borrow_mut(py);
        self.inner
            .assign(
                &mut held.inner,
                &signals,
                &Cid::of(own),
                ts_ms,
                self.threshold,
            )
            .map(|c| c.to_string())
            .map_err(|e| PyValueError::new_err(e.0))
    }

    /// An event of ``cluster`` at ``ts_ms`` (one the signals hold): not idle, changed.
    fn touch(&mut self, py: Python<'_>, cluster: &str, ts_ms: i64) {
        let held = self.signals.borrow(py);
        self.inner.touch(&held.inner, cluster, ts_ms);
    }

    /// ``cluster`` took these signals just before it was touched, for the state log (after
    /// :meth:`touch`).
    fn record(&mut self, py: Python<'_>, cluster: &str, new: Vec<String>) {
        let held = self.signals.borrow(py);
        self.inner.record(&held.inner, cluster, new.len());
    }

    /// The clusters idle since ``idle_ms`` before ``watermark_ms``, evicted from the idle
    /// order (the caller drops them from the signals).
    fn expire(&mut self, py: Python<'_>, watermark_ms: i64) -> Vec<String> {
        let held = self.signals.borrow(py);
        texts(self.inner.expire(&held.inner, watermark_ms))
    }

    /// What changed since the last call: ``[(cluster, latest, signals taken)]``, least
    /// recently touched first, and the clusters evicted.
    #[allow(clippy::type_complexity)]
    fn take_changes(&mut self, py: Python<'_>) -> (Vec<(String, i64, Vec<String>)>, Vec<String>) {
        let held = self.signals.borrow(py);
        let (changed, evicted) = self.inner.take_changes(&held.inner);
        (
            changed
                .into_iter()
                .map(|(c, t, took)| {
                    let took = took.iter().map(|s| s.text().to_string()).collect();
                    (c.to_string(), t, took)
                })
                .collect(),
            texts(evicted),
        )
    }

    /// What changed since the last call as the owner's state log writes it (the compact
    /// ``"U"``, ``viralwatch_core::wire_index``): the parts (JSON arrays of at most
    /// ``limit`` bytes, least recently touched first), the entries they hold (a cluster
    /// and each signal one), and the clusters evicted.
    fn log_changes<'py>(
        &mut self,
        py: Python<'py>,
        limit: usize,
    ) -> (Vec<Bound<'py, PyBytes>>, usize, Vec<String>) {
        let held = self.signals.borrow(py);
        let (changed, evicted) = self.inner.take_changes(&held.inner);
        let (parts, items) =
            wire_index::write_index(changed.iter().map(|(c, t, took)| (c, *t, &took[..])), limit);
        (bytes_of(py, &parts), items, texts(evicted))
    }

    /// Every live cluster (least recently touched first) with all its signals, as
    /// :meth:`log_changes` writes them: the parts and the entries they hold.
    fn snapshot_log(&self, py: Python<'_>, limit: usize) -> (Vec<Py<PyBytes>>, usize) {
        let held = self.signals.borrow(py);
        let live = self.inner.snapshot(&held.inner);
        let signals: Vec<_> = live.iter().map(|(c, _)| held.inner.held(&**c)).collect();
        let (parts, items) = wire_index::write_index(
            live.iter()
                .zip(&signals)
                .map(|((c, t), s)| (&**c, *t, &s[..])),
            limit,
        );
        let parts = bytes_of(py, &parts)
            .into_iter()
            .map(Bound::unbind)
            .collect();
        (parts, items)
    }

    /// A log read back: ``cluster``'s latest event is at least ``last``.
    fn fold(&mut self, py: Python<'_>, cluster: &str, last: i64) {
        let held = self.signals.borrow(py);
        self.inner.fold(&held.inner, cluster, last);
    }

    /// A log read back: ``cluster`` was evicted; ``False`` if it was not live.
    fn forget(&mut self, py: Python<'_>, cluster: &str) -> bool {
        let held = self.signals.borrow(py);
        self.inner.forget(&held.inner, cluster)
    }

    /// ``[(cluster, latest)]``, least recently touched first.
    fn snapshot(&self, py: Python<'_>) -> Vec<(String, i64)> {
        let held = self.signals.borrow(py);
        self.inner
            .snapshot(&held.inner)
            .into_iter()
            .map(|(c, t)| (c.to_string(), t))
            .collect()
    }
}

fn bytes_of<'py>(py: Python<'py>, parts: &[Vec<u8>]) -> Vec<Bound<'py, PyBytes>> {
    parts.iter().map(|p| PyBytes::new(py, p)).collect()
}
