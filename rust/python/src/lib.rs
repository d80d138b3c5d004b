//! `streams._core`: the PyO3 face of `viralwatch-core`. Each function takes a
//! batch of raw records and gives back what Python must act on; no single
//! event crosses the boundary on its own.
//!
//! Nothing here panics on input: every line gives a result or a rejection,
//! and a Python exception raised by a callback becomes a rejection's detail.

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple, PyType};
use pyo3::{ffi, intern, IntoPyObjectExt};

use viralwatch_core::blake2b::{blake2b, hex};
use viralwatch_core::event::{self, Event, Judge, Kind};

mod alloc;
mod batch;
mod content;
mod dedupe;
mod detect;
mod emerging;
mod ev;
mod fetched;
mod ingest;
mod pdq;
mod posts;
mod reorder;
mod replay;
mod resolve;
mod route;
mod routing;
mod unbanked;
mod wire;
mod wire_read;

#[global_allocator]
static HEAP: alloc::Counting = alloc::Counting;

/// The compiled core's version, so Python can tell which build it imported.
#[pyfunction]
fn version() -> &'static str {
    viralwatch_core::VERSION
}

/// Bytes the compiled core holds on its heap (Python's ``tracemalloc`` does not see them).
#[pyfunction]
fn allocated_bytes() -> usize {
    alloc::allocated()
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

/// `PyJudge` for a parse run with the GIL released (`Python::detach`): each question
/// attaches for its answer (a rare line's: an id outside printable ASCII, a timestamp that
/// is neither an integer nor RFC 3339), so the parse's common path runs with no Python and
/// another thread (the Kafka client's) may take the GIL meanwhile.
pub(crate) struct DetachedJudge<'a> {
    pub(crate) parse_ts: &'a Py<PyAny>,
}

impl Judge for DetachedJudge<'_> {
    fn is_printable(&mut self, text: &str) -> bool {
        Python::attach(|py| {
            PyJudge {
                parse_ts: self.parse_ts.bind(py),
            }
            .is_printable(text)
        })
    }

    fn parse_ts_text(&mut self, text: &str) -> Result<i64, String> {
        Python::attach(|py| {
            PyJudge {
                parse_ts: self.parse_ts.bind(py),
            }
            .parse_ts_text(text)
        })
    }
}

/// A long loop over a batch that reads Python objects throughout (a resolve partition's
/// routing) gives the GIL up for a moment every `TURN_EVERY` items: a thread waiting
/// for it (Faust's consumer, with a fetch's answer) asks for it after CPython's switch
/// interval (5 ms), and is let in at the next release (CPython's forced switch), where a
/// call that never released kept it waiting to its end (up to hundreds of ms from a
/// backlog). Uncontended, a release costs about a tenth of a microsecond.
pub(crate) struct Turns(u32);

const TURN_EVERY: u32 = 256;

impl Turns {
    pub(crate) fn new() -> Self {
        Self(0)
    }

    /// One item done: every `TURN_EVERY`th, the GIL released and taken again. The caller
    /// holds no Python borrow another thread could reach meanwhile (see its comment).
    pub(crate) fn tick(&mut self, py: Python<'_>) {
        self.0 += 1;
        if self.0 % TURN_EVERY == 0 {
            py.detach(|| ());
        }
    }
}

/// The record classes of `streams.events`, built here without their `__init__`.
struct Classes<'a, 'py> {
    share_event: &'a Bound<'py, PyType>,
    content: &'a Bound<'py, PyType>,
    rejection: &'a Bound<'py, PyType>,
}

/// `object.__setattr__(obj, name, value)`: how a frozen dataclass sets its own fields.
fn set_field(
    obj: &Bound<'_, PyAny>,
    name: &Bound<'_, PyString>,
    value: Bound<'_, PyAny>,
) -> PyResult<()> {
    // SAFETY: three live references held for the call; PyObject_GenericSetAttr borrows them
    // (it takes its own reference to `value`) and reports failure by its return value.
    let rc = unsafe { ffi::PyObject_GenericSetAttr(obj.as_ptr(), name.as_ptr(), value.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(PyErr::fetch(obj.py()))
    }
}

/// A new instance of a frozen dataclass with `fields` set, as its `__init__` would set them.
/// Every field, those with a default included: `__init__` is not run, and a field left out
/// is an empty slot (`tests/test_core_wire_read.py` checks the records read from the wire).
pub(crate) fn record<'py>(
    cls: &Bound<'py, PyType>,
    fields: &[(&Bound<'py, PyString>, Bound<'py, PyAny>)],
) -> PyResult<Bound<'py, PyAny>> {
    let py = cls.py();
    // SAFETY: PyType_GenericNew allocates an instance of `cls` (its tp_alloc, as
    // object.__new__ does) and returns a new reference, or NULL with an exception set.
    let obj = unsafe {
        Bound::from_owned_ptr_or_err(
            py,
            ffi::PyType_GenericNew(
                cls.as_type_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            ),
        )?
    };
    for (name, value) in fields {
        set_field(&obj, name, value.clone())?;
    }
    Ok(obj)
}

/// A takedown request (``streams.alerts.TakedownRequest``, `cls`) for `post_id` of
/// `cluster_id`, as ``TakedownRequest.for_post`` made it in Python: its ``action_id``
/// ``"td-"`` and the hex of the 10-byte BLAKE2b of ``f"{cluster_id}\x00{post_id}"``'s
/// UTF-8, every field set without ``__init__``. Why here: a banked cluster past its
/// takedown severity asks one a post (13,867 in the 300,000 events of a worker's
/// density), and the Python one cost about 15,000 instructions (the hash object, its hex,
/// the f-strings, six ``object.__setattr__`` through the dataclass's ``__init__``).
#[pyfunction]
fn takedown_request<'py>(
    cls: &Bound<'py, PyType>,
    cluster_id: &Bound<'py, PyString>,
    post_id: &Bound<'py, PyString>,
    ts_ms: Bound<'py, PyAny>,
    severity: Bound<'py, PyAny>,
    alert_id: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = cls.py();
    // a lone surrogate fails here as ``str.encode`` failed: UnicodeEncodeError
    let (cluster, post) = (cluster_id.to_str()?, post_id.to_str()?);
    let mut key = Vec::with_capacity(cluster.len() + 1 + post.len());
    key.extend_from_slice(cluster.as_bytes());
    key.push(0);
    key.extend_from_slice(post.as_bytes());
    let action_id = format!("td-{}", hex(&blake2b(&key, 10)));
    record(
        cls,
        &[
            (
                intern!(py, "action_id"),
                PyString::new(py, &action_id).into_any(),
            ),
            (intern!(py, "cluster_id"), cluster_id.clone().into_any()),
            (intern!(py, "post_id"), post_id.clone().into_any()),
            (intern!(py, "ts_ms"), ts_ms),
            (intern!(py, "severity"), severity),
            (intern!(py, "alert_id"), alert_id),
        ],
    )
}

/// `obj`, untracked by the cyclic garbage collector, as CPython untracks a tuple of atoms:
/// a frozen record of texts, numbers, bytes, `None` and records like it cannot be part of
/// a cycle. The parser makes one per input line; tracked, each young collection walked
/// them, and those held for the watermark were promoted to the old generations, whose
/// collections walked them again (a tenth of a replay's time was the collector's).
fn untracked(obj: Bound<'_, PyAny>) -> Bound<'_, PyAny> {
    // SAFETY: `obj` is a live object; `PyObject_GC_IsTracked` is 0 for one the collector
    // does not track (or whose type has no GC), and untracking one it does is allowed at
    // any time (its deallocation untracks again, harmlessly).
    unsafe {
        if ffi::PyObject_GC_IsTracked(obj.as_ptr()) != 0 {
            ffi::PyObject_GC_UnTrack(obj.as_ptr().cast());
        }
    }
    obj
}

fn text<'py>(py: Python<'py>, s: &str) -> Bound<'py, PyAny> {
    PyString::new(py, s).into_any()
}

fn opt<'py, T: IntoPyObjectExt<'py>>(py: Python<'py>, v: Option<T>) -> PyResult<Bound<'py, PyAny>> {
    match v {
        Some(v) => v.into_bound_py_any(py),
        None => Ok(py.None().into_bound(py)),
    }
}

fn kind<'py>(py: Python<'py>, kind: Kind) -> Bound<'py, PyAny> {
    match kind {
        Kind::Upload => intern!(py, "upload"),
        Kind::Share => intern!(py, "share"),
        Kind::Takedown => intern!(py, "takedown"),
    }
    .clone()
    .into_any()
}

/// A `ShareEvent`, or (a video's upload, whose frames Python reads) the event's tuple.
pub(crate) fn event_record<'py>(
    py: Python<'py>,
    ev: &Event<'_>,
    classes: &Classes<'_, 'py>,
) -> PyResult<Bound<'py, PyAny>> {
    let content = match &ev.content {
        None => py.None().into_bound(py),
        Some(c) if c.vpdq.is_some() => {
            let named = ev.event_id_was_text.then_some(ev.event_id.as_ref());
            let hashes = (
                c.pdq.as_deref(),
                c.pdq_quality,
                c.md5.as_deref(),
                c.vpdq,
                named,
            )
                .into_pyobject(py)?;
            let tuple = (
                ev.event_id.as_ref(),
                ev.kind.as_str(),
                ev.ts_ms,
                ev.post_id.as_ref(),
                ev.user_id.as_ref(),
                ev.parent_post_id.as_deref(),
                ev.followers,
                hashes,
            );
            return Ok(tuple.into_pyobject(py)?.into_any());
        }
        Some(c) => untracked(record(
            classes.content,
            &[
                (intern!(py, "pdq"), opt(py, c.pdq.as_deref())?),
                (intern!(py, "pdq_quality"), opt(py, c.pdq_quality)?),
                (intern!(py, "md5"), opt(py, c.md5.as_deref())?),
                (intern!(py, "vpdq"), py.None().into_bound(py)),
            ],
        )?),
    };
    // every field an atom or the untracked content above
    record(
        classes.share_event,
        &[
            (intern!(py, "event_id"), text(py, &ev.event_id)),
            (intern!(py, "type"), kind(py, ev.kind)),
            (intern!(py, "ts_ms"), ev.ts_ms.into_bound_py_any(py)?),
            (intern!(py, "post_id"), text(py, &ev.post_id)),
            (intern!(py, "user_id"), text(py, &ev.user_id)),
            (
                intern!(py, "parent_post_id"),
                opt(py, ev.parent_post_id.as_deref())?,
            ),
            (intern!(py, "followers"), opt(py, ev.followers)?),
            (intern!(py, "content"), content),
        ],
    )
    .map(untracked)
}

/// A `Rejection` keeping at most `MAX_EVENT_BYTES` of its line (the line itself when shorter).
pub(crate) fn rejection_record<'py>(
    line: &Bound<'py, PyBytes>,
    r: event::Reject<'_>,
    classes: &Classes<'_, 'py>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = line.py();
    let data = line.as_bytes();
    let raw = if data.len() <= event::MAX_EVENT_BYTES {
        line.clone()
    } else {
        PyBytes::new(py, &data[..event::MAX_EVENT_BYTES])
    };
    record(
        classes.rejection,
        &[
            (
                intern!(py, "reason"),
                PyString::intern(py, r.reason).into_any(),
            ),
            (intern!(py, "detail"), text(py, &r.detail)),
            (intern!(py, "raw"), raw.into_any()),
            (intern!(py, "event_id"), opt(py, r.event_id.as_deref())?),
        ],
    )
    .map(untracked)
}

/// An input line as ``bytes`` (``bytes(line)`` when it is not).
pub(crate) fn line_bytes(item: Bound<'_, PyAny>) -> PyResult<Bound<'_, PyBytes>> {
    match item.cast_into::<PyBytes>() {
        Ok(line) => Ok(line),
        Err(other) => {
            let other = other.into_inner();
            let py = other.py();
            py.get_type::<PyBytes>()
                .call1((other,))?
                .cast_into::<PyBytes>()
                .map_err(Into::into)
        }
    }
}

/// Parse and validate a batch of input lines (``bytes``), in order.
///
/// Each line gives a ``share_event`` (its ``content`` a ``content``) or a
/// ``rejection`` (keeping at most ``MAX_EVENT_BYTES`` of the line), built here
/// as the frozen dataclasses' ``__init__`` would build them; or, for a video's
/// upload, whose frames Python reads, the event as a tuple ``(event_id, type,
/// ts_ms, post_id, user_id, parent_post_id, followers, (pdq, pdq_quality, md5,
/// vpdq_json, event_id as a rejection names it))``. Returns the records and
/// the indices of those tuples. A line that is not ``bytes`` is read as
/// ``bytes(line)``. ``parse_ts`` reads the timestamps that are not plain RFC
/// 3339 (``streams.events.parse_ts``).
#[pyfunction]
fn parse_events<'py>(
    py: Python<'py>,
    lines: &Bound<'py, PyAny>,
    parse_ts: &Bound<'py, PyAny>,
    share_event: &Bound<'py, PyType>,
    content: &Bound<'py, PyType>,
    rejection: &Bound<'py, PyType>,
) -> PyResult<(Bound<'py, PyList>, Vec<usize>)> {
    let mut judge = PyJudge { parse_ts };
    let classes = Classes {
        share_event,
        content,
        rejection,
    };
    let out = PyList::empty(py);
    let mut videos = Vec::new();
    for (i, item) in lines.try_iter()?.enumerate() {
        let line = line_bytes(item?)?;
        let record = match event::parse_line(line.as_bytes(), &mut judge) {
            Ok(ev) => event_record(py, &ev, &classes)?,
            Err(r) => rejection_record(&line, r, &classes)?,
        };
        if record.is_instance_of::<PyTuple>() {
            videos.push(i);
        }
        out.append(record)?;
    }
    Ok((out, videos))
}

/// The indices of the lines of ``lines`` that are bank updates (``"op"``, no
/// ``"event_id"``: ``streams.pipeline.is_bank_update``), in order. Replay asks it of each
/// batch: most hold none, and the batch then goes to the compiled loop whole. A line that
/// is not ``bytes`` is read as ``bytes(line)``.
#[pyfunction]
fn bank_updates(lines: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
    let mut out = Vec::new();
    for (i, item) in lines.try_iter()?.enumerate() {
        if event::is_bank_update(line_bytes(item?)?.as_bytes()) {
            out.push(i);
        }
    }
    Ok(out)
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add_function(wrap_pyfunction!(parse_events, m)?)?;
    m.add_function(wrap_pyfunction!(bank_updates, m)?)?;
    m.add_function(wrap_pyfunction!(takedown_request, m)?)?;
    m.add_function(wrap_pyfunction!(ev::set_event_types, m)?)?;
    m.add_function(wrap_pyfunction!(ingest::ingest_lines, m)?)?;
    m.add_function(wrap_pyfunction!(ingest::ingest_records, m)?)?;
    m.add_function(wrap_pyfunction!(fetched::read_fetched, m)?)?;
    m.add_function(wrap_pyfunction!(fetched::record_batch_at, m)?)?;
    m.add_class::<fetched::FetchedRecords>()?;
    m.add_class::<fetched::RecordRun>()?;
    m.add_class::<fetched::FetchedRecord>()?;
    m.add_class::<ev::EvBatch>()?;
    m.add_class::<ev::RegBatch>()?;
    m.add_class::<pdq::PyPdqIndex>()?;
    m.add_class::<routing::TextSet>()?;
    m.add_class::<content::PyContentSignals>()?;
    m.add_class::<emerging::PyIdleClusters>()?;
    m.add_function(wrap_pyfunction!(emerging::unbanked_id, m)?)?;
    m.add(
        "PDQ_MAX_INDEXED_THRESHOLD",
        viralwatch_core::pdq::MAX_INDEXED_THRESHOLD,
    )?;
    m.add_function(wrap_pyfunction!(allocated_bytes, m)?)?;
    m.add_class::<dedupe::EventIds>()?;
    m.add_class::<reorder::ReorderBuffer>()?;
    m.add_class::<batch::RecordBatchBuilder>()?;
    m.add_class::<batch::RecordAppended>()?;
    m.add_class::<posts::PyPostRoutes>()?;
    m.add_class::<wire::WireWriter>()?;
    m.add_class::<wire_read::WireReader>()?;
    m.add_class::<unbanked::UnbankedClusters>()?;
    m.add_class::<replay::ReplayLoop>()?;
    m.add_class::<resolve::ResolveLoop>()?;
    m.add_function(wrap_pyfunction!(detect::evict_unbanked, m)?)?;
    m.add_function(wrap_pyfunction!(detect::unmatched_kinds, m)?)?;
    m.add_class::<detect::ClusterLoop>()?;
    m.add_class::<detect::ForgetSink>()?;
    m.add_class::<detect::ClusterIds>()?;
    m.add("MAX_EVENT_BYTES", event::MAX_EVENT_BYTES)?;
    m.add("MAX_ID_LEN", event::MAX_ID_LEN)?;
    m.add("TS_MIN_MS", event::TS_MIN_MS)?;
    m.add("TS_MAX_MS", event::TS_MAX_MS)?;
    Ok(())
}
