//! An event as the compiled loops hold it: the parser's own record (`Ev::Core`), kept in
//! Rust from the input line to the unbanked store, or a Python `ShareEvent` that Python
//! made (`Ev::Py`: a record handed over in-process, a video's upload, whose frames Python
//! reads, a test's event). Every loop reads both the same way (`with_event`, `image`,
//! `ts_ms`), and a Python `ShareEvent` is made of a compiled event only where Python acts
//! on it (`to_py`: a banked cluster's event, an upload a bank may match, a rejection's
//! event, a held orphan given back).
//!
//! Why: the parser made a Python `ShareEvent` (five strings, a `Content` record) of every
//! line, and the loops read its attributes back one `getattr` at a time; most events are
//! of unbanked clusters, where Python never looks at them.

use std::borrow::Cow;
use std::sync::Arc;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyList, PyString, PyType};
use pyo3::{intern, PyTraverseError, PyVisit};

use viralwatch_core::event::{self, Compact, Kind as EventKind};
use viralwatch_core::pdq;
use viralwatch_core::unbanked::{Event as StoreEvent, Kind};

use crate::unbanked::{kind_of, with_event as with_py_event};
use crate::{event_record, line_bytes, rejection_record, Classes, DetachedJudge};

/// What `streams.events` gives the core once, at import (`_core.set_event_types`): its
/// record classes, its reader of timestamps the core leaves to it, and its reader of a
/// video's frames.
struct EventTypes {
    share_event: Py<PyType>,
    content: Py<PyType>,
    rejection: Py<PyType>,
    parse_ts: Py<PyAny>,
    video: Py<PyAny>,
}

static TYPES: PyOnceLock<EventTypes> = PyOnceLock::new();

fn types(py: Python<'_>) -> PyResult<&EventTypes> {
    TYPES
        .get(py)
        .ok_or_else(|| PyRuntimeError::new_err("streams.events has not given its event types"))
}

/// ``streams.events`` gives its ``ShareEvent``, ``Content`` and ``Rejection`` classes,
/// ``parse_ts`` and ``_video`` (a video upload's tuple and line -> its record): what the
/// core makes Python records of events with. Given once; later calls change nothing.
#[pyfunction]
pub fn set_event_types(
    py: Python<'_>,
    share_event: Py<PyType>,
    content: Py<PyType>,
    rejection: Py<PyType>,
    parse_ts: Py<PyAny>,
    video: Py<PyAny>,
) {
    let _ = TYPES.set(
        py,
        EventTypes {
            share_event,
            content,
            rejection,
            parse_ts,
            video,
        },
    );
}

/// An event held by a compiled loop (see the module doc).
pub(crate) enum Ev {
    Core(Arc<Compact>),
    Py(Py<PyAny>),
}

/// An upload's hashes as the loops read them (``None`` where absent); ``odd``: a field
/// Python set to something other than text (Python decides about such an upload).
/// ``pdq_hash``, ``md5_bytes``: the hashes' values where the parser read them (a
/// compiled event's: their texts are not read again); ``lower``: the texts are lowercase
/// already (the parser's).
#[derive(Default)]
pub(crate) struct Image<'a> {
    pub(crate) md5: Option<Cow<'a, str>>,
    pub(crate) pdq: Option<Cow<'a, str>>,
    pub(crate) pdq_hash: Option<&'a pdq::Hash>,
    pub(crate) md5_bytes: Option<&'a [u8; 16]>,
    pub(crate) lower: bool,
    pub(crate) quality: Option<i64>,
    pub(crate) video: bool,
    pub(crate) odd: bool,
}

fn store_kind(kind: EventKind) -> Kind {
    match kind {
        EventKind::Upload => Kind::Upload,
        EventKind::Share => Kind::Share,
        EventKind::Takedown => Kind::Takedown,
    }
}

fn py_text<'a>(v: &Bound<'_, PyAny>, odd: &mut bool) -> PyResult<Option<Cow<'a, str>>> {
    if v.is_none() {
        return Ok(None);
    }
    match v.cast::<PyString>() {
        Ok(s) => Ok(Some(Cow::Owned(s.to_cow()?.into_owned()))),
        Err(_) => {
            *odd = true;
            Ok(None)
        }
    }
}

impl Ev {
    pub(crate) fn from_py(event: &Bound<'_, PyAny>) -> Self {
        Self::Py(event.clone().unbind())
    }

    pub(crate) fn clone_ref(&self, py: Python<'_>) -> Self {
        match self {
            Self::Core(ev) => Self::Core(Arc::clone(ev)),
            Self::Py(ev) => Self::Py(ev.clone_ref(py)),
        }
    }

    pub(crate) fn ts_ms(&self, py: Python<'_>) -> PyResult<i64> {
        match self {
            Self::Core(ev) => Ok(ev.ts_ms()),
            Self::Py(ev) => ev.bind(py).getattr(intern!(py, "ts_ms"))?.extract(),
        }
    }

    pub(crate) fn kind(&self, py: Python<'_>) -> PyResult<Kind> {
        match self {
            Self::Core(ev) => Ok(store_kind(ev.kind())),
            Self::Py(ev) => kind_of(&ev.bind(py).getattr(intern!(py, "type"))?),
        }
    }

    /// `f` of the event's fields as the unbanked store reads them (`ts_ms` its time).
    pub(crate) fn with_event<R>(
        &self,
        py: Python<'_>,
        ts_ms: i64,
        f: impl FnOnce(&StoreEvent<'_>) -> R,
    ) -> PyResult<R> {
        match self {
            Self::Core(ev) => Ok(f(&StoreEvent {
                event_id: ev.event_id().as_bytes(),
                kind: store_kind(ev.kind()),
                ts_ms,
                post: ev.post_id().as_bytes(),
                user: ev.user_id().as_bytes(),
                parent: ev.parent_post_id().map(str::as_bytes),
            })),
            Self::Py(ev) => with_py_event(ev.bind(py), ts_ms, f),
        }
    }

    /// `f` of the event id's bytes (UTF-8; ``surrogatepass``'s for a lone surrogate).
    pub(crate) fn with_id<R>(&self, py: Python<'_>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
        match self {
            Self::Core(ev) => Ok(f(ev.event_id().as_bytes())),
            Self::Py(ev) => {
                let eid = ev.bind(py).getattr(intern!(py, "event_id"))?;
                crate::dedupe::with_id(&eid, f)
            }
        }
    }

    /// `f` of the post id's bytes, and of its target's (a share's parent, a takedown's
    /// own post), as `with_id`.
    pub(crate) fn with_posts<R>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&[u8], &[u8]) -> R,
    ) -> PyResult<R> {
        match self {
            Self::Core(ev) => Ok(f(ev.post_id().as_bytes(), ev.target_post_id().as_bytes())),
            Self::Py(ev) => {
                let ev = ev.bind(py);
                let post = ev.getattr(intern!(py, "post_id"))?;
                let share = kind_of(&ev.getattr(intern!(py, "type"))?)? == Kind::Share;
                let target = if share {
                    ev.getattr(intern!(py, "parent_post_id"))?
                } else {
                    post.clone()
                };
                crate::dedupe::with_id(&target, |t| crate::dedupe::with_id(&post, |p| f(p, t)))?
            }
        }
    }

    /// The upload's hashes (``None``: the event carries no content).
    pub(crate) fn image(&self, py: Python<'_>) -> PyResult<Option<Image<'_>>> {
        match self {
            Self::Core(ev) => Ok((ev.has_content()).then(|| Image {
                md5: ev.md5().map(Cow::Borrowed),
                pdq: ev.pdq().map(Cow::Borrowed),
                pdq_hash: ev.pdq_hash(),
                md5_bytes: ev.md5_bytes(),
                lower: true,
                quality: ev.pdq_quality(),
                video: false,
                odd: false,
            })),
            Self::Py(ev) => {
                let content = ev.bind(py).getattr(intern!(py, "content"))?;
                if content.is_none() {
                    return Ok(None);
                }
                let mut odd = false;
                let md5 = py_text(&content.getattr(intern!(py, "md5"))?, &mut odd)?;
                let pdq = py_text(&content.getattr(intern!(py, "pdq"))?, &mut odd)?;
                let quality = content.getattr(intern!(py, "pdq_quality"))?;
                let quality = if quality.is_none() {
                    None
                } else {
                    Some(quality.extract::<i64>()?)
                };
                let video = !content.getattr(intern!(py, "vpdq"))?.is_none();
                Ok(Some(Image {
                    md5,
                    pdq,
                    pdq_hash: None,
                    md5_bytes: None,
                    lower: false,
                    quality,
                    video,
                    odd,
                }))
            }
        }
    }

    /// The event as Python's ``ShareEvent`` (made now for a compiled one).
    pub(crate) fn to_py<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        match self {
            Self::Core(ev) => {
                let t = types(py)?;
                let classes = Classes {
                    share_event: t.share_event.bind(py),
                    content: t.content.bind(py),
                    rejection: t.rejection.bind(py),
                };
                event_record(py, &ev.event(), &classes)
            }
            Self::Py(ev) => Ok(ev.bind(py).clone()),
        }
    }

    pub(crate) fn into_py(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match self {
            Self::Py(ev) => Ok(ev),
            core => core.to_py(py).map(Bound::unbind),
        }
    }

    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Self::Core(_) => Ok(()),
            Self::Py(ev) => visit.call(ev),
        }
    }
}

/// One line of a batch the loop parses itself: an event, or Python's ``Rejection``.
pub(crate) enum Line {
    Event(Ev),
    Rejected(Py<PyAny>),
}

/// Parse and validate a batch of input lines (``bytes``) into the loop's events, as
/// ``streams.events.parse_events`` reads them (the same parser; a video's upload made
/// Python's record by ``streams.events._video``, which reads its frames).
///
/// The parse runs with the GIL released (`Python::detach`): a batch of a few thousand
/// lines is milliseconds of pure work, during which the worker's other thread (Faust's
/// consumer, aiokafka's fetches) could not run. Safe: each line is a `bytes` object,
/// immutable, held by `held` (a strong reference each) until the parse is done, so the
/// slices the parse reads stay valid whatever another thread does to ``lines``; the
/// parse reads no Python object but through `DetachedJudge`, which attaches; what it
/// gives (compact events, a video's borrowed event, rejections) is Rust's, made Python's
/// records after, with the GIL.
pub(crate) fn parse_lines(py: Python<'_>, lines: &Bound<'_, PyList>) -> PyResult<Vec<Line>> {
    let held = lines
        .iter()
        .map(line_bytes)
        .collect::<PyResult<Vec<Bound<'_, PyBytes>>>>()?;
    let data: Vec<&[u8]> = held.iter().map(|line| line.as_bytes()).collect();
    parse_data(py, &data, |i| Ok(held[i].clone()))
}

/// Parse and validate `data`, lines lying in Python objects that stay alive and unchanged
/// (``bytes``: immutable) for the call, with the GIL released as :func:`parse_lines` does;
/// `line(i)`: line `i` as ``bytes``, asked only of a rejected line or a video's upload
/// (Python's records hold it). The ``shares`` reader's records are parsed where they
/// lie in the fetched bytes this way, a ``bytes`` made only for those
/// (`crate::ingest::ingest_records`).
pub(crate) fn parse_data<'py>(
    py: Python<'py>,
    data: &[&[u8]],
    line: impl Fn(usize) -> PyResult<Bound<'py, PyBytes>>,
) -> PyResult<Vec<Line>> {
    let t = types(py)?;
    let parse_ts = &t.parse_ts;
    let parsed: Vec<Parsed<'_>> = py.detach(|| {
        let mut judge = DetachedJudge { parse_ts };
        data.iter()
            .map(|line| {
                // the event read where the parse left it: moved out of its result first
                // (`Ok(ev) =>`), its 272 bytes were a `memcpy` call a line, 52 instructions
                // (callgrind, a worker's ingest)
                let parsed = event::parse_line(line, &mut judge);
                if let Ok(ev) = &parsed {
                    if let Some(compact) = Compact::of(ev) {
                        if ev.owns_nothing() {
                            std::mem::forget(parsed); // its drop frees nothing
                        }
                        return Parsed::Compact(Arc::new(compact));
                    }
                }
                match parsed {
                    Ok(ev) => Parsed::Video(Box::new(ev)),
                    Err(r) => Parsed::Rejected(r),
                }
            })
            .collect()
    });
    let classes = Classes {
        share_event: t.share_event.bind(py),
        content: t.content.bind(py),
        rejection: t.rejection.bind(py),
    };
    let mut out = Vec::with_capacity(parsed.len());
    for (i, parsed) in parsed.into_iter().enumerate() {
        out.push(match parsed {
            Parsed::Compact(compact) => Line::Event(Ev::Core(compact)),
            Parsed::Video(ev) => {
                // a video's upload: its frames read by Python
                let tuple = event_record(py, &ev, &classes)?;
                let record = t.video.bind(py).call1((tuple, line(i)?))?;
                if record.get_type().is(classes.rejection) {
                    Line::Rejected(record.unbind())
                } else {
                    Line::Event(Ev::Py(record.unbind()))
                }
            }
            Parsed::Rejected(r) => {
                Line::Rejected(rejection_record(&line(i)?, r, &classes)?.unbind())
            }
        });
    }
    Ok(out)
}

/// A line as the parse left it, before Python's records are made of it.
enum Parsed<'a> {
    Compact(Arc<Compact>),
    /// a video's upload (its frames are Python's to read), borrowing its line
    Video(Box<event::Event<'a>>),
    Rejected(event::Reject<'a>),
}

/// A batch of events crossing Python as one item of an envelope: events to route (each as
/// a ``ToRoute`` would carry it: ingest's, for a resolve partition), unbanked uploads for
/// the index's owner (each as an ``Unbanked`` would carry it: a resolve partition's), or
/// routed events (as a ``Routed`` with no match: a resolve partition's, for a clusters
/// partition), in order.
/// Ingest makes them and resolve's loop reads them; resolve's loop makes the routed ones
/// and the clusters partition's loop reads them; the wire writer writes each event in
/// its item's wire form (``["s", event]``, ``["u", event]``, ``["e", event, cluster,
/// null]``), so a batch
/// sent through Kafka, or logged, is the bytes its records would have been.
///
/// Why: a worker that holds the partitions of the next stage hands its envelopes over
/// in-process, and there each event was a Python ``ShareEvent`` in a ``ToRoute`` or
/// ``Routed`` record, made and read back attribute by attribute at every stage, though
/// most are events of unbanked clusters that Python never looks at. Python sees the
/// batch (its length; :meth:`records`, its records made, for what reads them one by one:
/// a test, an item with no place where it came).
#[pyclass(module = "streams._core", frozen)]
pub struct EvBatch {
    pub(crate) events: Vec<Ev>,
    /// each event's cluster (routed events), or ``None`` (events to route, unbanked uploads)
    pub(crate) clusters: Option<Vec<Py<PyString>>>,
    /// unbanked uploads for the index's owner (no cluster)
    pub(crate) for_index: bool,
}

impl EvBatch {
    pub(crate) fn to_route(events: Vec<Ev>) -> Self {
        Self {
            events,
            clusters: None,
            for_index: false,
        }
    }

    pub(crate) fn unbanked(events: Vec<Ev>) -> Self {
        Self {
            events,
            clusters: None,
            for_index: true,
        }
    }

    pub(crate) fn routed(events: Vec<(Ev, Py<PyString>)>) -> Self {
        let (events, clusters) = events.into_iter().unzip();
        Self {
            events,
            clusters: Some(clusters),
            for_index: false,
        }
    }
}

#[pymethods]
impl EvBatch {
    fn __len__(&self) -> usize {
        self.events.len()
    }

    /// Whether its events are routed (``Routed``'s) rather than to route (``ToRoute``'s).
    #[getter]
    fn routed_events(&self) -> bool {
        self.clusters.is_some()
    }

    /// Whether its events are unbanked uploads for the index's owner (``Unbanked``'s).
    #[getter]
    fn for_index(&self) -> bool {
        self.for_index
    }

    /// ``(events, clusters)``: the events as Python ``ShareEvent``s (made now), and each one's
    /// cluster (``None`` for events to route and unbanked uploads).
    #[allow(clippy::type_complexity)]
    fn parts<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Vec<Bound<'py, PyAny>>, Option<Vec<Bound<'py, PyString>>>)> {
        let events = self
            .events
            .iter()
            .map(|e| e.to_py(py))
            .collect::<PyResult<_>>()?;
        let clusters = self
            .clusters
            .as_ref()
            .map(|c| c.iter().map(|c| c.bind(py).clone()).collect());
        Ok((events, clusters))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        for ev in &self.events {
            ev.traverse(&visit)?;
        }
        for c in self.clusters.iter().flatten() {
            visit.call(c)?;
        }
        Ok(())
    }
}

/// Registrations crossing Python as one item of an envelope: a resolve partition's posts
/// of another partition, in order (each as a ``Registration`` would carry it: post,
/// cluster), for that partition's loop (handed over in-process, read without a Python
/// record) or the wire writer (``["r", post, cluster]`` each, the bytes the records
/// would have been).
///
/// Why: every post routed is registered with its home partition, three posts of four
/// elsewhere with four partitions; each was a ``(partition, post, cluster)`` tuple, a
/// ``Registration`` record and two ``getattr`` back in the peer's loop (about 2% of a
/// one-worker backlog). Python sees the batch (its length, :meth:`pairs`, and whether its
/// posts are released events', :attr:`released`: the worker copies those alone to the
/// receiver's topic, ``streams.runtime.topology.Topology._copy_handed``).
#[pyclass(module = "streams._core", frozen, eq)]
#[derive(PartialEq)]
pub struct RegBatch {
    /// (post id's bytes, cluster id)
    pub(crate) regs: Vec<(Box<[u8]>, Arc<str>)>, // (post, cluster)
    /// the posts are of events that had been held (`viralwatch_core::posts::Foreign`)
    #[pyo3(get)]
    pub(crate) released: bool,
}

#[pymethods]
impl RegBatch {
    fn __len__(&self) -> usize {
        self.regs.len()
    }

    /// ``(post, cluster)`` of each registration, in order (a post id that is not UTF-8 as
    /// Python's ``str`` of it, lone surrogates kept).
    fn pairs<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<Vec<(Bound<'py, PyAny>, Bound<'py, PyString>)>> {
        self.regs
            .iter()
            .map(|(post, cluster)| Ok((post_text(py, post)?, PyString::new(py, cluster))))
            .collect()
    }

    fn __repr__(&self) -> String {
        format!("RegBatch(<{} registrations>)", self.regs.len())
    }
}

/// A post id's Python ``str`` (not UTF-8: decoded with lone surrogates kept, as Python
/// encoded it).
pub(crate) fn post_text<'py>(py: Python<'py>, id: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    match std::str::from_utf8(id) {
        Ok(s) => Ok(PyString::new(py, s).into_any()),
        Err(_) => {
            pyo3::types::PyBytes::new(py, id).call_method1("decode", ("utf-8", "surrogatepass"))
        }
    }
}
