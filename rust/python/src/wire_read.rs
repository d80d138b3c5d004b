//! `streams._core.WireReader`: envelopes and cluster-log entries read into
//! `streams.wire`'s records (`viralwatch_core::wire_read`), each event by the
//! event parser, as `streams.wire.decode_item` reads them.
//!
//! What the core leaves to Python (an item it does not read) goes to the fallback
//! the reader was built with, as the item's JSON text; if the fallback raises (the
//! text is not JSON orjson reads), the whole record is left to Python: the caller
//! gets `None` and reads it as before, so a record never becomes something else
//! because the core read part of it.

use std::collections::HashMap;
use std::sync::Arc;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyList, PyString, PyType};
use pyo3::{PyTraverseError, PyVisit};

use viralwatch_core::wire_read::{self, Read};

use crate::ev::{Ev, EvBatch};
use crate::{event_record, record, Classes, DetachedJudge};
use viralwatch_core::event::Compact;

/// Reads envelopes and log entries into records (see the module doc); built once with
/// the record classes, ``parse_ts`` (the event parser's reader of unusual timestamps) and
/// the fallback (an item's JSON text -> its record or a ``Rejection``).
#[pyclass(module = "streams._core", frozen)]
pub struct WireReader {
    to_route: Py<PyType>,
    routed: Py<PyType>,
    registration: Py<PyType>,
    forget: Py<PyType>,
    unbanked: Py<PyType>,
    touch: Py<PyType>,
    share_event: Py<PyType>,
    content: Py<PyType>,
    rejection: Py<PyType>,
    parse_ts: Py<PyAny>,
    fallback: Py<PyAny>,
}

/// One item of a clusters partition's envelope, as :meth:`WireReader::routed` reads it,
/// with its JSON text as the record held it (`json`: what the partition logs).
pub(crate) enum RoutedItem<'py, 'a> {
    /// a routed event the core read: no `Routed` record made for it, and no Python record
    /// of the event (made where Python acts on it: see `crate::ev`)
    Event {
        cluster: Bound<'py, PyString>,
        event: Ev,
        ts: i64,
        json: &'a str,
    },
    /// a routed event Python read (a banked upload's match, a video's frames): its record
    Record(Bound<'py, PyAny>, &'a str),
    /// an item that is not a record (a ``bad_record`` rejection)
    Rejected(Bound<'py, PyAny>),
    /// a record of another kind: it has no place on the clusters topic
    Other(Bound<'py, PyAny>),
}

/// A clusters partition's envelope read by the core: its progress `(partition, event
/// time)` and its items, in order.
pub(crate) struct RoutedEnvelope<'py, 'a> {
    pub(crate) progress: Vec<(i64, i64)>,
    pub(crate) items: Vec<RoutedItem<'py, 'a>>,
}

/// The records of one read: the items, and the fallback's rejections, each in order.
struct Sorted<'py> {
    good: Bound<'py, PyList>,
    bad: Bound<'py, PyList>,
}

/// A run of compiled events read from an envelope, to go on as one `EvBatch`: events to
/// route, or (`for_index`) unbanked uploads for the index's owner.
struct Run {
    events: Vec<Ev>,
    for_index: bool,
}

impl Run {
    /// `ev` at the end of the run (`false`: the run is of the other kind; push it first).
    fn takes(&self, for_index: bool) -> bool {
        self.events.is_empty() || self.for_index == for_index
    }

    fn push_to(&mut self, good: &Bound<'_, PyList>) -> PyResult<()> {
        if self.events.is_empty() {
            return Ok(());
        }
        let events = std::mem::take(&mut self.events);
        let batch = if self.for_index {
            EvBatch::unbanked(events)
        } else {
            EvBatch::to_route(events)
        };
        good.append(Py::new(good.py(), batch)?)
    }
}

impl WireReader {
    /// Every item as its record, into `good` (or, a rejection of the fallback's, `bad`);
    /// `Ok(false)` if the fallback raised. ``compiled``: events to route and unbanked
    /// uploads the event parser keeps compiled go as runs in one `EvBatch` each (what a
    /// resolve partition's loop reads: no Python record of each), the rest as records.
    fn records<'py>(
        &self,
        py: Python<'py>,
        items: Vec<Read<'_>>,
        out: &Sorted<'py>,
        compiled: bool,
    ) -> PyResult<bool> {
        let mut run = Run {
            events: Vec::new(),
            for_index: false,
        };
        let classes = Classes {
            share_event: self.share_event.bind(py),
            content: self.content.bind(py),
            rejection: self.rejection.bind(py),
        };
        // one string per cluster id in a batch: the routed events of a cluster share it
        let mut clusters: HashMap<String, Bound<'py, PyString>> = HashMap::new();
        let mut cluster = |id: &str| {
            clusters
                .entry(id.to_owned())
                .or_insert_with(|| PyString::new(py, id))
                .clone()
                .into_any()
        };
        let event = intern!(py, "event");
        let cluster_id = intern!(py, "cluster_id");
        let post_id = intern!(py, "post_id");
        for item in items {
            if compiled {
                if let Read::ToRoute(ev) | Read::Unbanked(ev) = &item {
                    if let Some(c) = Compact::of(ev) {
                        let for_index = matches!(item, Read::Unbanked(_));
                        if !run.takes(for_index) {
                            run.push_to(&out.good)?;
                        }
                        run.for_index = for_index;
                        run.events.push(Ev::Core(Arc::new(c)));
                        continue;
                    }
                }
                run.push_to(&out.good)?;
            }
            let obj = match item {
                Read::ToRoute(ev) => record(
                    self.to_route.bind(py),
                    &[(event, event_record(py, &ev, &classes)?)],
                )?,
                Read::Unbanked(ev) => record(
                    self.unbanked.bind(py),
                    &[(event, event_record(py, &ev, &classes)?)],
                )?,
                Read::Routed {
                    event: ev,
                    cluster_id: id,
                } => record(
                    self.routed.bind(py),
                    &[
                        (event, event_record(py, &ev, &classes)?),
                        (cluster_id, cluster(&id)),
                        (intern!(py, "match"), py.None().into_bound(py)),
                    ],
                )?,
                Read::Registration {
                    post_id: post,
                    cluster_id: id,
                } => record(
                    self.registration.bind(py),
                    &[
                        (post_id, PyString::new(py, &post).into_any()),
                        (cluster_id, cluster(&id)),
                    ],
                )?,
                Read::Forget(post) => record(
                    self.forget.bind(py),
                    &[(post_id, PyString::new(py, &post).into_any())],
                )?,
                Read::Touch {
                    cluster_id: id,
                    ts_ms,
                } => record(
                    self.touch.bind(py),
                    &[
                        (cluster_id, cluster(&id)),
                        (intern!(py, "ts_ms"), ts_ms.into_pyobject(py)?.into_any()),
                        // not on the wire, but a field: `record` sets no default, and a
                        // slot left empty crashed orjson's dataclass writer
                        (
                            intern!(py, "released"),
                            PyBool::new(py, false).to_owned().into_any(),
                        ),
                    ],
                )?,
                Read::Other(text) => match self.fallback.bind(py).call1((text,)) {
                    Ok(obj) => {
                        if obj.is_instance(classes.rejection)? {
                            out.bad.append(obj)?;
                            continue;
                        }
                        obj
                    }
                    Err(_) => return Ok(false),
                },
            };
            out.good.append(obj)?;
        }
        run.push_to(&out.good)?;
        Ok(true)
    }
}

impl WireReader {
    /// `wire_read::read_envelope` of ``raw`` with the GIL released: an envelope of a few
    /// thousand items is milliseconds of JSON, during which the worker's other thread
    /// (Faust's consumer, aiokafka's fetches) could not run. Safe: ``raw`` is a `bytes`
    /// object's (immutable, held by the caller's argument for the call); the reader is
    /// frozen (no borrow flag) and only its `parse_ts` is read, through `DetachedJudge`,
    /// which attaches for a rare line's answer; the envelope read is Rust's, made
    /// Python's records after, with the GIL.
    fn read_envelope<'a>(&self, py: Python<'_>, raw: &'a [u8]) -> Option<wire_read::Envelope<'a>> {
        let parse_ts = &self.parse_ts;
        py.detach(|| wire_read::read_envelope(raw, &mut DetachedJudge { parse_ts }))
    }

    /// A clusters partition's envelope (``raw``): its routed events with no `Routed`
    /// record each (the event, its cluster, its time and its text), what Python reads
    /// (through the fallback, as :meth:`envelope` hands it over) as records; `None` when
    /// the core does not read the envelope, or the fallback could not read an item (the
    /// record is read in Python whole, as every record the core leaves).
    pub(crate) fn read_routed<'py, 'a>(
        &self,
        py: Python<'py>,
        raw: &'a [u8],
    ) -> PyResult<Option<RoutedEnvelope<'py, 'a>>> {
        let Some(env) = self.read_envelope(py, raw) else {
            return Ok(None);
        };
        let classes = Classes {
            share_event: self.share_event.bind(py),
            content: self.content.bind(py),
            rejection: self.rejection.bind(py),
        };
        let routed = self.routed.bind(py);
        // one string per cluster id: the routed events of a cluster share it
        let mut clusters: HashMap<&str, Bound<'py, PyString>> = HashMap::new();
        let mut items = Vec::with_capacity(env.items.len());
        for (item, json) in env.items.into_iter().zip(env.spans) {
            items.push(match item {
                Read::Routed {
                    event,
                    cluster_id: id,
                } => {
                    let cluster = match clusters.get(id.as_ref()) {
                        Some(c) => c.clone(),
                        None => {
                            let c = PyString::new(py, &id);
                            // the key borrows the record when the id is written plainly
                            if let std::borrow::Cow::Borrowed(k) = id {
                                clusters.insert(k, c.clone());
                            }
                            c
                        }
                    };
                    let ts = event.ts_ms;
                    let Some(event) = Compact::of(&event) else {
                        return Ok(None); // a video's: the reader leaves those to Python
                    };
                    RoutedItem::Event {
                        cluster,
                        event: Ev::Core(Arc::new(event)),
                        ts,
                        json,
                    }
                }
                // any other item as Python reads it: rare on this topic
                _ => match self.fallback.bind(py).call1((json,)) {
                    Ok(obj) if obj.is_instance(classes.rejection)? => RoutedItem::Rejected(obj),
                    Ok(obj) if obj.get_type().is(routed) => RoutedItem::Record(obj, json),
                    Ok(obj) => RoutedItem::Other(obj),
                    Err(_) => return Ok(None),
                },
            });
        }
        Ok(Some(RoutedEnvelope {
            progress: env.progress,
            items,
        }))
    }
}

pub(crate) fn by_partition<'py, T: IntoPyObject<'py> + Copy>(
    py: Python<'py>,
    pairs: &[(i64, T)],
) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    for &(p, v) in pairs {
        out.set_item(p, v)?;
    }
    Ok(out)
}

#[pymethods]
impl WireReader {
    /// The classes and functions it calls, for the garbage collector (frozen: nothing is
    /// cleared).
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        for obj in [
            &self.to_route,
            &self.routed,
            &self.registration,
            &self.forget,
            &self.unbanked,
            &self.touch,
            &self.share_event,
            &self.content,
            &self.rejection,
        ] {
            visit.call(obj)?;
        }
        visit.call(&self.parse_ts)?;
        visit.call(&self.fallback)
    }

    /// ``WireReader(to_route, routed, registration, forget, unbanked, touch, share_event,
    /// content, rejection, parse_ts, fallback)``.
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        to_route: Py<PyType>,
        routed: Py<PyType>,
        registration: Py<PyType>,
        forget: Py<PyType>,
        unbanked: Py<PyType>,
        touch: Py<PyType>,
        share_event: Py<PyType>,
        content: Py<PyType>,
        rejection: Py<PyType>,
        parse_ts: Py<PyAny>,
        fallback: Py<PyAny>,
    ) -> Self {
        Self {
            to_route,
            routed,
            registration,
            forget,
            unbanked,
            touch,
            share_event,
            content,
            rejection,
            parse_ts,
            fallback,
        }
    }

    /// An envelope's ``(items, rejected, marks, progress, inputs)``: marks ``{partition:
    /// (ts, idle)}``, progress and inputs ``{partition: ts}``; ``None`` when the core does
    /// not read it (Python reads it, and says what is wrong with it). Runs of events to
    /// route and of unbanked uploads are one `EvBatch` each (compiled events: the records
    /// they stand for are `streams.wire.records`'), the other items records.
    #[allow(clippy::type_complexity)]
    fn envelope<'py>(
        &self,
        py: Python<'py>,
        raw: &Bound<'py, PyBytes>,
    ) -> PyResult<
        Option<(
            Bound<'py, PyList>,
            Bound<'py, PyList>,
            Bound<'py, PyDict>,
            Bound<'py, PyDict>,
            Bound<'py, PyDict>,
        )>,
    > {
        let Some(env) = self.read_envelope(py, raw.as_bytes()) else {
            return Ok(None);
        };
        let out = Sorted {
            good: PyList::empty(py),
            bad: PyList::empty(py),
        };
        if !self.records(py, env.items, &out, true)? {
            return Ok(None);
        }
        let marks = PyDict::new(py);
        for (p, ts, idle) in env.marks {
            marks.set_item(p, (ts, idle))?;
        }
        Ok(Some((
            out.good,
            out.bad,
            marks,
            by_partition(py, &env.progress)?,
            by_partition(py, &env.inputs)?,
        )))
    }

    /// A JSON array of items (a cluster-log entry) as ``(items, rejected)``; ``None`` when
    /// the core does not read it (not an array, or an item the fallback could not read).
    fn items<'py>(
        &self,
        py: Python<'py>,
        raw: &Bound<'py, PyBytes>,
    ) -> PyResult<Option<(Bound<'py, PyList>, Bound<'py, PyList>)>> {
        let (parse_ts, raw_bytes) = (&self.parse_ts, raw.as_bytes());
        // the GIL released for the parse: as `read_envelope`
        let items = py.detach(|| wire_read::read_items(raw_bytes, &mut DetachedJudge { parse_ts }));
        let Some(items) = items else {
            return Ok(None);
        };
        let out = Sorted {
            good: PyList::empty(py),
            bad: PyList::empty(py),
        };
        if !self.records(py, items, &out, false)? {
            return Ok(None);
        }
        Ok(Some((out.good, out.bad)))
    }
}
