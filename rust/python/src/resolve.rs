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
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyList, PyString, PyType};
use pyo3::{intern, IntoPyObjectExt, PyTraverseError, PyVisit};

use viralwatch_core::content::Cid;
use viralwatch_core::keyed::Keyed;
use viralwatch_core::posts::partition_for;
use viralwatch_core::unbanked::Kind;

use crate::dedupe::with_id;
use crate::emerging::PyIdleClusters;
use crate::ev::{Ev, EvBatch, Line, RegBatch};
use crate::posts::PyPostRoutes;
use crate::routing::{Banks, Cluster, Deliver, Reshare, Routing};
use crate::{record, Turns};

/// A held event in event-time order: `(ts, event id)` as Python's tuples compare (an id's
/// UTF-8 bytes compare in code point order, as `str`s do).
struct Waiting {
    ts: i64,
    key: Box<[u8]>,
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

/// The events held here (reshares waiting for their parent's registration and, at the
/// index's owner, unbanked uploads waiting to be clustered), by event id (its bytes, as
/// `with_id` reads them), in the order held: a snapshot lists them so, as the Python dict
/// that held them did. Compiled events stay compiled here: an unbanked upload held at the
/// owner is logged (`WireWriter.held`) and clustered from its fields, with no Python record.
#[derive(Default)]
struct Held {
    /// event id -> its place in `events` (keyed foldhash, `viralwatch_core::keyed`: an id
    /// was hashed with SipHash up to four times an upload clustered at the owner)
    ids: HashMap<Box<[u8]>, u64, Keyed>,
    /// the events by when they were held
    events: BTreeMap<u64, Ev>,
    next: u64,
}

impl Held {
    fn contains(&self, key: &[u8]) -> bool {
        self.ids.contains_key(key)
    }

    fn get(&self, key: &[u8]) -> Option<&Ev> {
        self.ids.get(key).and_then(|at| self.events.get(at))
    }

    /// Hold ``ev`` (an event already held under its id is replaced in its place).
    fn insert(&mut self, key: Box<[u8]>, ev: Ev) {
        match self.ids.get(&key) {
            Some(at) => {
                self.events.insert(*at, ev);
            }
            None => {
                self.ids.insert(key, self.next);
                self.events.insert(self.next, ev);
                self.next += 1;
            }
        }
    }

    fn remove(&mut self, key: &[u8]) -> Option<Ev> {
        let at = self.ids.remove(key)?;
        let ev = self.events.remove(&at);
        if self.ids.capacity() > 64 && self.ids.len() < self.ids.capacity() / 4 {
            self.ids.shrink_to(2 * self.ids.len());
        }
        ev
    }

    fn len(&self) -> usize {
        self.ids.len()
    }

    fn clear(&mut self) {
        self.ids.clear();
        self.events.clear();
    }
}

/// The event id's bytes as the held events key them.
fn id_key(py: Python<'_>, ev: &Ev) -> PyResult<Box<[u8]>> {
    ev.with_id(py, |k| Box::from(k))
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

/// A routed event for a clusters partition: compiled, with its cluster (no match), sent
/// on in an `EvBatch` with its neighbours; or a `Routed` record (a banked upload's, with
/// its match: Python made it).
enum Sent {
    Event(Ev, Py<PyString>),
    Record(Py<PyAny>),
}

/// One item of a batch as the loop reads it: an event to route (compiled, or a
/// ``ToRoute``'s event), an unbanked upload for the index (at its owner: compiled, or an
/// ``Unbanked``'s event), or any other record.
enum Entry<'py> {
    Route(Ev),
    Unbanked(Ev),
    /// a registration of a ``RegBatch``: post, cluster
    Register(Box<[u8]>, Arc<str>),
    Item(Bound<'py, PyAny>),
}

/// The event id as the held events' dict keys it (a Python ``str``).
fn event_id<'py>(py: Python<'py>, ev: &Ev) -> PyResult<Bound<'py, PyAny>> {
    match ev {
        Ev::Core(c) => Ok(PyString::new(py, c.event_id()).into_any()),
        Ev::Py(e) => e.bind(py).getattr(intern!(py, "event_id")),
    }
}

/// What the batch gave so far, until Python takes it.
#[derive(Default)]
struct Out {
    /// routed events, per clusters partition
    clusters: Vec<Vec<Sent>>,
    /// for the index's owner (a partition that is not): unbanked uploads, sent on as one
    /// `EvBatch` (the `Unbanked` records it stands for)
    to_index: Vec<Ev>,
    /// the latest event time of each unbanked cluster routed to, in first-touch order
    /// (a partition that is not the owner's, for its `Touch` records), and whether a
    /// released event touched it (the record is marked so: the worker copies those)
    touched: Vec<(Py<PyString>, i64, bool)>,
    /// where each is in `touched` (keyed as the core's tables, `Keyed`: with SipHash this
    /// call, `note_touch`, was 52.3 M instructions of 100,000 events of a worker's, 28.6 now)
    touched_at: HashMap<Box<str>, usize, Keyed>,
    /// this batch's unbanked uploads, until the end of its items
    deferred: Vec<Ev>,
    /// events held, in order (an event released since may be among them: see `take`)
    held_add: Vec<Ev>,
    /// the ids of events released (Python's ``str``s)
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
/// ``None``) and its held events (`Held`: Python asks for their count and, for a
/// snapshot, the events). ``host`` (the ``ResolvePartition``) is given
/// to each call: ``_classify``, ``_refused``, ``_unsignalled`` and ``_assign_video`` are
/// called on it.
#[pyclass(module = "streams._core")]
pub struct ResolveLoop {
    routing: Routing,
    held: Held,
    partitions: u32,
    classes: Classes,
    /// held reshares, by `(ts, event id)`
    waiting: BinaryHeap<Reverse<Waiting>>,
    /// at the index's owner: unbanked uploads waiting to be clustered, by `(ts, event id)`
    unbanked: BinaryHeap<Reverse<Waiting>>,
    out: Out,
    /// the events held at a place before it were held before the last :meth:`seal`
    sealed: u64,
    /// at the index's owner: the places of the unbanked uploads held since the last
    /// :meth:`seal`, not logged yet (:meth:`seal` gives those still held, for the log)
    unlogged: Vec<u64>,
}

/// A clusters partition's routed events as the items Python sends on: each run of compiled
/// events one `EvBatch`, a `Routed` record as it is, in order.
fn sent_items(py: Python<'_>, sent: Vec<Sent>) -> PyResult<Vec<Py<PyAny>>> {
    let mut items = Vec::new();
    let mut run: Vec<(Ev, Py<PyString>)> = Vec::new();
    for s in sent {
        match s {
            Sent::Event(ev, cluster) => run.push((ev, cluster)),
            Sent::Record(r) => {
                if !run.is_empty() {
                    let batch = EvBatch::routed(std::mem::take(&mut run));
                    items.push(Py::new(py, batch)?.into_any());
                }
                items.push(r);
            }
        }
    }
    if !run.is_empty() {
        items.push(Py::new(py, EvBatch::routed(run))?.into_any());
    }
    Ok(items)
}

/// A heap that a flood filled gives its room back once mostly empty (amortized: it
/// shrinks to twice what it holds when under a quarter full).
fn trim(heap: &mut BinaryHeap<Reverse<Waiting>>) {
    if heap.capacity() > 64 && heap.len() < heap.capacity() / 4 {
        heap.shrink_to(2 * heap.len());
    }
}

fn waiting(ts: i64, key: Box<[u8]>) -> Reverse<Waiting> {
    Reverse(Waiting { ts, key })
}

/// What a registration released is sent to its clusters partition; an unbanked
/// cluster's event is noted in the index (the owner's) or for it (the others').
impl Deliver for ResolveLoop {
    fn routing(&self) -> &Routing {
        &self.routing
    }

    /// (an event a registration released: marked if it was held before the last seal)
    fn touch(&mut self, py: Python<'_>, cluster: &Cluster, event: &Ev, ts: i64) -> PyResult<()> {
        let before = !self.owner() && self.held_before(py, event)?;
        self.note_touch(py, cluster, ts, before)
    }

    fn deliver(&mut self, py: Python<'_>, cluster: &Cluster, event: Ev, _ts: i64) -> PyResult<()> {
        let cluster = &cluster.py_str(py);
        self.out.orphans = true;
        let key = id_key(py, &event)?;
        self.unhold(py, &key, || event_id(py, &event))?;
        self.emit(Sent::Event(event, cluster.clone().unbind()), cluster)
    }
}

impl ResolveLoop {
    fn owner(&self) -> bool {
        self.routing.index.is_some()
    }

    /// Whether ``event`` is held here since before the last :meth:`seal`.
    fn held_before(&self, py: Python<'_>, event: &Ev) -> PyResult<bool> {
        let key = id_key(py, event)?;
        Ok(self.held.ids.get(&key).is_some_and(|&at| at < self.sealed))
    }

    /// An event of the unbanked cluster ``cluster`` at ``ts``: in the index (the owner's),
    /// or noted for a `Touch` to it, marked if a replacement would not route the event
    /// again (``released``: held since before the last seal; or the held events of a log
    /// read back, the map's mark, `PostClusters::released`).
    fn note_touch(
        &mut self,
        py: Python<'_>,
        cluster: &Cluster,
        ts: i64,
        released: bool,
    ) -> PyResult<()> {
        if self.owner() {
            self.routing.touch(py, &cluster.cid, ts);
            return Ok(());
        }
        let released = released || self.routing.routes.borrow(py).inner.posts.released;
        let cluster = &cluster.py_str(py);
        let id = cluster.to_str()?;
        match self.out.touched_at.get(id) {
            Some(&i) => {
                let (_, last, marked) = &mut self.out.touched[i];
                *last = (*last).max(ts);
                *marked |= released;
            }
            None => {
                self.out
                    .touched_at
                    .insert(Box::from(id), self.out.touched.len());
                self.out
                    .touched
                    .push((cluster.clone().unbind(), ts, released));
            }
        }
        Ok(())
    }

    /// A `Routed` record of ``event`` to ``cluster`` (no match): for an item with no place
    /// here, which Python dead-letters as a record.
    fn routed<'py>(
        &self,
        py: Python<'py>,
        event: Bound<'py, PyAny>,
        cluster: &Bound<'py, PyString>,
    ) -> PyResult<Bound<'py, PyAny>> {
        record(
            self.classes.routed.bind(py),
            &[
                (intern!(py, "event"), event),
                (intern!(py, "cluster_id"), cluster.clone().into_any()),
                (intern!(py, "match"), py.None().into_bound(py)),
            ],
        )
    }

    /// A routed event, to its clusters partition (the caller has it no longer held here).
    fn emit(&mut self, sent: Sent, cluster: &Bound<'_, PyString>) -> PyResult<()> {
        let k = with_id(cluster, |c| partition_for(c, self.partitions))? as usize;
        self.out.clusters[k].push(sent);
        self.out.routed += 1;
        Ok(())
    }

    /// The event ``key`` names is no longer held (``eid``: its id, for the log's releases).
    fn unhold<'py>(
        &mut self,
        _py: Python<'py>,
        key: &[u8],
        eid: impl FnOnce() -> PyResult<Bound<'py, PyAny>>,
    ) -> PyResult<()> {
        if self.held.remove(key).is_some() {
            self.out.held_del.push(eid()?.unbind());
        }
        Ok(())
    }

    /// A rejection (Python's record), dead-lettered by Python; no longer held here.
    fn reject(&mut self, py: Python<'_>, rejection: Bound<'_, PyAny>) -> PyResult<()> {
        let eid = rejection.getattr(intern!(py, "event_id"))?;
        if !eid.is_none() {
            let key: Box<[u8]> = with_id(&eid, |k| Box::from(k))?;
            self.unhold(py, &key, || Ok(eid.clone()))?;
        }
        self.out.dead.push(rejection.unbind());
        Ok(())
    }

    /// ``post`` (its bytes) is routed to ``cluster``: mapped, and what waited for it released.
    fn register(
        &mut self,
        py: Python<'_>,
        post: &[u8],
        cluster: &Bound<'_, PyString>,
    ) -> PyResult<()> {
        Routing::register(self, py, post, &Cluster::of_py(cluster)?)
    }

    /// An upload routed to ``cluster`` (``sent``: it, for its clusters partition), its post
    /// registered.
    fn upload_routed(
        &mut self,
        py: Python<'_>,
        post: Vec<u8>,
        sent: Sent,
        cluster: &Bound<'_, PyString>,
    ) -> PyResult<()> {
        self.emit(sent, cluster)?;
        self.register(py, &post, cluster)
    }

    /// At the index's owner: an unbanked upload held until it is clustered (once).
    fn wait_for_index(&mut self, py: Python<'_>, event: Ev) -> PyResult<()> {
        let key = id_key(py, &event)?;
        if self.held.contains(&key) {
            self.out.duplicates += 1; // redelivered while it waits
            return Ok(());
        }
        let ts = event.ts_ms(py)?;
        // logged as the next checkpoint begins if still held then (most are clustered first)
        self.unlogged.push(self.held.next);
        self.held.insert(key.clone(), event);
        self.unbanked.push(waiting(ts, key));
        Ok(())
    }

    /// One event to route (``key``: its id; not held here already); ``classified``: an
    /// upload's bank match or allow-list cluster (a `Routed`), or ``None``. Not held, it
    /// needs no release from the held events when it is sent on.
    fn route_event(
        &mut self,
        py: Python<'_>,
        host: &Bound<'_, PyAny>,
        event: Ev,
        key: Box<[u8]>,
        classified: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let ts = event.ts_ms(py)?;
        match event.kind(py)? {
            Kind::Upload => {
                let post = event.with_posts(py, |p, _| p.to_vec())?;
                match classified {
                    Some(routed) => {
                        let cluster = routed
                            .getattr(intern!(py, "cluster_id"))?
                            .cast_into::<PyString>()?;
                        self.upload_routed(py, post, Sent::Record(routed.unbind()), &cluster)?;
                    }
                    None => {
                        let signalled = match event.image(py)? {
                            Some(image) => self.routing.signalled(&image),
                            None => false,
                        };
                        let cluster = if signalled {
                            None
                        } else {
                            let c = host
                                .call_method1(intern!(py, "_unsignalled"), (event.to_py(py)?,))?;
                            (!c.is_none())
                                .then(|| c.cast_into::<PyString>())
                                .transpose()?
                        };
                        match cluster {
                            None => self.out.deferred.push(event),
                            Some(cluster) => {
                                let sent = Sent::Event(event, cluster.clone().unbind());
                                self.upload_routed(py, post, sent, &cluster)?;
                            }
                        }
                    }
                }
            }
            kind => match self.routing.reshare(py, &event, kind == Kind::Share, ts)? {
                Reshare::Found(cluster, released) => {
                    // each event is sent with its cluster's string: made once here
                    let cluster = cluster.with_py(py);
                    let id = cluster.py_str(py);
                    self.emit(Sent::Event(event, id.clone().unbind()), &id)?;
                    if cluster.is_unbanked() {
                        self.note_touch(py, &cluster, ts, false)?;
                    }
                    Routing::release(self, py, &cluster, released)?;
                }
                Reshare::Held => {
                    self.out.held_add.push(event.clone_ref(py));
                    self.held.insert(key.clone(), event);
                    self.waiting.push(waiting(ts, key));
                    self.out.held += 1;
                    self.out.orphans = true;
                }
                Reshare::Refused(reason, held, target) => {
                    let args = (&target, event.to_py(py)?, reason, held);
                    let r = host.call_method1(intern!(py, "_refused"), args)?;
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
        key: &[u8],
        ev: Ev,
    ) -> PyResult<()> {
        let ts = ev.ts_ms(py)?;
        let cluster = match ev.image(py)? {
            Some(image) if !image.video => self
                .routing
                .assign_image_released(py, &image, ts)?
                .with_py(py)
                .py_str(py),
            _ => host
                .call_method1(intern!(py, "_assign_video"), (ev.to_py(py)?,))?
                .cast_into::<PyString>()?,
        };
        // no longer held, and not named in the log's releases: `cluster_due`'s bound says it
        self.held.remove(key);
        let post = ev.with_posts(py, |p, _| p.to_vec())?;
        self.upload_routed(
            py,
            post,
            Sent::Event(ev, cluster.clone().unbind()),
            &cluster,
        )
    }

    /// `cluster_due`'s walk of the held uploads up to ``until_ms``. An upload held since
    /// before the last :meth:`seal` has its post's registration marked (``ambient``: the
    /// map's mark otherwise): the input that brought it may be committed, and this
    /// partition's log says it is clustered. One held and clustered since is not: its input
    /// is read again after a kill, passed on again, held and clustered again (an owner
    /// that came to drop an upload it clustered, redelivered, would have to register its
    /// post again).
    fn cluster_held(
        &mut self,
        py: Python<'_>,
        host: &Bound<'_, PyAny>,
        until_ms: i64,
        ambient: bool,
    ) -> PyResult<()> {
        while self
            .unbanked
            .peek()
            .is_some_and(|Reverse(w)| w.ts <= until_ms)
        {
            let Some(Reverse(w)) = self.unbanked.pop() else {
                break;
            };
            // one lookup of the id: its place says whether it was held before the seal
            let Some(&at) = self.held.ids.get(&w.key) else {
                continue;
            };
            let Some(ev) = self.held.events.get(&at) else {
                continue;
            };
            if ev.kind(py)? == Kind::Upload {
                let ev = ev.clone_ref(py);
                self.routing.routes.borrow_mut(py).inner.posts.released =
                    ambient || at < self.sealed;
                self.cluster_upload(py, host, &w.key, ev)?;
                let to = &mut self.out.clustered_to;
                *to = Some(to.map_or(until_ms, |t| t.max(until_ms)));
            }
        }
        Ok(())
    }

    /// The items of a batch of envelopes, in order, an `EvBatch` of events to route
    /// opened (a routed one has no place here: its records, dead-lettered).
    fn entries<'py>(
        &self,
        py: Python<'py>,
        envelopes: &Bound<'py, PyList>,
    ) -> PyResult<Vec<Entry<'py>>> {
        let to_route = self.classes.to_route.bind(py);
        let mut entries = Vec::new();
        for items in envelopes.iter() {
            for item in items.cast_into::<PyList>()?.iter() {
                if let Ok(batch) = item.cast::<EvBatch>() {
                    let batch = batch.get();
                    match &batch.clusters {
                        None if batch.for_index => {
                            for ev in &batch.events {
                                entries.push(if self.owner() {
                                    Entry::Unbanked(ev.clone_ref(py))
                                } else {
                                    // no place here: its record, dead-lettered
                                    let unbanked = self.classes.unbanked.bind(py);
                                    Entry::Item(unbanked.call1((ev.to_py(py)?,))?)
                                });
                            }
                        }
                        None => entries
                            .extend(batch.events.iter().map(|e| Entry::Route(e.clone_ref(py)))),
                        Some(clusters) => {
                            for (ev, cluster) in batch.events.iter().zip(clusters) {
                                let r = self.routed(py, ev.to_py(py)?, cluster.bind(py))?;
                                entries.push(Entry::Item(r));
                            }
                        }
                    }
                } else if let Ok(batch) = item.cast::<RegBatch>() {
                    entries.extend(
                        (batch.get().regs.iter())
                            .map(|(post, cluster)| Entry::Register(post.clone(), cluster.clone())),
                    );
                } else if item.get_type().is(to_route) {
                    entries.push(Entry::Route(Ev::from_py(
                        &item.getattr(intern!(py, "event"))?,
                    )));
                } else {
                    entries.push(Entry::Item(item));
                }
            }
        }
        Ok(entries)
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
            held: Held::default(),
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
            sealed: 0,
            unlogged: Vec::new(),
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
        let entries = self.entries(py, envelopes)?;
        // the uploads to match (not held here: a redelivered one waits once), by position,
        // and each event's id as the held events key it
        let mut uploads: Vec<Line> = Vec::new();
        let mut slots: Vec<Option<usize>> = Vec::with_capacity(entries.len());
        let mut ids: Vec<Option<Box<[u8]>>> = Vec::with_capacity(entries.len());
        for entry in &entries {
            let (mut slot, mut id) = (None, None);
            if let Entry::Route(ev) = entry {
                let key = id_key(py, ev)?;
                if ev.kind(py)? == Kind::Upload && !self.held.contains(&key) {
                    slot = Some(uploads.len());
                    uploads.push(Line::Event(ev.clone_ref(py)));
                }
                id = Some(key);
            }
            slots.push(slot);
            ids.push(id);
        }
        // matched against the banks as replay matches them (``Routing::screen``)
        let mut classified = self.routing.screen(py, host, &uploads, &banks)?;
        drop(uploads);
        let owner = self.owner();
        let registration = self.classes.registration.bind(py).clone();
        let forget = self.classes.forget.bind(py).clone();
        let unbanked = self.classes.unbanked.bind(py).clone();
        let touch = self.classes.touch.bind(py).clone();
        // Safe to give the GIL up between entries: no cell is borrowed across it (each
        // entry's borrows end with it), and this loop is `&mut self`'s, borrowed through
        // its cell for the call: another thread asking for it would be refused, not let
        // in (none does: the partition is this worker loop's).
        let mut turns = Turns::new();
        for ((entry, slot), eid) in entries.into_iter().zip(slots).zip(ids) {
            turns.tick(py);
            let item = match entry {
                Entry::Route(ev) => {
                    let Some(key) = eid else {
                        continue; // (every event to route has its id)
                    };
                    if self.held.contains(&key) {
                        self.out.duplicates += 1; // redelivered while it waits: it waits once
                        continue;
                    }
                    let upload = if ev.kind(py)? != Kind::Upload {
                        None
                    } else {
                        let c = match slot {
                            Some(i) => classified.get_mut(i).and_then(Option::take),
                            // held when the batch was matched, no longer: matched alone
                            None => self
                                .routing
                                .screen(py, host, &[Line::Event(ev.clone_ref(py))], &banks)?
                                .pop()
                                .flatten(),
                        };
                        c.map(|c| c.into_bound(py))
                    };
                    self.route_event(py, host, ev, key, upload)?;
                    continue;
                }
                Entry::Unbanked(ev) => {
                    self.wait_for_index(py, ev)?;
                    continue;
                }
                Entry::Register(post, cluster) => {
                    Routing::register(self, py, &post, &Cluster::of_cid(Cid::of(&cluster)))?;
                    continue;
                }
                Entry::Item(item) => item,
            };
            let kind = item.get_type();
            if kind.is(&registration) {
                let post = item.getattr(intern!(py, "post_id"))?;
                let cluster = item
                    .getattr(intern!(py, "cluster_id"))?
                    .cast_into::<PyString>()?;
                let post = with_id(&post, |p| p.to_vec())?;
                self.register(py, &post, &cluster)?;
            } else if kind.is(&forget) {
                let post = item.getattr(intern!(py, "post_id"))?;
                {
                    let mut routes = self.routing.routes.borrow_mut(py);
                    with_id(&post, |p| routes.inner.posts.remove(p))?;
                }
                self.out.forgot.push(post.unbind());
            } else if owner && kind.is(&unbanked) {
                self.wait_for_index(py, Ev::from_py(&item.getattr(intern!(py, "event"))?))?;
            } else if owner && kind.is(&touch) {
                let cluster = item.getattr(intern!(py, "cluster_id"))?;
                let ts: i64 = item.getattr(intern!(py, "ts_ms"))?.extract()?;
                let cluster = Cid::of(cluster.cast::<PyString>()?.to_str()?);
                self.routing.touch(py, &cluster, ts);
            } else {
                self.out.dead.push(item.unbind());
            }
        }
        for ev in std::mem::take(&mut self.out.deferred) {
            if owner {
                self.wait_for_index(py, ev)?;
            } else {
                self.out.to_index.push(ev);
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
        let ambient = self.routing.routes.borrow(py).inner.posts.released;
        let done = self.cluster_held(py, host, until_ms, ambient);
        self.routing.routes.borrow_mut(py).inner.posts.released = ambient;
        trim(&mut self.unbanked);
        done
    }

    /// What the batch gave, and forget it: ``(routed events per clusters partition, items
    /// for the index's owner, events held (an ``EvBatch``), event ids released, the time
    /// every upload held at or before was clustered (the owner's; ``None``: none was), posts
    /// forgotten, rejections and items with no place here, events routed, duplicates,
    /// reshares held, whether the held orphans changed)``.
    ///
    /// The events held and released are as the log writes them: each event once, as the
    /// batch left it, so that no order of folding reads back wrong an event released then
    /// held again. What is held now says which came last: only a batch that released
    /// anything (or clustered uploads, which the log names by a bound) is looked at again.
    #[allow(clippy::type_complexity)]
    fn take<'py>(
        &mut self,
        py: Python<'py>,
    ) -> PyResult<(
        Vec<Vec<Py<PyAny>>>,
        Vec<Py<PyAny>>,
        Py<EvBatch>,
        Vec<Py<PyAny>>,
        Option<i64>,
        Vec<Py<PyAny>>,
        Vec<Py<PyAny>>,
        u64,
        u64,
        u64,
        bool,
    )> {
        let out = std::mem::take(&mut self.out);
        if self.unlogged.len() > 64 + 2 * self.held.len() {
            // no checkpoint for a while (a benchmark of the stages): those released go
            let held = &self.held.events;
            self.unlogged.retain(|at| held.contains_key(at));
        }
        let mut to_index = Vec::with_capacity(1 + out.touched.len());
        if !out.to_index.is_empty() {
            to_index.push(Py::new(py, EvBatch::unbanked(out.to_index))?.into_any());
        }
        // built as `Touch.__init__` would set its fields, without running it: a frozen
        // dataclass's `__init__` (three `object.__setattr__` in Python) cost 5,400
        // instructions a touch, a sixth of what the stage's `take` spent
        let touch = self.classes.touch.bind(py);
        for (cluster, ts, released) in out.touched {
            let fields = [
                (intern!(py, "cluster_id"), cluster.into_bound(py).into_any()),
                (intern!(py, "ts_ms"), ts.into_bound_py_any(py)?),
                (
                    intern!(py, "released"),
                    PyBool::new(py, released).to_owned().into_any(),
                ),
            ];
            to_index.push(record(touch, &fields)?.unbind());
        }
        let mut clusters = Vec::with_capacity(self.partitions as usize);
        for sent in out.clusters {
            clusters.push(sent_items(py, sent)?);
        }
        clusters.resize_with(self.partitions as usize, Vec::new);
        let (mut held_add, mut held_del) = (out.held_add, out.held_del);
        if !held_add.is_empty() && (!held_del.is_empty() || out.clustered_to.is_some()) {
            let mut seen = HashSet::with_hasher(Keyed::default());
            let mut now = Vec::new();
            for ev in &held_add {
                let key = id_key(py, ev)?;
                if let Some(held) = self.held.get(&key) {
                    if seen.insert(key) {
                        now.push(held.clone_ref(py));
                    }
                }
            }
            held_add = now;
            seen.clear();
            let mut released = Vec::new();
            for eid in held_del {
                let key: Box<[u8]> = with_id(eid.bind(py), |k| Box::from(k))?;
                if !self.held.contains(&key) && seen.insert(key) {
                    released.push(eid);
                }
            }
            held_del = released;
        }
        Ok((
            clusters,
            to_index,
            Py::new(py, EvBatch::to_route(held_add))?,
            held_del,
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
    fn waiting_front(&mut self, settled: i64) -> Option<i64> {
        let mut front = None;
        while let Some(Reverse(w)) = self.waiting.peek() {
            if self.held.contains(&w.key) && w.ts - 1 > settled {
                front = Some(w.ts);
                break;
            }
            self.waiting.pop();
        }
        trim(&mut self.waiting);
        front
    }

    /// A checkpoint begins: the events held now were held before it. Released from now on,
    /// their posts' registrations for other partitions, and their touches, are marked
    /// (``RegBatch.released``, ``Touch.released``): the input that brought them may be
    /// committed, so a replacement would not route them again
    /// (``streams.runtime.topology.Topology._copy_handed``).
    ///
    /// Returns the unbanked uploads held at the index's owner since the last seal and
    /// still held, in the order held, for the log's ``h+``: a batch's delta leaves them
    /// out. One clustered before a checkpoint begins is never logged (its input, read
    /// since the last checkpoint began, is committed only by a later one, which waits for
    /// the cluster log that holds it); one still held when it begins is logged then,
    /// before that checkpoint's commit.
    fn seal(&mut self, py: Python<'_>) -> EvBatch {
        self.sealed = self.held.next;
        self.routing.routes.borrow_mut(py).inner.orphans.seal();
        let held = &self.held.events;
        let events = (self.unlogged.drain(..))
            .filter_map(|at| held.get(&at).map(|ev| ev.clone_ref(py)))
            .collect();
        EvBatch::to_route(events)
    }

    /// How many events are held here.
    #[getter]
    fn held_count(&self) -> usize {
        self.held.len()
    }

    /// The events held here, in the order held (a snapshot's ``h+``).
    fn held_events(&self, py: Python<'_>) -> EvBatch {
        EvBatch::to_route(self.held.events.values().map(|e| e.clone_ref(py)).collect())
    }

    /// These events (ids) are no longer held (expired orphans): those that were are
    /// released in the log's delta, as the batch's own releases are.
    fn unhold_ids(&mut self, py: Python<'_>, ids: &Bound<'_, PyList>) -> PyResult<()> {
        for eid in ids.iter() {
            let key: Box<[u8]> = with_id(&eid, |k| Box::from(k))?;
            self.unhold(py, &key, || Ok(eid.clone()))?;
        }
        Ok(())
    }

    /// At the index's owner: the event time of the oldest unbanked upload not clustered
    /// yet (``None``: none).
    #[getter]
    fn unclustered(&self) -> Option<i64> {
        self.unbanked.peek().map(|Reverse(w)| w.ts)
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.routing.traverse(&visit)?;
        for ev in self.held.events.values() {
            ev.traverse(&visit)?;
        }
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
        let o = &self.out;
        for sent in o.clusters.iter().flatten() {
            match sent {
                Sent::Event(ev, cluster) => {
                    ev.traverse(&visit)?;
                    visit.call(cluster)?;
                }
                Sent::Record(r) => visit.call(r)?,
            }
        }
        for ev in o.deferred.iter().chain(&o.held_add).chain(&o.to_index) {
            ev.traverse(&visit)?;
        }
        for obj in o.held_del.iter().chain(&o.forgot).chain(&o.dead) {
            visit.call(obj)?;
        }
        for (cluster, _, _) in &o.touched {
            visit.call(cluster)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.waiting.clear();
        self.unbanked.clear();
        self.held.clear();
        self.unlogged.clear();
        self.out = Out::default();
    }
}
