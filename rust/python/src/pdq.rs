//! `streams._core.PdqIndex`: the exact PDQ index (`viralwatch_core::pdq`) for
//! Python, with batch methods. Hashes cross as hex strings (either case in,
//! lowercase out); a string that is not 64 hex digits is a `ValueError`
//! naming its position, never a panic.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString, PyTuple};

use viralwatch_core::pdq::{self, Hash};

/// The hash of `text`, or the `ValueError` for the `n`-th hash of a batch.
fn parse(n: usize, text: &Bound<'_, PyAny>) -> PyResult<Hash> {
    let s = text.cast::<PyString>()?;
    let s = s.to_str()?;
    if s.chars().count() != 64 {
        return Err(PyValueError::new_err(format!(
            "PDQ hash {n}: 64 hex digits expected, not {}",
            s.chars().count()
        )));
    }
    pdq::parse_hex(s.as_bytes()).ok_or_else(|| {
        let shown = text.repr().map_or_else(|_| s.to_owned(), |r| r.to_string());
        PyValueError::new_err(format!("PDQ hash {n}: not hexadecimal: {shown}"))
    })
}

/// Every hash of an iterable of strings, or the first one's error.
fn parse_all(hashes: &Bound<'_, PyAny>) -> PyResult<Vec<Hash>> {
    let mut out = Vec::new();
    for (n, item) in hashes.try_iter()?.enumerate() {
        out.push(parse(n, &item?)?);
    }
    Ok(out)
}

fn check_threshold(threshold: i64) -> PyResult<u32> {
    u32::try_from(threshold)
        .ok()
        .filter(|&t| t <= 256)
        .ok_or_else(|| PyValueError::new_err(format!("threshold must be 0..256, not {threshold}")))
}

/// Distinct PDQ hashes, searchable by Hamming distance with the answer of a full scan.
///
/// Each hash may carry an integer tag (-1 when none is given), found by
/// `search_tags` and `tags_of`. `tail_min`: hashes added since the last merge
/// that are scanned rather than looked up, at least (a test's knob).
#[pyclass(module = "streams._core", name = "PdqIndex")]
pub struct PyPdqIndex {
    pub(crate) inner: pdq::PdqIndex,
}

#[pymethods]
impl PyPdqIndex {
    #[new]
    #[pyo3(signature = (hashes = None, *, tail_min = pdq::TAIL_MIN_DEFAULT))]
    fn new(hashes: Option<&Bound<'_, PyAny>>, tail_min: usize) -> PyResult<Self> {
        let mut inner = pdq::PdqIndex::new(tail_min);
        if let Some(hashes) = hashes {
            inner.insert_many(parse_all(hashes)?.into_iter().map(|h| (h, -1)));
        }
        Ok(PyPdqIndex { inner })
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __contains__(&self, pdq: &Bound<'_, PyAny>) -> bool {
        parse(0, pdq).is_ok_and(|h| self.inner.contains(&h))
    }

    /// Bytes held by the index's arrays.
    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.nbytes()
    }

    /// Add one hash; ``False`` when it is there already.
    fn add(&mut self, pdq: &Bound<'_, PyAny>) -> PyResult<bool> {
        Ok(self.inner.insert(parse(0, pdq)?, -1))
    }

    /// Add hashes (present ones and repeats are skipped, keeping their tag); the number
    /// added. ``tags``, one per hash, go with the hashes added. All or nothing: a bad
    /// hash raises ``ValueError`` before any is added.
    #[pyo3(signature = (hashes, tags = None))]
    fn add_many(&mut self, hashes: &Bound<'_, PyAny>, tags: Option<Vec<i64>>) -> PyResult<usize> {
        let hashes = parse_all(hashes)?;
        if let Some(tags) = &tags {
            if tags.len() != hashes.len() {
                return Err(PyValueError::new_err(format!(
                    "{} tags for {} hashes",
                    tags.len(),
                    hashes.len()
                )));
            }
        }
        let tags = tags.unwrap_or_else(|| vec![-1; hashes.len()]);
        Ok(self.inner.insert_many(hashes.into_iter().zip(tags)))
    }

    /// Remove a hash at once; ``False`` (and no harm) when it is not there or not a hash.
    fn remove(&mut self, pdq: &Bound<'_, PyAny>) -> bool {
        parse(0, pdq).is_ok_and(|h| self.inner.remove(&h))
    }

    /// Every hash within ``threshold`` of ``pdq`` as ``(hex, distance)``, nearest first,
    /// ties in hex order.
    #[pyo3(signature = (pdq, threshold = 31))]
    fn search<'py>(
        &self,
        py: Python<'py>,
        pdq: &Bound<'py, PyAny>,
        threshold: i64,
    ) -> PyResult<Bound<'py, PyList>> {
        let threshold = check_threshold(threshold)?;
        let out = PyList::empty(py);
        let mut err = Ok(());
        self.inner
            .search_with(&[parse(0, pdq)?], threshold, |_, d, h, _| {
                if err.is_ok() {
                    err = found(py, d, h).and_then(|t| out.append(t));
                }
            });
        err.map(|()| out)
    }

    /// :meth:`search` for many queries at once: a list per query.
    #[pyo3(signature = (queries, threshold = 31))]
    fn search_many<'py>(
        &self,
        py: Python<'py>,
        queries: &Bound<'py, PyAny>,
        threshold: i64,
    ) -> PyResult<Bound<'py, PyList>> {
        let threshold = check_threshold(threshold)?;
        let queries = parse_all(queries)?;
        let mut lists: Vec<Vec<Bound<'py, PyTuple>>> = vec![Vec::new(); queries.len()];
        let mut err = Ok(());
        self.inner.search_with(&queries, threshold, |i, d, h, _| {
            if err.is_ok() {
                match found(py, d, h) {
                    Ok(t) => lists[i].push(t),
                    Err(e) => err = Err(e),
                }
            }
        });
        err?;
        PyList::new(py, lists)
    }

    /// Every hash within ``threshold`` of each query, answered by its tag: three lists
    /// ``(query index, tag, distance)``, by query, each query's nearest first.
    fn search_tags(
        &self,
        queries: &Bound<'_, PyAny>,
        threshold: i64,
    ) -> PyResult<(Vec<usize>, Vec<i64>, Vec<u32>)> {
        let threshold = check_threshold(threshold)?;
        let queries = parse_all(queries)?;
        let (mut qi, mut tags, mut dist) = (Vec::new(), Vec::new(), Vec::new());
        self.inner.search_with(&queries, threshold, |i, d, _, t| {
            qi.push(i);
            tags.push(t);
            dist.push(d);
        });
        Ok((qi, tags, dist))
    }

    /// The tag of each hash, -2 for one not in the index.
    fn tags_of(&self, hashes: &Bound<'_, PyAny>) -> PyResult<Vec<i64>> {
        Ok(parse_all(hashes)?
            .iter()
            .map(|h| self.inner.tag_of(h).unwrap_or(-2))
            .collect())
    }
}

fn found<'py>(py: Python<'py>, d: u32, h: &Hash) -> PyResult<Bound<'py, PyTuple>> {
    (pdq::format_hex(h), d).into_pyobject(py)
}
