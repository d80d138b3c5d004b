//! `streams._core.ContentSignals`: live clusters' signals (`viralwatch_core::content`)
//! for `streams.emerging.ContentIndex`, which keeps the videos' part in Python.

use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use viralwatch_core::content::{ContentIndex, Kind, View, DETECTOR};

pub(crate) fn texts(v: Vec<Arc<str>>) -> Vec<String> {
    v.iter().map(|t| t.to_string()).collect()
}

/// A view's number (0: the owner's, 1: the detector's of an index it shares with the router).
fn view_of(view: i64) -> PyResult<View> {
    u8::try_from(view)
        .ok()
        .filter(|&v| v <= DETECTOR)
        .ok_or_else(|| PyValueError::new_err(format!("view must be 0 or 1, not {view}")))
}

/// Live clusters' signals: which clusters hold each (an MD5's, a PDQ's hex, a video's
/// text), searchable by MD5 and by PDQ distance (see ``streams.emerging.ContentIndex``).
/// ``view``: whose clusters (0, the owner's; 1, the detector's, when replay's detector
/// shares the router's index): each view's answers are those of an index of its own.
#[pyclass(module = "streams._core", name = "ContentSignals")]
#[derive(Default)]
pub struct PyContentSignals {
    pub(crate) inner: ContentIndex,
}

#[pymethods]
impl PyContentSignals {
    /// ``scan``: no PDQ tables, a search scans the hashes (an index searched only now and
    /// then: a worker's clusters partition's, for bank changes; about 70 bytes a hash less).
    #[new]
    #[pyo3(signature = (scan = false))]
    fn new(scan: bool) -> Self {
        if scan {
            PyContentSignals {
                inner: ContentIndex::scan_only(),
            }
        } else {
            Self::default()
        }
    }

    /// Live clusters (the owner's view).
    #[getter]
    fn clusters(&self) -> usize {
        self.inner.clusters()
    }

    /// Live clusters in ``view``.
    fn clusters_in(&self, view: i64) -> PyResult<usize> {
        Ok(self.inner.clusters_in(view_of(view)?))
    }

    /// Distinct signals held.
    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __contains__(&self, cluster: &Bound<'_, PyAny>) -> bool {
        cluster
            .extract::<&str>()
            .is_ok_and(|c| self.inner.contains(c))
    }

    /// Whether ``cluster`` lives in ``view``.
    #[pyo3(signature = (cluster, view = 0))]
    fn contains(&self, cluster: &str, view: i64) -> PyResult<bool> {
        Ok(self.inner.contains_in(cluster, view_of(view)?))
    }

    /// Bytes of the PDQ index's arrays.
    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.nbytes()
    }

    /// The signals ``cluster`` holds, in the order it took them.
    #[pyo3(signature = (cluster, view = 0))]
    fn held(&self, cluster: &str, view: i64) -> PyResult<Vec<String>> {
        Ok(texts(self.inner.held_in(cluster, view_of(view)?)))
    }

    /// The clusters holding ``text``, by id.
    #[pyo3(signature = (text, view = 0))]
    fn holders(&self, text: &str, view: i64) -> PyResult<Vec<String>> {
        Ok(texts(self.inner.holders_in(text, view_of(view)?)))
    }

    /// ``cluster`` holds these ``(kind, text)`` signals: the texts it did not hold yet, and
    /// of those the ones no cluster held. A PDQ text that is not 64 hex digits raises
    /// ``ValueError`` before anything changes.
    #[pyo3(signature = (cluster, signals, view = 0))]
    fn add(
        &mut self,
        cluster: &str,
        signals: Vec<(String, String)>,
        view: i64,
    ) -> PyResult<(Vec<String>, Vec<String>)> {
        let view = view_of(view)?;
        let signals: Vec<(Kind, &str)> = signals
            .iter()
            .map(|(k, t)| (Kind::of(k), t.as_str()))
            .collect();
        let (new, first) = self
            .inner
            .add_in(cluster, &signals, view)
            .map_err(|e| PyValueError::new_err(e.0))?;
        Ok((texts(new), texts(first)))
    }

    /// Forget a cluster: the signals no cluster holds now, or ``None`` if it held nothing.
    #[pyo3(signature = (cluster, view = 0))]
    fn drop(&mut self, cluster: &str, view: i64) -> PyResult<Option<Vec<String>>> {
        Ok(self
            .inner
            .drop_cluster_in(cluster, view_of(view)?)
            .map(texts))
    }

    /// Clusters holding the signal (MD5: equal; PDQ: within ``threshold``), nearest
    /// first, ties by cluster id, each once at its nearest; other kinds: none.
    #[pyo3(signature = (kind, text, threshold, view = 0))]
    fn near(
        &self,
        kind: &str,
        text: &str,
        threshold: i64,
        view: i64,
    ) -> PyResult<Vec<(String, u32)>> {
        let view = view_of(view)?;
        let threshold = u32::try_from(threshold)
            .ok()
            .filter(|&t| t <= 256)
            .ok_or_else(|| {
                PyValueError::new_err(format!("threshold must be 0..256, not {threshold}"))
            })?;
        Ok(self
            .inner
            .near_in(Kind::of(kind), text, threshold, view)
            .into_iter()
            .map(|(c, d)| (c.to_string(), d))
            .collect())
    }
}
