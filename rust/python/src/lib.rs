//! `streams._core`: the PyO3 face of `viralwatch-core`. Each function takes a
//! batch of raw records and gives back what Python must act on; no single
//! event crosses the boundary on its own.
//!
//! Nothing here panics on input: every line gives a result or a rejection,
//! and a Python exception raised by a callback becomes a rejection's detail.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

use viralwatch_core::event::{self, Event, Judge, Parsed};

/// The compiled core's version, so Python can tell which build it imported.
#[pyfunction]
fn version() -> &'static str {
    viralwatch_core::VERSION
}

/// Python's answers to what the core leaves to it (see `viralwatch_core::event::Judge`).
struct PyJudge<'a, 'py> {
    parse_ts: &'a Bound<'py, PyAny>,
}

impl Judge for PyJudge<'_, '_> {
    fn is_printable(&mut self, text: &str) -> bool {
        let s = PyString::new(self.parse_ts.py(), text);
        s.call_method0("isprintable")
            .and_then(|r| r.extract::<bool>())
            .unwrap_or(false)
    }

    fn parse_ts_text(&mut self, text: &str) -> Result<i64, String> {
        match self.parse_ts.call1((text,)) {
            Ok(ms) => ms
                .extract::<i64>()
                .map_err(|_| "ts is not epoch milliseconds".to_owned()),
            Err(err) => Err(err
                .value(self.parse_ts.py())
                .str()
                .map_or_else(|_| "ts is not RFC 3339".to_owned(), |s| s.to_string())),
        }
    }
}

fn event_tuple<'py>(py: Python<'py>, ev: Event<'_>) -> PyResult<Bound<'py, PyTuple>> {
    let content = match ev.content {
        None => py.None().into_bound(py),
        Some(c) => {
            let named = ev.event_id_was_text.then_some(ev.event_id.as_ref());
            (c.pdq, c.pdq_quality, c.md5, c.vpdq, named)
                .into_pyobject(py)?
                .into_any()
        }
    };
    (
        ev.event_id.as_ref(),
        ev.kind.as_str(),
        ev.ts_ms,
        ev.post_id.as_ref(),
        ev.user_id.as_ref(),
        ev.parent_post_id.as_deref(),
        ev.followers,
        content,
    )
        .into_pyobject(py)
}

fn result_tuple<'py>(py: Python<'py>, parsed: Parsed<'_>) -> PyResult<Bound<'py, PyTuple>> {
    match parsed {
        Ok(ev) => event_tuple(py, ev),
        Err(r) => (r.reason, r.detail, r.event_id.as_deref()).into_pyobject(py),
    }
}

/// Parse and validate a batch of input lines (``bytes``), in order.
///
/// Each line gives an event, ``(event_id, type, ts_ms, post_id, user_id,
/// parent_post_id, followers, content)`` with ``content`` ``None`` or ``(pdq,
/// pdq_quality, md5, vpdq_json, event_id as a rejection names it)``, or a
/// rejection, ``(reason, detail, event_id)``. ``parse_ts`` reads the timestamps that are not plain RFC 3339
/// (``streams.events.parse_ts``).
#[pyfunction]
fn parse_events<'py>(
    py: Python<'py>,
    lines: &Bound<'py, PyAny>,
    parse_ts: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyList>> {
    let mut judge = PyJudge { parse_ts };
    let out = PyList::empty(py);
    for item in lines.try_iter()? {
        let item = item?;
        let Ok(line) = item.cast::<PyBytes>() else {
            return Err(PyTypeError::new_err("parse_events takes bytes lines"));
        };
        let parsed = event::parse_line(line.as_bytes(), &mut judge);
        out.append(result_tuple(py, parsed)?)?;
    }
    Ok(out)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add_function(wrap_pyfunction!(parse_events, m)?)?;
    m.add("MAX_EVENT_BYTES", event::MAX_EVENT_BYTES)?;
    m.add("MAX_ID_LEN", event::MAX_ID_LEN)?;
    m.add("TS_MIN_MS", event::TS_MIN_MS)?;
    m.add("TS_MAX_MS", event::TS_MAX_MS)?;
    Ok(())
}
