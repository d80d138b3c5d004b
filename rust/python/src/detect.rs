//! The detector's side of a compiled loop, shared by replay (`ReplayLoop`) and a
//! streaming clusters partition (`ClusterLoop`): routed events held in the reorder
//! buffer until the watermark passes them, then applied in `(ts, event_id)` order,
//! unbanked clusters' events in `UnbankedClusters` (idle ones evicted first, their
//! content dropped from the detector's index, their posts forgotten), everything
//! else (a banked cluster's event, a bank change, an unbanked event at a time that
//! changes the banked side) handed to Python's detector one by one.
//!
//! One implementation: replay and the streaming stage differ only in where an
//! evicted cluster's posts go (replay's post -> cluster map, `Forgetting::Routes`;
//! a clusters partition's `Forget` records for their resolve partitions,
//! `Forgetting::Sink`) and in what feeds the buffer (a clusters partition reads the
//! records of its topic itself, `ClusterLoop::read`: no `Routed` per unbanked event).

use std::collections::{BTreeMap, HashSet};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyList, PySet, PyString, PyType};
use pyo3::{intern, PyTraverseError, PyVisit};

use viralwatch_core::content::{Cid, ClusterId, View, DETECTOR};
use viralwatch_core::posts::partition_for;
use viralwatch_core::reorder::ReorderBuffer;
use viralwatch_core::unbanked::{Kind, Outcome, Store};
use viralwatch_core::wire::{write_str, Item as WireItem, Parts};

use crate::content::PyContentSignals;
use crate::dedupe::with_id;
use crate::ev::{Ev, EvBatch, Image};
use crate::posts::PyPostRoutes;
use crate::routing::{image_signals, low_pdq, Cluster};
use crate::unbanked::{crossing_row, CrossingRow, UnbankedClusters};
use crate::wire_read::{by_partition, RoutedItem, WireReader};
use crate::{record, Turns};

/// What the reorder buffer holds: a routed event (its cluster, read once where it was
/// routed, and the `Routed` record when one was made: a banked or allow-listed upload in
/// replay; in a stream, a banked cluster's event, or one handed over in-process as a
/// record), or a timed bank change. No Python string of the cluster's id: one is made
/// for what Python is given (rare), and an event's time is its own (the buffer keeps it
/// too), so that an item is no larger than when it held the id's string.
pub(crate) enum Item {
    Event {
        cluster: Cid,
        event: Ev,
        routed: Option<Py<PyAny>>,
    },
    Bank(Py<PyAny>),
}

impl Item {
    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Item::Event { event, routed, .. } => {
                event.traverse(visit)?;
                if let Some(r) = routed {
                    visit.call(r)?;
                }
            }
            Item::Bank(u) => visit.call(u)?,
        }
        Ok(())
    }
}

/// A cluster id as Python reads it (made where Python is given one).
fn py_id<'py>(py: Python<'py>, cluster: &Cid) -> Bound<'py, PyString> {
    cluster.with_str(|s| PyString::new(py, s))
}

/// The store's results not yet handed to Python, and the loop's own counters.
#[derive(Default)]
pub(crate) struct Pending {
    /// the clusters evicted, in order (their posts forgotten, their content dropped from
    /// the detector's index already)
    pub(crate) evicted: Vec<ClusterId>,
    pub(crate) rejected: Vec<Py<PyAny>>,
    pub(crate) crossings: Vec<CrossingRow>,
    pub(crate) held: u64,
    pub(crate) duplicates: u64,
    pub(crate) late: u64,
    pub(crate) created: u64,
    pub(crate) kinds: [u64; 3],
    /// of the uploads the store applied new, those counted with an unmatched upload
    /// (replay's: see `Unmatched`; `kinds[0]` counts them all)
    pub(crate) unmatched: Unmatched,
    pub(crate) latest: Option<i64>,
}

impl Pending {
    fn effects(&self) -> bool {
        !(self.evicted.is_empty() && self.rejected.is_empty() && self.crossings.is_empty())
    }

    fn any(&self) -> bool {
        self.effects()
            || self.held + self.duplicates + self.late + self.created > 0
            || self.kinds.iter().any(|&k| k > 0)
            || self.unmatched.uploads > 0
            || self.latest.is_some()
    }
}

/// The posts of evicted clusters a clusters partition must have its resolve partitions
/// forget (`["f", post]` records), kept as bytes by partition until the batch's end: no
/// Python string per post.
#[pyclass(module = "streams._core")]
pub struct ForgetSink {
    partitions: u32,
    posts: BTreeMap<u32, Vec<u8>>,
}

impl ForgetSink {
    fn add(&mut self, post: &[u8]) {
        let out = self
            .posts
            .entry(partition_for(post, self.partitions))
            .or_default();
        out.extend_from_slice(if out.is_empty() {
            b"[\"f\","
        } else {
            b",[\"f\","
        });
        write_str(out, &String::from_utf8_lossy(post));
        out.push(b']');
    }
}

#[pymethods]
impl ForgetSink {
    #[new]
    fn new(partitions: u32) -> Self {
        Self {
            partitions: partitions.max(1),
            posts: BTreeMap::new(),
        }
    }

    /// Posts forgotten elsewhere (a banked cluster's, evicted by Python), after those held.
    fn extend(&mut self, posts: &Bound<'_, PyAny>) -> PyResult<()> {
        for post in posts.try_iter()? {
            with_id(&post?, |p| self.add(p))?;
        }
        Ok(())
    }

    /// Every post held, as one envelope per resolve partition (``{"i": [["f", post],
    /// ...]}``, what ``Envelope([Forget(post), ...]).pack()`` writes), and none held after.
    fn take<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for (partition, items) in std::mem::take(&mut self.posts) {
            let mut env = Vec::with_capacity(items.len() + 8);
            env.extend_from_slice(b"{\"i\":[");
            env.extend_from_slice(&items);
            env.extend_from_slice(b"]}");
            out.set_item(partition, PyBytes::new(py, &env))?;
        }
        Ok(out)
    }

    /// Resolve partitions with posts to forget.
    fn __len__(&self) -> usize {
        self.posts.len()
    }
}

/// Where an evicted unbanked cluster's posts go.
pub(crate) enum Forgetting {
    /// replay: out of the router's post -> cluster map
    Routes(Py<PyPostRoutes>),
    /// a clusters partition: to its resolve partitions, as `Forget` records
    Sink(Py<ForgetSink>),
}

impl Forgetting {
    fn of(target: &Bound<'_, PyAny>) -> PyResult<Self> {
        if let Ok(routes) = target.cast::<PyPostRoutes>() {
            return Ok(Self::Routes(routes.clone().unbind()));
        }
        match target.cast::<ForgetSink>() {
            Ok(sink) => Ok(Self::Sink(sink.clone().unbind())),
            Err(_) => Err(PyTypeError::new_err(
                "evicted posts go to a PostRoutes or a ForgetSink",
            )),
        }
    }

    fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        match self {
            Self::Routes(r) => visit.call(r),
            Self::Sink(s) => visit.call(s),
        }
    }

    /// Evict from `store` what is idle at `cut_ms` and touched before `barrier`
    /// ([`Store::evict_each`]), each cluster's posts forgotten and its content dropped from
    /// the detector's index (in its `view`: replay's router shares it) as it goes, its id
    /// kept in `ids`: no copy of a post or an id's text. Whether it stopped at one that
    /// is not idle.
    fn evict(
        &self,
        py: Python<'_>,
        store: &mut Store<Ev>,
        (content, view): (&Py<PyContentSignals>, View),
        (cut_ms, barrier): (i64, u64),
        ids: &mut Vec<ClusterId>,
    ) -> bool {
        let mut content = content.borrow_mut(py);
        let mut gone = |id: &ClusterId| {
            content
                .inner
                .forget_cluster_in(&Cid::from_id(id.clone()), view);
            ids.push(id.clone());
        };
        match self {
            Self::Routes(routes) => {
                let mut routes = routes.borrow_mut(py);
                store.evict_each(cut_ms, barrier, |id, posts| {
                    for post in posts {
                        routes.inner.posts.remove(post);
                    }
                    gone(id);
                })
            }
            Self::Sink(sink) => {
                let mut sink = sink.borrow_mut(py);
                store.evict_each(cut_ms, barrier, |id, posts| {
                    for post in posts {
                        sink.add(post);
                    }
                    gone(id);
                })
            }
        }
    }
}

/// Evicted clusters' ids as Python reads them (a `Sequence[str]`'s length and iteration):
/// kept compact ([`ClusterId`]), each id's text made only if Python iterates them, which
/// it does only while a bank change or an early firing waits for some cluster (rare).
/// Replay's final evictions made a Python string of each of 70,000 ids, unread.
#[pyclass(module = "streams._core", frozen, sequence)]
pub struct ClusterIds {
    ids: Vec<ClusterId>,
}

impl ClusterIds {
    pub(crate) fn new(ids: Vec<ClusterId>) -> Self {
        Self { ids }
    }
}

#[pymethods]
impl ClusterIds {
    fn __len__(&self) -> usize {
        self.ids.len()
    }

    fn __getitem__(&self, i: isize) -> PyResult<String> {
        let n = self.ids.len() as isize;
        let j = if i < 0 { i + n } else { i };
        if !(0..n).contains(&j) {
            return Err(pyo3::exceptions::PyIndexError::new_err(
                "ClusterIds index out of range",
            ));
        }
        Ok(self.ids[j as usize].to_string())
    }
}

/// Evict, oldest first, the unbanked clusters idle at ``cut_ms`` and touched before
/// ``barrier`` (``UnbankedClusters.evict``), their posts forgotten in ``forget`` (replay's
/// ``PostRoutes``, or a clusters partition's ``ForgetSink``) and their content in
/// ``content`` (in its ``view``) here: ``(stopped at one that is not idle, [cluster])``.
/// The detector evicts this way in a compiled loop (no Python string per post, no call
/// per cluster).
#[pyfunction]
#[pyo3(signature = (store, forget, content, cut_ms, barrier, view = 0))]
pub fn evict_unbanked(
    py: Python<'_>,
    store: &Bound<'_, UnbankedClusters>,
    forget: &Bound<'_, PyAny>,
    content: Py<PyContentSignals>,
    cut_ms: i64,
    barrier: u64,
    view: View,
) -> PyResult<(bool, ClusterIds)> {
    let view = view_of(view)?;
    let forgetting = Forgetting::of(forget)?;
    let mut ids = Vec::new();
    let stopped = forgetting.evict(
        py,
        &mut store.borrow_mut().store,
        (&content, view),
        (cut_ms, barrier),
        &mut ids,
    );
    Ok((stopped, ClusterIds::new(ids)))
}

/// A view of a content index given by Python: the owner's (0) or the detector's (1).
fn view_of(view: View) -> PyResult<View> {
    if view > DETECTOR {
        return Err(PyValueError::new_err(format!(
            "view must be 0 or 1, not {view}"
        )));
    }
    Ok(view)
}

/// The detector's side of a compiled loop (see the module doc). ``host`` (replay's
/// ``Pipeline``, a ``ClusterPartition``) is given to each call: ``_apply_one``,
/// ``_limits`` and ``_settle`` are called on it.
pub(crate) struct Detect {
    pub(crate) buffer: ReorderBuffer<Item>,
    unbanked: Py<UnbankedClusters>,
    /// the detector's index of live clusters' content (which a bank change concerns), and
    /// the view of it that is the detector's (replay's router shares the index)
    content: (Py<PyContentSignals>, View),
    banked: Py<PyDict>,
    routed_cls: Py<PyType>,
    forgetting: Forgetting,
    min_pdq_quality: i64,
    /// the detector's `(stop_ms, barrier)` (`None`: Python may have changed them since)
    pub(crate) limits: Option<(i64, u64)>,
    pub(crate) pending: Pending,
    /// a clusters partition's uploads as received (`None`: replay's loop, whose detector
    /// counts them as it applies them)
    received: Option<Received>,
}

/// A clusters partition's count of the uploads it receives, each once: one already held
/// here (its id in `held`) or applied to its cluster is a redelivery (its input read
/// again after a kill), not counted. Not counted where the detector applies them: a
/// replacement applies again every event its log gives back (`ClusterPartition.restore`),
/// those its predecessor applied (and counted) included.
#[derive(Default)]
pub(crate) struct Received {
    /// the ids of the uploads held in the buffer
    held: HashSet<Box<[u8]>>,
    /// uploads new here with no bank match (and of them, those of low quality and those
    /// the allow-list took: a resolve partition counted those each time its input was
    /// read), and the bank of each one matched
    unmatched: Unmatched,
    matched: Vec<String>,
}

/// What is counted with an upload that matched no bank, where it is counted once: the
/// upload, whether it is of low quality (`streams.router.low_quality`'s rule) and whether
/// the allow-list took it (an `a-` cluster's). One rule for both loops, which differ only
/// in where an upload is new: a clusters partition's as it receives it (`Received`: a
/// replacement applies again what its log gives back), replay's as the store applies it
/// (no kill; the simulator's lines delivered twice are applied once), and the uploads
/// the detector applies itself as replay's does (`UnbankedClusters.apply_many`'s
/// ``count_unmatched``, `unmatched_kinds`): Python does not count them again. Neither
/// router counts them: a resolve partition classifies an upload each time its input is
/// read, replay's each time a line comes.
#[derive(Default, Clone, Copy)]
pub(crate) struct Unmatched {
    pub(crate) uploads: u64,
    pub(crate) low_quality: u64,
    pub(crate) allowed: u64,
}

impl Unmatched {
    /// `image`: the event's, where the caller has read it already (a compiled event's is
    /// judged from it; otherwise it is read here, or Python judges).
    fn count(
        &mut self,
        py: Python<'_>,
        cluster: &Cid,
        event: &Ev,
        image: Option<&Image<'_>>,
        min_pdq_quality: i64,
    ) -> PyResult<()> {
        let low = match (event, image) {
            (Ev::Core(_), Some(image)) => low_pdq(image, min_pdq_quality),
            (Ev::Core(_), None) => event
                .image(py)?
                .is_some_and(|image| low_pdq(&image, min_pdq_quality)),
            (Ev::Py(ev), _) => py_low_quality(ev.bind(py))?,
        };
        self.add(cluster, low);
        Ok(())
    }

    /// One upload of `cluster` counted, of low quality or not: the allow-list's when its
    /// cluster is (an `a-` cluster's).
    pub(crate) fn add(&mut self, cluster: &Cid, low: bool) {
        self.uploads += 1;
        self.allowed += u64::from(cluster.kind_is(b'a'));
        self.low_quality += u64::from(low);
    }
}

/// Whether an unmatched upload Python made (a ``ShareEvent``) is counted low quality:
/// `streams.router.low_quality` of its content (a video's frames are Python's to judge; a
/// compiled event's PDQ is judged here, by `routing::low_pdq`, the banks' screen's test).
pub(crate) fn py_low_quality(event: &Bound<'_, PyAny>) -> PyResult<bool> {
    static RULE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let py = event.py();
    let content = event.getattr(intern!(py, "content"))?;
    if content.is_none() {
        return Ok(false);
    }
    RULE.import(py, "streams.router", "low_quality")?
        .call1((content,))?
        .is_truthy()
}

/// Of an upload of ``cluster_id`` counted unmatched where Python applies it (the detector's
/// banked side: an unbanked cluster relabelled banked), ``(low quality, allowed)``: the
/// loops' rule (`Unmatched`), in one place.
#[pyfunction]
pub fn unmatched_kinds(cluster_id: &str, event: &Bound<'_, PyAny>) -> PyResult<(u64, u64)> {
    let mut one = Unmatched::default();
    one.add(&Cid::of(cluster_id), py_low_quality(event)?);
    Ok((one.low_quality, one.allowed))
}

impl Detect {
    pub(crate) fn new(
        unbanked: Py<UnbankedClusters>,
        content: (Py<PyContentSignals>, View),
        banked: Py<PyDict>,
        routed_cls: Py<PyType>,
        forgetting: Forgetting,
        min_pdq_quality: i64,
    ) -> Self {
        Self {
            buffer: ReorderBuffer::new(),
            unbanked,
            content,
            banked,
            routed_cls,
            forgetting,
            min_pdq_quality,
            limits: None,
            pending: Pending::default(),
            received: None,
        }
    }

    /// An event received (before :meth:`push`): an upload new here is counted (see
    /// `Received`; `routed`: its record, with its bank match if it has one).
    fn receive(
        &mut self,
        py: Python<'_>,
        cluster: &Cid,
        event: &Ev,
        routed: Option<&Py<PyAny>>,
    ) -> PyResult<()> {
        let Some(rx) = self.received.as_mut() else {
            return Ok(());
        };
        if event.kind(py)? != Kind::Upload {
            return Ok(());
        }
        let key: Box<[u8]> = event.with_id(py, |k| k.into())?;
        if rx.held.contains(&key) {
            return Ok(());
        }
        let applied = {
            let store = self.unbanked.borrow(py);
            if store.store.contains(cluster) {
                cluster.with_str(|c| store.store.applied(c, &key))
            } else if !cluster.kind_is(b'b') && !store.taken(cluster) {
                false // an unbanked cluster's first event: nobody's yet
            } else {
                match self.banked.bind(py).get_item(py_id(py, cluster))? {
                    // a banked cluster's (rare): its ids are Python's
                    Some(st) => st
                        .getattr(intern!(py, "event_ids"))?
                        .contains(event.to_py(py)?.getattr(intern!(py, "event_id"))?)?,
                    None => false,
                }
            }
        };
        if !applied {
            let matched = match routed {
                Some(r) => {
                    let m = r.bind(py).getattr(intern!(py, "match"))?;
                    if m.is_none() {
                        None
                    } else {
                        Some(m.getattr(intern!(py, "bank"))?.extract::<String>()?)
                    }
                }
                None => None,
            };
            match matched {
                Some(bank) => rx.matched.push(bank),
                None => rx
                    .unmatched
                    .count(py, cluster, event, None, self.min_pdq_quality)?,
            }
        }
        rx.held.insert(key);
        Ok(())
    }

    /// Hand Python what the store did (and the counters, when `all`).
    pub(crate) fn flush(&mut self, host: &Bound<'_, PyAny>, all: bool) -> PyResult<()> {
        if !(self.pending.effects() || all && self.pending.any()) {
            return Ok(());
        }
        let p = std::mem::take(&mut self.pending);
        let counts = (
            p.duplicates,
            p.late,
            p.created,
            p.kinds[0],
            p.kinds[1],
            p.kinds[2],
            p.unmatched.low_quality,
            p.unmatched.allowed,
            p.latest,
        );
        host.call_method1(
            intern!(host.py(), "_settle"),
            (
                ClusterIds::new(p.evicted),
                p.rejected,
                p.crossings,
                p.held,
                counts,
            ),
        )?;
        Ok(())
    }

    /// Give one released item to Python's detector (a banked cluster's event, a bank change,
    /// an unbanked event at a time that changes the banked side).
    fn python_apply(&mut self, host: &Bound<'_, PyAny>, item: Bound<'_, PyAny>) -> PyResult<()> {
        self.flush(host, false)?;
        let limits = host.call_method1(intern!(host.py(), "_apply_one"), (item,))?;
        self.limits = Some(limits.extract()?);
        Ok(())
    }

    fn limits(&mut self, host: &Bound<'_, PyAny>) -> PyResult<(i64, u64)> {
        if let Some(l) = self.limits {
            return Ok(l);
        }
        let l: (i64, u64) = host
            .call_method0(intern!(host.py(), "_limits"))?
            .extract()?;
        self.limits = Some(l);
        Ok(l)
    }

    fn routed<'py>(
        &self,
        py: Python<'py>,
        cluster: &Cid,
        event: &Ev,
        routed: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        match routed {
            Some(r) => Ok(r.into_bound(py)),
            None => self
                .routed_cls
                .bind(py)
                .call1((event.to_py(py)?, py_id(py, cluster))),
        }
    }

    /// Hold `event` (of `cluster`, at `ts`) until the watermark passes it.
    pub(crate) fn push(
        &mut self,
        py: Python<'_>,
        cluster: &Cluster,
        event: Ev,
        ts: i64,
        routed: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let buffer = &mut self.buffer;
        let cluster = cluster.cid.clone();
        event.clone_ref(py).with_id(py, |k| {
            buffer.push(
                ts,
                k,
                Item::Event {
                    cluster,
                    event,
                    routed,
                },
            )
        })
    }

    /// Apply what is held up to `watermark_ms`, if anything is.
    pub(crate) fn release(
        &mut self,
        py: Python<'_>,
        host: &Bound<'_, PyAny>,
        watermark_ms: i64,
    ) -> PyResult<usize> {
        if self.buffer.next_ms() > watermark_ms {
            return Ok(0);
        }
        let items = self.buffer.release(watermark_ms);
        let n = items.len();
        self.apply(py, host, items)?;
        Ok(n)
    }

    /// Released items, in order: unbanked clusters' events to the store, the rest to Python.
    pub(crate) fn apply(
        &mut self,
        py: Python<'_>,
        host: &Bound<'_, PyAny>,
        items: Vec<Item>,
    ) -> PyResult<()> {
        // The GIL given up for a moment between items (`Turns`). Safe: no cell is borrowed
        // across it (each item's borrows of the store and the index end with it); this
        // loop's own object is borrowed through its cell for the call (another thread
        // asking for it would be refused, not let in: none does, the partition is this
        // worker loop's).
        let mut turns = Turns::new();
        for item in items {
            turns.tick(py);
            let (cluster, event, ts, routed) = match item {
                Item::Bank(update) => {
                    self.python_apply(host, update.into_bound(py))?;
                    continue;
                }
                Item::Event {
                    cluster,
                    event,
                    routed,
                } => {
                    let ts = event.ts_ms(py)?;
                    if let Some(rx) = self.received.as_mut() {
                        if !rx.held.is_empty() && event.kind(py)? == Kind::Upload {
                            event.with_id(py, |k| rx.held.remove(k))?;
                        }
                    }
                    (cluster, event, ts, routed)
                }
            };
            // a banked cluster's event goes to Python: a `b-` cluster, or one Python holds
            // (an unbanked cluster whose content turned out banked, taken out of the store:
            // so one the store holds is not Python's, nor one never taken, and neither's id
            // is looked up there)
            let python = cluster.kind_is(b'b') || {
                let store = self.unbanked.borrow(py);
                !store.store.contains(&cluster)
                    && store.taken(&cluster)
                    && self.banked.bind(py).contains(py_id(py, &cluster))?
            };
            if python {
                let r = self.routed(py, &cluster, &event, routed)?;
                self.python_apply(host, r)?;
                continue;
            }
            let (stop_ms, barrier) = self.limits(host)?;
            if ts >= stop_ms {
                let r = self.routed(py, &cluster, &event, routed)?;
                self.python_apply(host, r)?;
                continue;
            }
            let cid = &cluster;
            let mut out: Outcome<Ev> = Outcome::default();
            let applied = {
                let mut store = self.unbanked.borrow_mut(py);
                let idle = store.store.idle_ms();
                self.forgetting.evict(
                    py,
                    &mut store.store,
                    (&self.content.0, self.content.1),
                    (ts.saturating_sub(idle), barrier),
                    &mut self.pending.evicted,
                );
                let handle = event.clone_ref(py);
                event.with_event(py, ts, |e| store.store.apply(cid, e, handle, &mut out))?
            };
            self.absorb(py, out)?;
            let content = if applied { event.image(py)? } else { None };
            if applied && self.received.is_none() && event.kind(py)? == Kind::Upload {
                // replay's: an upload counted once, where the store applies it new
                let image = content.as_ref();
                let min = self.min_pdq_quality;
                self.pending.unmatched.count(py, cid, &event, image, min)?;
            }
            if let Some(content) = content {
                let image = image_signals(&content, self.min_pdq_quality);
                let mut store = self.unbanked.borrow_mut(py);
                if store.store.keeps_signals() {
                    // a clusters partition: its unbanked clusters keep their own signals
                    store.store.hold(cid, &image.signals()[..image.len()])
                } else {
                    drop(store);
                    self.content
                        .0
                        .borrow_mut(py)
                        .inner
                        .add_counted_in(cid, &image.signals()[..image.len()], self.content.1)
                        .map(|_| 0)
                }
                .map_err(|e| PyValueError::new_err(e.0))?;
            }
            let latest = self.pending.latest.get_or_insert(ts);
            *latest = (*latest).max(ts);
        }
        Ok(())
    }

    /// Take what the store did (its evictions were taken as they went: `Forgetting::evict`)
    /// and keep it for Python.
    fn absorb(&mut self, py: Python<'_>, out: Outcome<Ev>) -> PyResult<()> {
        debug_assert!(out.evicted.is_empty(), "evicted through Forgetting::evict");
        for ev in out.rejected {
            self.pending.rejected.push(ev.into_py(py)?);
        }
        self.pending
            .crossings
            .extend(out.crossings.into_iter().map(crossing_row));
        let p = &mut self.pending;
        p.duplicates += out.duplicates;
        p.late += out.late;
        p.created += out.created;
        for (k, n) in p.kinds.iter_mut().zip(out.kinds) {
            *k += n;
        }
        Ok(())
    }

    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        for item in self.buffer.items() {
            item.traverse(visit)?;
        }
        for r in &self.pending.rejected {
            visit.call(r)?;
        }
        visit.call(&self.unbanked)?;
        visit.call(&self.content.0)?;
        visit.call(&self.banked)?;
        visit.call(&self.routed_cls)?;
        self.forgetting.traverse(visit)
    }

    pub(crate) fn clear(&mut self) {
        self.buffer.clear();
        self.pending = Pending::default();
        if let Some(rx) = self.received.as_mut() {
            *rx = Received::default();
        }
    }
}

/// A streaming clusters partition's loop (``streams.stages.ClusterPartition``): the routed
/// events it receives held until its watermark passes them, then applied as replay applies
/// them (the module doc: the same code as ``ReplayLoop``'s), timed bank changes in their
/// place. Python is called (on ``host``) for banked clusters' events and bank changes
/// (``_apply_one``), the detector's limits (``_limits``) and, in batches, what the
/// unbanked store did (``_settle``); evicted clusters' posts go to ``forget`` (a
/// ``ForgetSink``), their content out of ``content``.
#[pyclass(module = "streams._core")]
pub struct ClusterLoop {
    detect: Detect,
    sink: Py<ForgetSink>,
    routed_cls: Py<PyType>,
    /// the reader of the records the partition reads from its topic
    reader: Py<WireReader>,
    /// the routed events read from records since the last :meth:`take_log`, compact
    log: Parts,
    limit: usize,
}

impl ClusterLoop {
    /// Hold one ``Routed`` record; a banked cluster's, also into ``banked``.
    fn push_one<'py>(
        &mut self,
        item: &Bound<'py, PyAny>,
        banked: &Bound<'py, PyList>,
    ) -> PyResult<()> {
        let py = item.py();
        if !item.get_type().is(self.routed_cls.bind(py)) {
            return Err(PyTypeError::new_err(
                "a clusters partition holds Routed events",
            ));
        }
        let cluster = item
            .getattr(intern!(py, "cluster_id"))?
            .cast_into::<PyString>()
            .map_err(|_| PyTypeError::new_err("a cluster id is a str"))?;
        let event = item.getattr(intern!(py, "event"))?;
        let ts: i64 = event.getattr(intern!(py, "ts_ms"))?.extract()?;
        if cluster.to_str()?.starts_with("b-") {
            banked.append(item)?;
        }
        let (cluster, event, routed) = (
            Cluster::of_py(&cluster)?,
            Ev::from_py(&event),
            item.clone().unbind(),
        );
        self.detect
            .receive(py, &cluster.cid, &event, Some(&routed))?;
        self.detect.push(py, &cluster, event, ts, Some(routed))
    }
}

impl ClusterLoop {
    /// Hold a batch of routed events (a resolve partition's `EvBatch`, handed over
    /// in-process): no record made but for a banked cluster's event, also into ``banked``.
    fn push_batch<'py>(&mut self, batch: &EvBatch, banked: &Bound<'py, PyList>) -> PyResult<()> {
        let py = banked.py();
        let Some(clusters) = &batch.clusters else {
            return Err(PyTypeError::new_err(
                "a clusters partition holds Routed events",
            ));
        };
        for (event, cluster) in batch.events.iter().zip(clusters) {
            let ts = event.ts_ms(py)?;
            self.push_event(cluster.bind(py), event.clone_ref(py), ts, banked)?;
        }
        Ok(())
    }

    /// Hold one routed event with no match (no record made but for a banked cluster's
    /// event, which also goes into ``banked``: the detector is told of it).
    fn push_event<'py>(
        &mut self,
        cluster: &Bound<'py, PyString>,
        event: Ev,
        ts: i64,
        banked: &Bound<'py, PyList>,
    ) -> PyResult<()> {
        let py = banked.py();
        let record = if cluster.to_str()?.starts_with("b-") {
            let r = record(
                self.routed_cls.bind(py),
                &[
                    (intern!(py, "event"), event.to_py(py)?),
                    (intern!(py, "cluster_id"), cluster.clone().into_any()),
                    (intern!(py, "match"), py.None().into_bound(py)),
                ],
            )?;
            banked.append(&r)?;
            Some(r.unbind())
        } else {
            None
        };
        let cluster = Cluster::of_py(cluster)?;
        self.detect
            .receive(py, &cluster.cid, &event, record.as_ref())?;
        self.detect.push(py, &cluster, event, ts, record)
    }
}

#[pymethods]
impl ClusterLoop {
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        unbanked: Py<UnbankedClusters>,
        content: Py<PyContentSignals>,
        banked: Py<PyDict>,
        routed_cls: Py<PyType>,
        forget: Py<ForgetSink>,
        min_pdq_quality: i64,
        view: View,
        reader: Py<WireReader>,
        log_limit: usize,
    ) -> PyResult<Self> {
        let forgetting = Forgetting::Sink(forget.clone_ref(py));
        let mut detect = Detect::new(
            unbanked,
            (content, view_of(view)?),
            banked,
            routed_cls.clone_ref(py),
            forgetting,
            min_pdq_quality,
        );
        detect.received = Some(Received::default());
        Ok(Self {
            detect,
            sink: forget,
            routed_cls,
            reader,
            log: Parts::new(log_limit),
            limit: log_limit,
        })
    }

    /// A record of the partition's topic (``raw``, an envelope's bytes) read and its routed
    /// events held until the watermark passes them, in one call: no `Routed` record is
    /// made but for a banked cluster's event (the detector is told of those, as
    /// :meth:`push` returns them) and what Python reads (a banked upload's match). Each
    /// event is kept for the partition's log (:meth:`take_log`) in the log's compact form
    /// (``streams.wire.routed_log_parts``'s bytes), one the core did not read as its
    /// record holds it. Returns ``(progress {partition: ts},
    /// banked events, rejected items, records of other kinds, events held)``, or ``None``
    /// when the core does not read the record (Python reads it, and says what is wrong).
    #[allow(clippy::type_complexity)]
    fn read<'py>(
        &mut self,
        py: Python<'py>,
        raw: &Bound<'py, PyBytes>,
    ) -> PyResult<
        Option<(
            Bound<'py, PyDict>,
            Bound<'py, PyList>,
            Bound<'py, PyList>,
            Bound<'py, PyList>,
            usize,
        )>,
    > {
        let Some(env) = self.reader.get().read_routed(py, raw.as_bytes())? else {
            return Ok(None);
        };
        let progress = by_partition(py, &env.progress)?;
        let (banked, rejected, other) = (PyList::empty(py), PyList::empty(py), PyList::empty(py));
        let mut held = 0;
        for item in env.items {
            match item {
                RoutedItem::Event {
                    cluster,
                    event,
                    ts,
                    json,
                } => {
                    // logged compact, as an event handed over in-process is
                    // (``streams.wire.routed_log_parts``): an item the sender wrote so
                    // (the ``clusters`` topic's form) as it is, read back the same as it
                    // was read here; an earlier form written again
                    match (&event, cluster.to_str()) {
                        _ if json.starts_with(r#"["c","#) => self.log.push_json(json.as_bytes()),
                        (Ev::Core(c), Ok(cluster_id)) => self.log.push(&WireItem::Logged {
                            event: c.view(),
                            cluster_id,
                        }),
                        _ => self.log.push_json(json.as_bytes()),
                    }
                    self.push_event(&cluster, event, ts, &banked)?;
                    held += 1;
                }
                RoutedItem::Record(item, json) => {
                    self.push_one(&item, &banked)?;
                    self.log.push_json(json.as_bytes());
                    held += 1;
                }
                RoutedItem::Rejected(r) => rejected.append(r)?,
                RoutedItem::Other(r) => other.append(r)?,
            }
        }
        Ok(Some((progress, banked, rejected, other, held)))
    }

    /// The log entries of the routed events :meth:`read` held since the last call: JSON
    /// arrays of at most the limit's bytes each (an event larger than that alone), the
    /// bytes ``routed_log_parts`` writes for their records.
    fn take_log<'py>(&mut self, py: Python<'py>) -> Vec<Bound<'py, PyBytes>> {
        if self.log.is_empty() {
            return Vec::new();
        }
        std::mem::replace(&mut self.log, Parts::new(self.limit))
            .finish()
            .iter()
            .map(|part| PyBytes::new(py, part))
            .collect()
    }

    /// Hold routed events (``Routed``, any order) until the watermark passes them. Returns
    /// those of banked clusters (``b-``), in order: the detector is told of them
    /// (``Detector.expect``), since they are what can make an early firing certain.
    fn push<'py>(
        &mut self,
        py: Python<'py>,
        items: &Bound<'py, PyList>,
    ) -> PyResult<Bound<'py, PyList>> {
        let banked = PyList::empty(py);
        for item in items.iter() {
            match item.cast::<EvBatch>() {
                Ok(batch) => self.push_batch(batch.get(), &banked)?,
                Err(_) => self.push_one(&item, &banked)?,
            }
        }
        Ok(banked)
    }

    /// The uploads received since the last call that were new here (not held, not applied
    /// to their cluster: see `Received`): ``(unmatched, [the bank of each matched],
    /// low_quality, allowed)``, the last two among the unmatched.
    fn take_received(&mut self) -> (u64, Vec<String>, u64, u64) {
        match self.detect.received.as_mut() {
            Some(rx) => {
                let u = std::mem::take(&mut rx.unmatched);
                (
                    u.uploads,
                    std::mem::take(&mut rx.matched),
                    u.low_quality,
                    u.allowed,
                )
            }
            None => (0, Vec::new(), 0, 0),
        }
    }

    /// A timed bank change (``BankUpdate``), held until the watermark passes ``ts_ms``,
    /// ``key`` breaking ties.
    fn push_bank(&mut self, update: Py<PyAny>, ts_ms: i64, key: &Bound<'_, PyAny>) -> PyResult<()> {
        with_id(key, |k| {
            self.detect.buffer.push(ts_ms, k, Item::Bank(update))
        })
    }

    /// Apply everything held up to ``watermark_ms``, in order; how many items were.
    fn release(
        &mut self,
        py: Python<'_>,
        host: &Bound<'_, PyAny>,
        watermark_ms: i64,
    ) -> PyResult<usize> {
        self.detect.limits = None; // Python may have changed the detector between calls
        let result = self.detect.release(py, host, watermark_ms);
        let flushed = self.detect.flush(host, true);
        let n = result?;
        flushed?;
        Ok(n)
    }

    /// The items held, in no order (``Routed`` and ``BankUpdate``): what a test looks at.
    fn held<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for item in self.detect.buffer.items() {
            match item {
                Item::Event {
                    routed: Some(r), ..
                } => out.append(r)?,
                Item::Event { cluster, event, .. } => out.append(
                    self.routed_cls
                        .bind(py)
                        .call1((event.to_py(py)?, py_id(py, cluster)))?,
                )?,
                Item::Bank(u) => out.append(u)?,
            }
        }
        Ok(out)
    }

    /// The keys (event ids, bank changes' order keys) of the items held.
    fn keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PySet>> {
        let set = PySet::empty(py)?;
        for key in self.detect.buffer.keys() {
            // a key went in as a str: its bytes are UTF-8, or surrogatepass's for a lone one
            let text = PyBytes::new(py, key).call_method1("decode", ("utf-8", "surrogatepass"))?;
            set.add(text)?;
        }
        Ok(set)
    }

    /// The event time of the latest item released (``-1`` before any).
    #[getter]
    fn released_ms(&self) -> i64 {
        self.detect.buffer.released_ms()
    }

    fn __len__(&self) -> usize {
        self.detect.buffer.len()
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.detect.traverse(&visit)?;
        visit.call(&self.sink)?;
        visit.call(&self.reader)?;
        visit.call(&self.routed_cls)
    }

    fn __clear__(&mut self) {
        self.detect.clear();
    }
}
