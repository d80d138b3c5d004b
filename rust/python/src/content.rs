//! `streams._core.ContentSignals`: live clusters' signals (`viralwatch_core::content`)
//! for `streams.emerging.ContentIndex`, which keeps the videos' part in Python.

use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use viralwatch_core::content::{ContentIndex, Kind};

pub(crate) fn texts(v: Vec<Arc<str>>) -> Vec<String> {
    v.iter().map(|t| t.to_string()).collect()
}

/// Live clusters' signals: which clusters hold each (an MD5's, a PDQ's hex, a video's
/// text), searchable by MD5 and by PDQ distance (see ``streams.emerging.ContentIndex``).
#[pyclass(module = "streams._core", name = "ContentSignals")]
#[derive(Default)]
pub struct PyContentSignals {
    pub(crate) inner: ContentIndex,
}

#[pymethods]
impl PyContentSignals {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    /// Live clusters.
    #[getter]
    fn clusters(&self) -> usize {
        self.inner.clusters()
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

    /// Bytes of the PDQ index's arrays.
    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.nbytes()
    }

    /// The signals ``cluster`` holds, in the order it took them.
    fn held(&self, cluster: &str) -> Vec<String> {
        texts(self.inner.held(cluster))
    }

    /// The clusters holding ``text``, by id.
    fn holders(&self, text: &str) -> Vec<String> {
        texts(self.inner.holders(text))
    }

    /// ``cluster`` holds these ``(kind, text)`` signals: the texts it did not hold yet, and
    /// of those the ones no cluster held. A PDQ text that is not 64 hex digits raises
    /// ``ValueError`` before anything changes.
    fn add(
        &mut self,
        cluster: &str,
        signals: Vec<(String, String)>,
    ) -> PyResult<(Vec<String>, Vec<String>)> {
        let signals: Vec<(Kind, &str)> = signals
            .iter()
            .map(|(k, t)| (Kind::of(k), t.as_str()))
            .collect();
        let (new, first) = self
            .inner
            .add(cluster, &signals)
            .map_err(|e| PyValueError::new_err(e.0))?;
        Ok((texts(new), texts(first)))
    }

    /// Forget a cluster: the signals no cluster holds now, or ``None`` if it held nothing.
    fn drop(&mut self, cluster: &str) -> Option<Vec<String>> {
        self.inner.drop_cluster(cluster).map(texts)
    }

    /// Clusters holding the signal (MD5: equal; PDQ: within ``threshold``), nearest
    /// first, ties by cluster id, each once at its nearest; other kinds: none.
    fn near(&self, kind: &str, text: &str, threshold: i64) -> PyResult<Vec<(String, u32)>> {
        let threshold = u32::try_from(threshold)
            .ok()
            .filter(|&t| t <= 256)
            .ok_or_else(|| {
                PyValueError::new_err(format!("threshold must be 0..256, not {threshold}"))
            })?;
        Ok(self
            .inner
            .near(Kind::of(kind), text, threshold)
            .into_iter()
            .map(|(c, d)| (c.to_string(), d))
            .collect())
    }
}
