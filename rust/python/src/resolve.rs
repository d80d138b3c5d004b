//! `streams._core.ResolveLoop`: a streaming resolve partition's per-event loop
//! (`streams.stages.ResolvePartition.handle`) over a batch of envelopes' items, in one
//! call: each event routed (`crate::routing`, the code replay's loop routes with), held
//! or refused; registrations from peers, with what waited for their posts released;
//! forgotten posts; unbanked uploads deferred to the index's owner, and at the owner
//! held until every partition's input watermark has passed them, then clustered in
//! `(ts, event_id)` order; the latest events of unbanked clusters noted for the index;
//! and each routed event made a `Routed` in the list of its clusters partition.
//!
//! Python is called once a batch to match against the banks the uploads an entry may
//! match (screened as replay screens them, `Routing::screen`: most match nothing), and
//! for the rare events it owns: a refusal's
//! rejection, an upload with no image signal, a video's cluster (vPDQ). It keeps the
//! per-batch work: the watermark, progress, expiry of held orphans, the state log's delta.
//!
//! Why here and not in Python: the loop ran once per event in Python (a `Routed`, a
//! lookup in the held events, the router's calls), a fifth of a worker's CPU on a backlog.
//! The order of everything is the Python loop's: the same envelopes, log entries and
//! dead letters come out.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyType};
use pyo3::{intern, PyTraverseError, PyVisit};

use viralwatch_core::posts::partition_for;
use viralwatch_core::unbanked::Kind;

use crate::dedupe::with_id;
use crate::emerging::PyIdleClusters;
use crate::ev::{lines_of, Ev, Line};
use crate::posts::PyPostRoutes;
use crate::record;
use crate::routing::{is_unbanked_id, Banks, Deliver, Reshare, Routing};
use crate::unbanked::kind_of;

/// A held event in event-time order: `(ts, event id)` as Python's tuples compare (an id's
/// UTF-8 bytes compare in code point order, as `str`s do).
struct Waiting {
    ts: i64,
    key: Box<[u8]>,
    id: Py<PyAny>,
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        self.ts == other.ts && self.key == other.key
    }
}

impl Eq for Waiting {}

impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Waiting {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.ts, &self.key).cmp(&(other.ts, &other.key))
    }
}

/// The record classes the loop reads and makes (`streams.wire`'s, `streams.router.Routed`).
struct Classes {
    routed: Py<PyType>,
    to_route: Py<PyType>,
    registration: Py<PyType>,
    forget: Py<PyType>,
    unbanked: Py<PyType>,
    touch: Py<PyType>,
}

/// `Routed`, `ToRoute`, `Registration`, `Forget`, `Unbanked`, `Touch`, as Python gives them.
type RecordClasses = (
    Py<PyType>,
    Py<PyType>,
    Py<PyType>,
    Py<PyType>,
    Py<PyType>,
    Py<PyType>,
);

/// What the batch gave so far, until Python takes it.
#[derive(Default)]
struct Out {
    /// routed events (`Routed`), per clusters partition
    clusters: Vec<Vec<Py<PyAny>>>,
    /// for the index's owner (a partition that is not): unbanked uploads (`Unbanked`)
    to_index: Vec<Py<PyAny>>,
    /// the latest event time of each unbanked cluster routed to, in first-touch order
    /// (a partition that is not the owner's, for its `Touch` records)
    touched: Vec<(Py<PyString>, i64)>,
    touched_at: HashMap<Box<str>, usize>,
    /// this batch's unbanked uploads, until the end of its items
    deferred: Vec<Py<PyAny>>,
    held_add: Vec<Py<PyAny>>,
    held_del: Vec<Py<PyAny>>,
    /// at the index's owner: every upload held at or before this time was clustered (the
    /// log's one bound, in place of an id an upload in `held_del`)
    clustered_to: Option<i64>,
    forgot: Vec<Py<PyAny>>,
    /// rejections, and items with no place here, in order
    dead: Vec<Py<PyAny>>,
    routed: u64,
    duplicates: u64,
    held: u64,
    /// whether the held orphans changed (a hold or a release)
    orphans: bool,
}

/// A resolve partition's loop (see the module doc) over its post -> cluster map and held
/// orphans (``routes``), the index's idle order (``idle``, at the index's owner, else
/// ``None``) and its held events (``held``, a dict by event id that Python reads too: a
/// snapshot lists it, progress waits for it). ``host`` (the ``ResolvePartition``) is given
/// to each call: ``_classify``, ``_refused``, ``_unsignalled`` and ``_assign_video`` are
/// called on it.
#[pyclass(module = "streams._core")]
pub struct ResolveLoop {
    routing: Routing,
    held: Py<PyDict>,
    partitions: u32,
    classes: Classes,
    /// held reshares, by `(ts, event id)`
    waiting: BinaryHeap<Reverse<Waiting>>,
    /// at the index's owner: unbanked uploads waiting to be clustered, by `(ts, event id)`
    unbanked: BinaryHeap<Reverse<Waiting>>,
    out: Out,
}

/// A heap that a flood filled gives its room back once mostly empty (amortized: it
/// shrinks to twice what it holds when under a quarter full).
fn trim(heap: &mut BinaryHeap<Reverse<Waiting>>) {
    if heap.capacity() > 64 && heap.len() < heap.capacity() / 4 {
        heap.shrink_to(2 * heap.len());
    }
}

fn is_upload(py: Python<'_>, event: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(kind_of(&event.getattr(intern!(py, "type"))?)? == Kind::Upload)
}

fn waiting(ts: i64, id: &Bound<'_, PyAny>) -> PyResult<Reverse<Waiting>> {
    let key: Box<[u8]> = with_id(id, |k| Box::from(k))?;
    Ok(Reverse(Waiting {
        ts,
        key,
        id: id.clone().unbind(),
    }))
}

/// What a registration released is sent to its clusters partition; an unbanked
/// cluster's event is noted in the index (the owner's) or for it (the others').
impl Deliver for ResolveLoop {
    fn routing(&self) -> &Routing {
        &self.routing
    }

    fn touch(&mut self, py: Python<'_>, cluster: &Bound<'_, PyString>, ts: i64) -> PyResult<()> {
        let id = cluster.to_str()?;
        if self.owner() {
            self.routing.touch(py, id, ts);
            return Ok(());
        }
        match self.out.touched_at.get(id) {
            Some(&i) => {
                let last = &mut self.out.touched[i].1;
                *last = (*last).max(ts);
            }
            None => {
                self.out
                    .touched_at
                    .insert(Box::from(id), self.out.touched.len());
                self.out.touched.push((cluster.clone().unbind(), ts));
            }
        }
        Ok(())
    }

    fn deliver(
        &mut self,
        py: Python<'_>,
        cluster: &Bound<'_, PyString>,
        event: Ev,
        _ts: i64,
    ) -> PyResult<()> {
        self.out.orphans = true;
        let event = event.to_py(py)?;
        let r = self.routed(py, &event, cluster)?;
        self.emit(py, r, &event, cluster)
    }
}

impl ResolveLoop {
    fn owner(&self) -> bool {
        self.routing.index.is_some()
    }

    /// A `Routed` of ``event`` to ``cluster`` (no match: only a banked upload has one).
    fn routed<'py>(
        &self,
        py: Python<'py>,
        event: &Bound<'py, PyAny>,
        cluster: &Bound<'py, PyString>,
    ) -> PyResult<Bound<'py, PyAny>> {
        record(
            self.classes.routed.bind(py),
            &[
                (intern!(py, "event"), event.clone()),
                (intern!(py, "cluster_id"), cluster.clone().into_any()),
                (intern!(py, "match"), py.None().into_bound(py)),
            ],
        )
    }

    /// A routed event, to its clusters partition; no longer held here.
    fn emit(
        &mut self,
        py: Python<'_>,
        routed: Bound<'_, PyAny>,
        event: &Bound<'_, PyAny>,
        cluster: &Bound<'_, PyString>,
    ) -> PyResult<()> {
        let eid = event.getattr(intern!(py, "event_id"))?;
        self.unhold(py, &eid)?;
        let k = with_id(cluster, |c| partition_for(c, self.partitions))? as usize;
        self.out.clusters[k].push(routed.unbind());
        self.out.routed += 1;
        Ok(())
    }

    fn unhold(&mut self, py: Python<'_>, eid: &Bound<'_, PyAny>) -> PyResult<()> {
        let held = self.held.bind(py);
        if held.contains(eid)? {
            held.del_item(eid)?;
            self.out.held_del.push(eid.clone().unbind());
        }
        Ok(())
    }

    /// A rejection (Python's record), dead-lettered by Python; no longer held here.
    fn reject(&mut self, py: Python<'_>, rejection: Bound<'_, PyAny>) -> PyResult<()> {
        let eid = rejection.getattr(intern!(py, "event_id"))?;
        if !eid.is_none() {
            self.unhold(py, &eid)?;
        }
        self.out.dead.push(rejection.unbind());
        Ok(())
    }

    /// ``event``'s post is routed to ``cluster``: mapped, and what waited for it released.
    fn register(
        &mut self,
        py: Python<'_>,
        post: &Bound<'_, PyAny>,
        cluster: &Bound<'_, PyString>,
    ) -> PyResult<()> {
        with_id(post, |p| p.to_vec()).and_then(|p| Routing::register(self, py, &p, cluster))
    }

    /// An upload routed to ``cluster`` (``routed``: its record), its post registered.
    fn upload_routed(
        &mut self,
        py: Python<'_>,
        event: &Bound<'_, PyAny>,
        routed: Bound<'_, PyAny>,
        cluster: &Bound<'_, PyString>,
    ) -> PyResult<()> {
        self.emit(py, routed, event, cluster)?;
        let post = event.getattr(intern!(py, "post_id"))?;
        self.register(py, &post, cluster)
    }

    /// At the index's owner: an unbanked upload held until it is clustered (once).
    fn wait_for_index(&mut self, py: Python<'_>, event: &Bound<'_, PyAny>) -> PyResult<()> {
        let eid = event.getattr(intern!(py, "event_id"))?;
        let held = self.held.bind(py);
        if held.contains(&eid)? {
            self.out.duplicates += 1; // redelivered while it waits
            return Ok(());
        }
        held.set_item(&eid, event)?;
        self.out.held_add.push(event.clone().unbind());
        let ts: i64 = event.getattr(intern!(py, "ts_ms"))?.extract()?;
        self.unbanked.push(waiting(ts, &eid)?);
        Ok(())
    }

    /// One event to route (not held here already); ``classified``: an upload's bank match
    /// or allow-list cluster (a `Routed`), or ``None``.
    fn route_event(
        &mut self,
        py: Python<'_>,
        host: &Bound<'_, PyAny>,
        event: &Bound<'_, PyAny>,
        classified: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let ts: i64 = event.getattr(intern!(py, "ts_ms"))?.extract()?;
        match kind_of(&event.getattr(intern!(py, "type"))?)? {
            Kind::Upload => match classified {
                Some(routed) => {
                    let cluster = routed
                        .getattr(intern!(py, "cluster_id"))?
                        .cast_into::<PyString>()?;
                    self.upload_routed(py, event, routed, &cluster)?;
                }
                None => {
                    let signalled = match Ev::from_py(event).image(py)? {
                        Some(image) => self.routing.signalled(&image),
                        None => false,
                    };
                    let cluster = if signalled {
                        None
                    } else {
                        let c = host.call_method1(intern!(py, "_unsignalled"), (event,))?;
                        (!c.is_none())
                            .then(|| c.cast_into::<PyString>())
                            .transpose()?
                    };
                    match cluster {
                        None => self.out.deferred.push(event.clone().unbind()),
                        Some(cluster) => {
                            let r = self.routed(py, event, &cluster)?;
                            self.upload_routed(py, event, r, &cluster)?;
                        }
                    }
                }
            },
            kind => match self
                .routing
                .reshare(py, &Ev::from_py(event), kind == Kind::Share, ts)?
            {
                Reshare::Found(cluster, released) => {
                    let r = self.routed(py, event, &cluster)?;
                    self.emit(py, r, event, &cluster)?;
                    if is_unbanked_id(cluster.to_str()?) {
                        self.touch(py, &cluster, ts)?;
                    }
                    Routing::release(self, py, &cluster, released)?;
                }
                Reshare::Held => {
                    let eid = event.getattr(intern!(py, "event_id"))?;
                    self.held.bind(py).set_item(&eid, event)?;
                    self.out.held_add.push(event.clone().unbind());
                    self.waiting.push(waiting(ts, &eid)?);
                    self.out.held += 1;
                    self.out.orphans = true;
                }
                Reshare::Refused(reason, held, target) => {
                    let r =
                        host.call_method1(intern!(py, "_refused"), (&target, event, reason, held))?;
                    self.reject(py, r)?;
                }
            },
        }
        Ok(())
    }

    /// An unbanked upload every input has passed, at the owner: the cluster it joins or
    /// starts, and what waited for its post.
    fn cluster_upload(
        &mut self,
        py: Python<'_>,
        host: &Bound<'_, PyAny>,
        event: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let ts: i64 = event.getattr(intern!(py, "ts_ms"))?.extract()?;
        let cluster = match Ev::from_py(event).image(py)? {
            Some(image) if !image.video => self.routing.assign_image(py, &image, ts)?,
            _ => host
                .call_method1(intern!(py, "_assign_video"), (event,))?
                .cast_into::<PyString>()?,
        };
        let r = self.routed(py, event, &cluster)?;
        // no longer held, and not named in the log's releases: `cluster_due`'s bound says it
        let eid = event.getattr(intern!(py, "event_id"))?;
        let held = self.held.bind(py);
        if held.contains(&eid)? {
            held.del_item(&eid)?;
        }
        self.upload_routed(py, event, r, &cluster)
    }
}

#[pymethods]
impl ResolveLoop {
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        routes: Py<PyPostRoutes>,
        idle: Option<Py<PyIdleClusters>>,
        held: Py<PyDict>,
        partitions: u32,
        max_held: usize,
        min_pdq_quality: i64,
        classes: RecordClasses,
    ) -> PyResult<Self> {
        if partitions == 0 {
            return Err(PyTypeError::new_err("a topic has at least one partition"));
        }
        let (routed, to_route, registration, forget, unbanked, touch) = classes;
        Ok(Self {
            routing: Routing::new(py, routes, idle, max_held, min_pdq_quality),
            held,
            partitions,
            classes: Classes {
                routed,
                to_route,
                registration,
                forget,
                unbanked,
                touch,
            },
            waiting: BinaryHeap::new(),
            unbanked: BinaryHeap::new(),
            out: Out::default(),
        })
    }

    /// Route a batch's items (a list per envelope, in offset order): events (``ToRoute``),
    /// registrations, forgotten posts and, at the index's owner, unbanked uploads and
    /// touches. Uploads (those not held here) are screened against ``banks``
    /// (``HashBanks.screen()``) first and those an entry may match matched in one call of
    /// ``host._classify``. What it gave is kept for :meth:`take`.
    fn route(
        &mut self,
        py: Python<'_>,
        host: &Bound<'_, PyAny>,
        envelopes: &Bound<'_, PyList>,
        banks: Banks<'_>,
    ) -> PyResult<()> {
        if self.out.clusters.len() != self.partitions as usize {
            self.out.clusters = (0..self.partitions).map(|_| Vec::new()).collect();
        }
        let to_route = self.classes.to_route.bind(py).clone();
        let held = self.held.bind(py).clone();
        // the uploads to match (not held here: a redelivered one waits once), by position
        let uploads = PyList::empty(py);
        let mut slots: Vec<Option<usize>> = Vec::new();
        for items in envelopes.iter() {
            for item in items.cast_into::<PyList>()?.iter() {
                let mut slot = None;
                if item.get_type().is(&to_route) {
                    let ev = item.getattr(intern!(py, "event"))?;
                    if is_upload(py, &ev)?
                        && !held.contains(ev.getattr(intern!(py, "event_id"))?)?
                    {
                        slot = Some(uploads.len());
                        uploads.append(ev)?;
                    }
                }
                slots.push(slot);
            }
        }
        // matched against the banks as replay matches them (``Routing::screen``)
        let mut classified = self
            .routing
            .screen(py, host, &lines_of(&uploads, None), &banks)?;
        let mut position = 0;
        let owner = self.owner();
        let registration = self.classes.registration.bind(py).clone();
        let forget = self.classes.forget.bind(py).clone();
        let unbanked = self.classes.unbanked.bind(py).clone();
        let touch = self.classes.touch.bind(py).clone();
        for items in envelopes.iter() {
            for item in items.cast_into::<PyList>()?.iter() {
                let slot = slots.get(position).copied().flatten();
                position += 1;
                let kind = item.get_type();
                if kind.is(&to_route) {
                    let ev = item.getattr(intern!(py, "event"))?;
                    if held.contains(ev.getattr(intern!(py, "event_id"))?)? {
                        self.out.duplicates += 1; // redelivered while it waits: it waits once
                        continue;
                    }
                    let upload = if !is_upload(py, &ev)? {
                        None
                    } else {
                        let c = match slot {
                            Some(i) => classified.get_mut(i).and_then(Option::take),
                            // held when the batch was matched, no longer: matched alone
                            None => self
                                .routing
                                .screen(py, host, &[Line::Event(Ev::from_py(&ev))], &banks)?
                                .pop()
                                .flatten(),
                        };
                        c.map(|c| c.into_bound(py))
                    };
                    self.route_event(py, host, &ev, upload)?;
                } else if kind.is(&registration) {
                    let post = item.getattr(intern!(py, "post_id"))?;
                    let cluster = item
                        .getattr(intern!(py, "cluster_id"))?
                        .cast_into::<PyString>()?;
                    self.register(py, &post, &cluster)?;
                } else if kind.is(&forget) {
                    let post = item.getattr(intern!(py, "post_id"))?;
                    {
                        let mut routes = self.routing.routes.borrow_mut(py);
                        with_id(&post, |p| routes.inner.posts.remove(p))?;
                    }
                    self.out.forgot.push(post.unbind());
                } else if owner && kind.is(&unbanked) {
                    self.wait_for_index(py, &item.getattr(intern!(py, "event"))?)?;
                } else if owner && kind.is(&touch) {
                    let cluster = item.getattr(intern!(py, "cluster_id"))?;
                    let ts: i64 = item.getattr(intern!(py, "ts_ms"))?.extract()?;
                    self.routing
                        .touch(py, cluster.cast::<PyString>()?.to_str()?, ts);
                } else {
                    self.out.dead.push(item.unbind());
                }
            }
        }
        for ev in std::mem::take(&mut self.out.deferred) {
            let ev = ev.into_bound(py);
            if owner {
                self.wait_for_index(py, &ev)?;
            } else {
                let item = unbanked.call1((ev,))?;
                self.out.to_index.push(item.unbind());
            }
        }
        Ok(())
    }

    /// At the index's owner: cluster the unbanked uploads held here at or before
    /// ``until_ms``, in ``(ts, event_id)`` order (what waited for their posts comes out too).
    /// The log names them by that bound (``clustered_to``, from :meth:`take`), not one by
    /// one: none held at or before it is left once this returns.
    fn cluster_due(
        &mut self,
        py: Python<'_>,
        host: &Bound<'_, PyAny>,
        until_ms: i64,
    ) -> PyResult<()> {
        if self.out.clusters.len() != self.partitions as usize {
            self.out.clusters = (0..self.partitions).map(|_| Vec::new()).collect();
        }
        while self
            .unbanked
            .peek()
            .is_some_and(|Reverse(w)| w.ts <= until_ms)
        {
            let Some(Reverse(w)) = self.unbanked.pop() else {
                break;
            };
            let Some(ev) = self.held.bind(py).get_item(w.id.bind(py))? else {
                continue;
            };
            if kind_of(&ev.getattr(intern!(py, "type"))?)? == Kind::Upload {
                self.cluster_upload(py, host, &ev)?;
                let to = &mut self.out.clustered_to;
                *to = Some(to.map_or(until_ms, |t| t.max(until_ms)));
            }
        }
        trim(&mut self.unbanked);
        Ok(())
    }

    /// What the batch gave, and forget it: ``(routed events per clusters partition, items
    /// for the index's owner, events held, event ids released, the time every upload held
    /// at or before was clustered (the owner's; ``None``: none was), posts forgotten,
    /// rejections and items with no place here, events routed, duplicates, reshares held,
    /// whether the held orphans changed)``.
    #[allow(clippy::type_complexity)]
    fn take<'py>(
        &mut self,
        py: Python<'py>,
    ) -> PyResult<(
        Vec<Vec<Py<PyAny>>>,
        Vec<Py<PyAny>>,
        Vec<Py<PyAny>>,
        Vec<Py<PyAny>>,
        Option<i64>,
        Vec<Py<PyAny>>,
        Vec<Py<PyAny>>,
        u64,
        u64,
        u64,
        bool,
    )> {
        let mut out = std::mem::take(&mut self.out);
        let touch = self.classes.touch.bind(py);
        for (cluster, ts) in out.touched {
            out.to_index.push(touch.call1((cluster, ts))?.unbind());
        }
        let mut clusters = out.clusters;
        clusters.resize_with(self.partitions as usize, Vec::new);
        Ok((
            clusters,
            out.to_index,
            out.held_add,
            out.held_del,
            out.clustered_to,
            out.forgot,
            out.dead,
            out.routed,
            out.duplicates,
            out.held,
            out.orphans,
        ))
    }

    /// The event time of the oldest held reshare that may still be waiting for a
    /// registration on its way (``None``: none): those released, and those every peer has
    /// passed (older than ``settled``), are dropped from the front.
    fn waiting_front(&mut self, py: Python<'_>, settled: i64) -> PyResult<Option<i64>> {
        let held = self.held.bind(py);
        let mut front = None;
        while let Some(Reverse(w)) = self.waiting.peek() {
            if held.contains(w.id.bind(py))? && w.ts - 1 > settled {
                front = Some(w.ts);
                break;
            }
            self.waiting.pop();
        }
        trim(&mut self.waiting);
        Ok(front)
    }

    /// At the index's owner: the event time of the oldest unbanked upload not clustered
    /// yet (``None``: none).
    #[getter]
    fn unclustered(&self) -> Option<i64> {
        self.unbanked.peek().map(|Reverse(w)| w.ts)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.routing.traverse(&visit)?;
        visit.call(&self.held)?;
        let c = &self.classes;
        for cls in [
            &c.routed,
            &c.to_route,
            &c.registration,
            &c.forget,
            &c.unbanked,
            &c.touch,
        ] {
            visit.call(cls)?;
        }
        for Reverse(w) in self.waiting.iter().chain(self.unbanked.iter()) {
            visit.call(&w.id)?;
        }
        let o = &self.out;
        for obj in o
            .clusters
            .iter()
            .flatten()
            .chain(&o.to_index)
            .chain(&o.deferred)
            .chain(&o.held_add)
            .chain(&o.held_del)
            .chain(&o.forgot)
            .chain(&o.dead)
        {
            visit.call(obj)?;
        }
        for (cluster, _) in &o.touched {
            visit.call(cluster)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.waiting.clear();
        self.unbanked.clear();
        self.out = Out::default();
    }
}
