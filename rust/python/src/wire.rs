//! `streams._core.WireWriter`: a batch of `streams.wire` records as JSON parts
//! (`viralwatch_core::wire`), byte for byte what `streams.wire.encode` writes.
//!
//! The records are read through their attributes; a field of a type orjson would
//! write differently than the core does (a `bool` where an `int` goes, a `str`
//! subclass, an integer over 64 bits, a video's frames, a match) is written by the
//! Python fallback it was built with, for that field or that whole item, so the
//! bytes never depend on which of the two wrote them.

use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt, PyList, PyString, PyTuple, PyType};
use pyo3::{PyTraverseError, PyVisit};

use viralwatch_core::wire::{
    write_dict_record, write_held, ContentView, EventView, Held, Item, Parts,
};

use crate::ev::{post_text, Ev, EvBatch, RegBatch};
use crate::record;

/// About what a held event takes in the resolve log's ``h+``, on average (78 bytes over
/// the one-worker benchmark's 96,795): the room :meth:`WireWriter.held` makes for a batch.
const HELD_BYTES: usize = 96;

fn text<'a>(obj: &'a Bound<'_, PyAny>) -> Option<&'a str> {
    if !obj.is_exact_instance_of::<PyString>() {
        return None;
    }
    obj.cast::<PyString>().ok()?.to_str().ok()
}

fn int(obj: &Bound<'_, PyAny>) -> Option<i64> {
    if !obj.is_exact_instance_of::<PyInt>() {
        return None;
    }
    obj.extract::<i64>().ok()
}

/// `None`, or a value read by `read`; `Err(())` if it is neither.
fn optional<'a, T>(
    obj: &'a Bound<'_, PyAny>,
    read: impl Fn(&'a Bound<'_, PyAny>) -> Option<T>,
) -> Result<Option<T>, ()> {
    if obj.is_none() {
        Ok(None)
    } else {
        read(obj).map(Some).ok_or(())
    }
}

/// A share event's attributes, held while its view borrows their text.
struct EventAttrs<'py> {
    event_id: Bound<'py, PyAny>,
    kind: Bound<'py, PyAny>,
    ts_ms: Bound<'py, PyAny>,
    post_id: Bound<'py, PyAny>,
    user_id: Bound<'py, PyAny>,
    parent_post_id: Bound<'py, PyAny>,
    followers: Bound<'py, PyAny>,
    /// pdq, pdq_quality, md5 (`None`: no content)
    content: Option<[Bound<'py, PyAny>; 3]>,
}

impl<'py> EventAttrs<'py> {
    /// The attributes of a `ShareEvent` (`None`: not one, or one with a video's frames).
    fn read(
        ev: &Bound<'py, PyAny>,
        share_event: &Bound<'py, PyType>,
        content_cls: &Bound<'py, PyType>,
    ) -> PyResult<Option<Self>> {
        let py = ev.py();
        if !ev.get_type().is(share_event) {
            return Ok(None);
        }
        let content = ev.getattr(intern!(py, "content"))?;
        let content = if content.is_none() {
            None
        } else if content.get_type().is(content_cls)
            && content.getattr(intern!(py, "vpdq"))?.is_none()
        {
            Some([
                content.getattr(intern!(py, "pdq"))?,
                content.getattr(intern!(py, "pdq_quality"))?,
                content.getattr(intern!(py, "md5"))?,
            ])
        } else {
            return Ok(None);
        };
        Ok(Some(Self {
            event_id: ev.getattr(intern!(py, "event_id"))?,
            kind: ev.getattr(intern!(py, "type"))?,
            ts_ms: ev.getattr(intern!(py, "ts_ms"))?,
            post_id: ev.getattr(intern!(py, "post_id"))?,
            user_id: ev.getattr(intern!(py, "user_id"))?,
            parent_post_id: ev.getattr(intern!(py, "parent_post_id"))?,
            followers: ev.getattr(intern!(py, "followers"))?,
            content,
        }))
    }

    /// The view the core writes (`None`: a field it does not write as orjson would).
    fn view(&self) -> Option<EventView<'_>> {
        let content = match &self.content {
            None => None,
            Some([pdq, quality, md5]) => Some(ContentView {
                pdq: optional(pdq, text).ok()?,
                pdq_quality: optional(quality, int).ok()?,
                md5: optional(md5, text).ok()?,
            }),
        };
        Some(EventView {
            event_id: text(&self.event_id)?,
            kind: text(&self.kind)?,
            ts_ms: int(&self.ts_ms)?,
            post_id: text(&self.post_id)?,
            user_id: text(&self.user_id)?,
            parent_post_id: optional(&self.parent_post_id, text).ok()?,
            followers: optional(&self.followers, int).ok()?,
            content,
        })
    }
}

/// The classes the writer tells apart, named once: the order of this list is the order
/// its constructor takes them in (then the fallback writer), and [`Class`] indexes the
/// table it keeps, so the constructor, the table and the dispatch cannot disagree.
macro_rules! classes {
    ($($class:ident),+ $(,)?) => {
        #[derive(Clone, Copy, PartialEq, Eq, Debug)]
        enum Class {
            $($class),+
        }

        const CLASSES: &[Class] = &[$(Class::$class),+];
    };
}

classes!(
    Routed,
    ToRoute,
    Registration,
    Forget,
    Unbanked,
    Touch,
    ShareEvent,
    Content
);

/// Writes batches of `streams.wire` records as JSON arrays cut into parts (see the module
/// doc); built once with the record classes, the event and content classes, and the
/// fallback writer (``streams.wire.encode``), in [`CLASSES`]' order.
#[pyclass(module = "streams._core", frozen)]
pub struct WireWriter {
    /// indexed by [`Class`]
    classes: Vec<Py<PyType>>,
    fallback: Py<PyAny>,
}

impl WireWriter {
    fn class<'py>(&self, py: Python<'py>, class: Class) -> &Bound<'py, PyType> {
        self.classes[class as usize].bind(py)
    }

    /// Which of the classes `kind` is.
    fn class_of(&self, kind: &Bound<'_, PyType>) -> Option<Class> {
        CLASSES
            .iter()
            .zip(&self.classes)
            .find(|(_, c)| kind.is(c.bind(kind.py())))
            .map(|(&class, _)| class)
    }

    fn fallback<'py>(&self, obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
        Ok(self
            .fallback
            .bind(obj.py())
            .call1((obj,))?
            .cast_into::<PyBytes>()?)
    }

    /// A batch of compiled events (`EvBatch`) into `parts`, each in its record's wire form:
    /// a compiled event from its fields, a Python one as its record is written.
    /// ``log``: a routed event as a cluster log keeps it ([`Item::Logged`]).
    fn push_batch(&self, parts: &mut Parts, batch: &Bound<'_, EvBatch>, log: bool) -> PyResult<()> {
        let py = batch.py();
        let batch = batch.get();
        for (i, ev) in batch.events.iter().enumerate() {
            let cluster = batch.clusters.as_ref().map(|c| c[i].bind(py));
            if let Ev::Core(c) = ev {
                let event = c.view();
                match cluster.map(|c| c.to_str()) {
                    None if batch.for_index => {
                        parts.push(&Item::Unbanked(event));
                        continue;
                    }
                    None => {
                        parts.push(&Item::ToRoute(event));
                        continue;
                    }
                    Some(Ok(cluster_id)) => {
                        parts.push(&if log {
                            Item::Logged { event, cluster_id }
                        } else {
                            Item::Routed {
                                event,
                                cluster_id,
                                match_json: None,
                            }
                        });
                        continue;
                    }
                    Some(Err(_)) => {} // not UTF-8: written as its record is
                }
            }
            let event = ev.to_py(py)?;
            let item = match cluster {
                None => record(
                    self.class(
                        py,
                        if batch.for_index {
                            Class::Unbanked
                        } else {
                            Class::ToRoute
                        },
                    ),
                    &[(intern!(py, "event"), event)],
                )?,
                Some(cluster) => record(
                    self.class(py, Class::Routed),
                    &[
                        (intern!(py, "event"), event),
                        (intern!(py, "cluster_id"), cluster.clone().into_any()),
                        (intern!(py, "match"), py.None().into_bound(py)),
                    ],
                )?,
            };
            self.push(parts, &item, log)?;
        }
        Ok(())
    }

    /// A batch of registrations (`RegBatch`) into `parts`, each as its ``Registration``
    /// record is written (a post id that is not UTF-8: that record, by the fallback).
    fn push_registrations(
        &self,
        py: Python<'_>,
        parts: &mut Parts,
        batch: &RegBatch,
    ) -> PyResult<()> {
        for (post, cluster) in &batch.regs {
            if let Ok(post_id) = std::str::from_utf8(post) {
                parts.push(&Item::Registration {
                    post_id,
                    cluster_id: cluster,
                });
                continue;
            }
            let item = record(
                self.class(py, Class::Registration),
                &[
                    (intern!(py, "post_id"), post_text(py, post)?),
                    (
                        intern!(py, "cluster_id"),
                        PyString::new(py, cluster).into_any(),
                    ),
                ],
            )?;
            self.push(parts, &item, false)?;
        }
        Ok(())
    }

    /// One item into `parts`: written here if every field is one the core writes as
    /// orjson does, else by the fallback; ``log``: a routed event without a match as a
    /// cluster log keeps it ([`Item::Logged`]).
    fn push(&self, parts: &mut Parts, item: &Bound<'_, PyAny>, log: bool) -> PyResult<()> {
        let py = item.py();
        if let Ok(batch) = item.cast::<EvBatch>() {
            return self.push_batch(parts, batch, log);
        }
        if let Ok(batch) = item.cast::<RegBatch>() {
            return self.push_registrations(py, parts, batch.get());
        }
        let share_event = self.class(py, Class::ShareEvent);
        let content = self.class(py, Class::Content);
        let event_of = |name| -> PyResult<Option<EventAttrs<'_>>> {
            EventAttrs::read(&item.getattr(name)?, share_event, content)
        };
        match self.class_of(&item.get_type()) {
            Some(Class::Routed) => {
                let attrs = event_of(intern!(py, "event"))?;
                let cluster = item.getattr(intern!(py, "cluster_id"))?;
                let matched = item.getattr(intern!(py, "match"))?;
                let match_json = if matched.is_none() {
                    None
                } else {
                    Some(self.fallback(&matched)?)
                };
                if let (Some(event), Some(cluster_id)) =
                    (attrs.as_ref().and_then(EventAttrs::view), text(&cluster))
                {
                    parts.push(&match match_json.as_ref() {
                        None if log => Item::Logged { event, cluster_id },
                        json => Item::Routed {
                            event,
                            cluster_id,
                            match_json: json.map(|b| b.as_bytes()),
                        },
                    });
                    return Ok(());
                }
            }
            Some(class @ (Class::ToRoute | Class::Unbanked)) => {
                let attrs = event_of(intern!(py, "event"))?;
                if let Some(event) = attrs.as_ref().and_then(EventAttrs::view) {
                    parts.push(&if class == Class::ToRoute {
                        Item::ToRoute(event)
                    } else {
                        Item::Unbanked(event)
                    });
                    return Ok(());
                }
                if parts.held() == Held::Dict {
                    // version 1's `[tag, event]`, the event by the fallback (whose record
                    // form is version 2's where it can be)
                    let tag = if class == Class::ToRoute { "s" } else { "u" };
                    let event = self.fallback(&item.getattr(intern!(py, "event"))?)?;
                    let mut raw = Vec::with_capacity(event.as_bytes().len() + 8);
                    write_dict_record(&mut raw, tag, |out| out.extend_from_slice(event.as_bytes()));
                    parts.push(&Item::Raw(&raw));
                    return Ok(());
                }
            }
            Some(Class::Registration) => {
                let post = item.getattr(intern!(py, "post_id"))?;
                let cluster = item.getattr(intern!(py, "cluster_id"))?;
                if let (Some(post_id), Some(cluster_id)) = (text(&post), text(&cluster)) {
                    parts.push(&Item::Registration {
                        post_id,
                        cluster_id,
                    });
                    return Ok(());
                }
            }
            Some(Class::Forget) => {
                let post = item.getattr(intern!(py, "post_id"))?;
                if let Some(post_id) = text(&post) {
                    parts.push(&Item::Forget(post_id));
                    return Ok(());
                }
            }
            Some(Class::Touch) => {
                let cluster = item.getattr(intern!(py, "cluster_id"))?;
                let ts = item.getattr(intern!(py, "ts_ms"))?;
                if let (Some(cluster_id), Some(ts_ms)) = (text(&cluster), int(&ts)) {
                    parts.push(&Item::Touch { cluster_id, ts_ms });
                    return Ok(());
                }
            }
            Some(Class::ShareEvent | Class::Content) | None => {}
        }
        let raw = self.fallback(item)?;
        parts.push(&Item::Raw(raw.as_bytes()));
        Ok(())
    }
}

#[pymethods]
impl WireWriter {
    /// The classes and the fallback writer, for the garbage collector (frozen: nothing is
    /// cleared; a class does not reference its writer).
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        for cls in &self.classes {
            visit.call(cls)?;
        }
        visit.call(&self.fallback)
    }

    /// ``WireWriter(routed, to_route, registration, forget, unbanked, touch, share_event,
    /// content, fallback)``: the classes in [`CLASSES`]' order, then the fallback writer.
    #[new]
    #[pyo3(signature = (*args))]
    fn new(args: &Bound<'_, PyTuple>) -> PyResult<Self> {
        let wrong = || {
            PyTypeError::new_err(format!(
                "WireWriter takes {} classes ({:?}) and a fallback writer",
                CLASSES.len(),
                CLASSES
            ))
        };
        let args: Vec<Bound<'_, PyAny>> = args.iter().collect();
        let Some((fallback, classes)) = args.split_last() else {
            return Err(wrong());
        };
        if classes.len() != CLASSES.len() {
            return Err(wrong());
        }
        let classes = classes
            .iter()
            .map(|c| Ok(c.cast::<PyType>().map_err(|_| wrong())?.clone().unbind()))
            .collect::<PyResult<_>>()?;
        Ok(Self {
            classes,
            fallback: fallback.clone().unbind(),
        })
    }

    /// Held events (``ShareEvent``s, or an ``EvBatch``: a resolve partition's, compiled
    /// events written from their fields) as the resolve log's ``h+`` writes them
    /// (``viralwatch_core::wire::write_held``: compact, hashes in base64), JSON arrays of at
    /// most ``limit`` bytes each as :meth:`parts` cuts them; an event the core does not
    /// write (a video's frames, a field orjson would write otherwise) is ``held_json(event)``.
    fn held<'py>(
        &self,
        py: Python<'py>,
        events: &Bound<'py, PyAny>,
        limit: usize,
        held_json: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let share_event = self.class(py, Class::ShareEvent);
        let content = self.class(py, Class::Content);
        let mut parts = Parts::new(limit);
        let mut one = Vec::new();
        let mut push = |parts: &mut Parts, ev: &Bound<'py, PyAny>| -> PyResult<()> {
            one.clear();
            let attrs = EventAttrs::read(ev, share_event, content)?;
            match attrs.as_ref().and_then(EventAttrs::view) {
                Some(view) if write_held(&mut one, &view) => parts.push_json(&one),
                _ => parts.push_json(held_json.call1((ev,))?.cast::<PyBytes>()?.as_bytes()),
            }
            Ok(())
        };
        if let Ok(batch) = events.cast::<EvBatch>() {
            let mut compiled = Vec::new();
            parts.reserve(batch.get().events.len() * HELD_BYTES);
            for ev in &batch.get().events {
                if let Ev::Core(c) = ev {
                    compiled.clear();
                    if write_held(&mut compiled, &c.view()) {
                        parts.push_json(&compiled);
                        continue;
                    }
                }
                push(&mut parts, &ev.to_py(py)?)?;
            }
        } else {
            for ev in events.try_iter()? {
                push(&mut parts, &ev?)?;
            }
        }
        let out = PyList::empty(py);
        for part in parts.finish() {
            out.append(PyBytes::new(py, &part))?;
        }
        Ok(out)
    }

    /// ``items`` as JSON arrays of at most ``limit`` bytes each (an item larger than that
    /// alone), in order; ``[b"[]"]`` for none. An error of the fallback is raised.
    /// ``held=False``: an event to route and an unbanked upload in the resolve topic's wire
    /// version 1 (``["s", event]``, ``["u", event]``), not 2's held form.
    #[pyo3(signature = (items, limit, held = true))]
    fn parts<'py>(
        &self,
        py: Python<'py>,
        items: &Bound<'py, PyAny>,
        limit: usize,
        held: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        let form = if held { Held::Compact } else { Held::Dict };
        self.write(py, items, Parts::at(limit, form), false)
    }

    /// Routed events (``Routed`` records, ``EvBatch``es) as a clusters partition's log
    /// keeps them, cut as :meth:`parts` cuts them: each without a match as ``["c",
    /// cluster_id, held event]`` (the resolve log's compact form of an event, hashes in
    /// base64: about 60% of ``["e", event, cluster_id, null]``), any other item as
    /// :meth:`parts` writes it.
    fn log_parts<'py>(
        &self,
        py: Python<'py>,
        items: &Bound<'py, PyAny>,
        limit: usize,
    ) -> PyResult<Bound<'py, PyList>> {
        self.write(py, items, Parts::new(limit), true)
    }
}

impl WireWriter {
    fn write<'py>(
        &self,
        py: Python<'py>,
        items: &Bound<'py, PyAny>,
        mut parts: Parts,
        log: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        for item in items.try_iter()? {
            self.push(&mut parts, &item?, log)?;
        }
        let out = PyList::empty(py);
        for part in parts.finish() {
            out.append(PyBytes::new(py, &part))?;
        }
        Ok(out)
    }
}
