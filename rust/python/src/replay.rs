//! `streams._core.ReplayLoop`: replay's per-event loop (`streams.pipeline.Pipeline`)
//! over a parsed batch, in one call: route (the post -> cluster map and held orphans,
//! `PostRoutes`), defer unbanked uploads to the index until the watermark passes them
//! and cluster them then (`IdleClusters`), reorder by `(ts, event_id)`, move the
//! watermark at each event whose time is a new maximum, and apply unbanked clusters'
//! events in `UnbankedClusters`. Python is called only for what it owns: banked
//! clusters' events and bank changes (the detector's NetworkX side), rejections, the
//! expiry of held orphans every 10 s of event time, videos (vPDQ) and uploads with no
//! signal, the uploads a bank entry may match (the rest are told apart here, a batch at
//! a time), and, in batches, what the store did (content held, evictions, crossings,
//! counters).
//!
//! Why here and not in Python: the loop ran once per event in Python (a `Routed`, a
//! reorder entry and half a dozen calls each), and that was most of replay's time.
//! The order of everything is the Python loop's, so the golden outputs are unchanged.

use std::cmp::Reverse;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyType};
use pyo3::{intern, PyTraverseError, PyVisit};

use viralwatch_core::content::{View, DETECTOR, OWNER};
use viralwatch_core::pdq;
use viralwatch_core::reorder::ReorderBuffer;
use viralwatch_core::unbanked::{Evicted, Kind, Outcome};

use crate::content::PyContentSignals;
use crate::dedupe::with_id;
use crate::emerging::PyIdleClusters;
use crate::pdq::PyPdqIndex;
use crate::posts::PyPostRoutes;
use crate::routing::{is_unbanked_id, Reshare, Routing};
use crate::unbanked::{crossing_row, kind_of, with_event, CrossingRow, UnbankedClusters};

/// How often (event time) held orphans are checked for expiry.
const EXPIRE_EVERY_MS: i64 = 10_000;

/// What the reorder buffer holds: a routed event (its cluster, and the `Routed` record
/// when the router made one: a banked or allow-listed upload), or a timed bank change.
enum Item {
    Event {
        cluster: Py<PyString>,
        event: Py<PyAny>,
        ts: i64,
        routed: Option<Py<PyAny>>,
    },
    Bank(Py<PyAny>),
}

/// The store's results not yet handed to Python, and the loop's own counters.
#[derive(Default)]
struct Pending {
    /// the clusters evicted, in order (their posts forgotten by the map, their content by
    /// the detector's index already)
    evicted: Vec<String>,
    rejected: Vec<Py<PyAny>>,
    crossings: Vec<CrossingRow>,
    held: u64,
    duplicates: u64,
    late: u64,
    created: u64,
    kinds: [u64; 3],
    latest: Option<i64>,
}

impl Pending {
    fn effects(&self) -> bool {
        !(self.evicted.is_empty() && self.rejected.is_empty() && self.crossings.is_empty())
    }

    fn any(&self) -> bool {
        self.effects()
            || self.held + self.duplicates + self.late + self.created > 0
            || self.kinds.iter().any(|&k| k > 0)
            || self.latest.is_some()
    }
}

/// Replay's loop (see the module doc) over the router's map (``routes``), the index's idle
/// order (``idle``), the detector's unbanked store (``unbanked``) and banked clusters
/// (``banked``, a dict by cluster id). ``host`` (the ``Pipeline``) is given to each call:
/// ``_classify``, ``reject``, ``_apply_one``, ``_limits``, ``_settle``, ``_expire``,
/// ``_refused``, ``_unsignalled`` and ``_assign_video`` are called on it.
#[pyclass(module = "streams._core")]
pub struct ReplayLoop {
    /// the post -> cluster map, held orphans and the index of unbanked content
    routing: Routing,
    unbanked: Py<UnbankedClusters>,
    /// the detector's index of live clusters' content (which a bank change concerns): the
    /// router's (`signals`) seen from the detector's view when they are one object
    content: Py<PyContentSignals>,
    content_view: View,
    banked: Py<PyDict>,
    routed_cls: Py<PyType>,
    rejection_cls: Py<PyType>,
    lateness_ms: i64,
    buffer: ReorderBuffer<Item>,
    /// unbanked uploads waiting for the watermark, by event id, and their `(ts, id)` order
    waiting: HashMap<Box<[u8]>, Py<PyAny>>,
    order: BinaryHeap<Reverse<(i64, Box<[u8]>)>>,
    max_ts_ms: i64,
    expired_at: i64,
    /// the detector's `(stop_ms, barrier)` (`None`: Python may have changed them since)
    limits: Option<(i64, u64)>,
    pending: Pending,
}

/// Clusters evicted from the unbanked store: their posts forgotten by the router's map
/// and their content by the detector's index; their ids, in order.
fn forget(
    py: Python<'_>,
    routes: &Py<PyPostRoutes>,
    (content, view): (&Py<PyContentSignals>, View),
    evicted: Vec<Evicted>,
) -> Vec<String> {
    let mut routes = routes.borrow_mut(py);
    let mut content = content.borrow_mut(py);
    evicted
        .into_iter()
        .map(|gone| {
            for post in &gone.posts {
                routes.inner.posts.remove(post);
            }
            content.inner.forget_cluster_in(&gone.cluster_id, view);
            gone.cluster_id
        })
        .collect()
}

/// Evict, oldest first, the unbanked clusters idle at ``cut_ms`` and touched before
/// ``barrier`` (``UnbankedClusters.evict``), forgetting their posts in ``routes`` and their
/// content in ``content`` (in its ``view``) here: ``(stopped at one that is not idle,
/// [cluster])``. Replay's detector evicts this way (no Python string per post, no call per
/// cluster).
#[pyfunction]
#[pyo3(signature = (store, routes, content, cut_ms, barrier, view = 0))]
pub fn evict_unbanked(
    py: Python<'_>,
    store: &Bound<'_, UnbankedClusters>,
    routes: Py<PyPostRoutes>,
    content: Py<PyContentSignals>,
    cut_ms: i64,
    barrier: u64,
    view: u8,
) -> PyResult<(bool, Vec<String>)> {
    if view > DETECTOR {
        return Err(PyValueError::new_err(format!(
            "view must be 0 or 1, not {view}"
        )));
    }
    let mut out: Outcome<Py<PyAny>> = Outcome::default();
    let stopped = store.borrow_mut().store.evict(cut_ms, barrier, 0, &mut out);
    Ok((stopped, forget(py, &routes, (&content, view), out.evicted)))
}

/// What `HashBanks.screen` gives for a batch: the MD5 table (lowercase hex -> entries), the
/// PDQ index, the widest PDQ threshold of an enabled bank (`-1`: no PDQ search), and
/// whether videos are banked (a frame may match any image's PDQ).
type Banks<'py> = (Bound<'py, PyDict>, Bound<'py, PyPdqIndex>, i64, bool);

/// Whether the banks' MD5 table holds `md5` (as `HashBanks.lookup_md5` looks it up,
/// lowercase); `true` for a text the core does not read (Python then decides).
fn banked_md5(md5s: &Bound<'_, PyDict>, md5: &Bound<'_, PyAny>) -> PyResult<bool> {
    let Ok(text) = md5.cast::<PyString>().map(|s| s.to_str()) else {
        return Ok(true);
    };
    match text {
        Ok(t) if !t.is_ascii() => Ok(true),
        Ok(t) if t.bytes().any(|b| b.is_ascii_uppercase()) => md5s.contains(t.to_ascii_lowercase()),
        Ok(_) => md5s.contains(md5),
        Err(_) => Ok(true),
    }
}

impl ReplayLoop {
    /// Hand Python what the store did (and the counters, when `all`).
    fn flush(&mut self, host: &Bound<'_, PyAny>, all: bool) -> PyResult<()> {
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
            p.latest,
        );
        host.call_method1(
            intern!(host.py(), "_settle"),
            (p.evicted, p.rejected, p.crossings, p.held, counts),
        )?;
        Ok(())
    }

    fn reject(&mut self, host: &Bound<'_, PyAny>, rejection: &Bound<'_, PyAny>) -> PyResult<()> {
        self.flush(host, false)?;
        host.call_method1(intern!(host.py(), "reject"), (rejection,))?;
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
        cluster: Py<PyString>,
        event: Py<PyAny>,
        routed: Option<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        match routed {
            Some(r) => Ok(r.into_bound(py)),
            None => self.routed_cls.bind(py).call1((event, cluster)),
        }
    }

    fn push(
        &mut self,
        py: Python<'_>,
        cluster: &Bound<'_, PyString>,
        event: &Bound<'_, PyAny>,
        ts: i64,
        routed: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let eid = event.getattr(intern!(py, "event_id"))?;
        let item = Item::Event {
            cluster: cluster.clone().unbind(),
            event: event.clone().unbind(),
            ts,
            routed,
        };
        with_id(&eid, |k| self.buffer.push(ts, k, item))
    }

    /// What waited for a post of `cluster`, released: routed to it, in the order given.
    fn released(
        &mut self,
        py: Python<'_>,
        cluster: &Bound<'_, PyString>,
        released: Vec<Py<PyAny>>,
    ) -> PyResult<()> {
        if released.is_empty() {
            return Ok(());
        }
        let id = cluster.to_str()?.to_owned();
        let unbanked = is_unbanked_id(&id);
        for child in released {
            let child = child.into_bound(py);
            let ts: i64 = child.getattr(intern!(py, "ts_ms"))?.extract()?;
            if unbanked {
                self.routing.touch(py, &id, ts);
            }
            self.push(py, cluster, &child, ts, None)?;
        }
        Ok(())
    }

    /// `event`'s post is routed to `cluster`: mapped, and what waited for it released.
    fn register(
        &mut self,
        py: Python<'_>,
        event: &Bound<'_, PyAny>,
        cluster: &Bound<'_, PyString>,
    ) -> PyResult<()> {
        let post = event.getattr(intern!(py, "post_id"))?;
        let released = self.routing.register(py, &post, cluster)?;
        self.released(py, cluster, released)
    }

    fn defer(
        &mut self,
        event: &Bound<'_, PyAny>,
        ts_ms: i64,
        eid: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let key: Box<[u8]> = with_id(eid, |k| Box::from(k))?;
        match self.waiting.entry(key) {
            Entry::Occupied(_) => self.pending.duplicates += 1, // waits once, as at the owner
            Entry::Vacant(v) => {
                self.order.push(Reverse((ts_ms, v.key().clone())));
                v.insert(event.clone().unbind());
            }
        }
        Ok(())
    }

    /// An unbanked upload the watermark passed: the cluster it joins or starts.
    fn cluster_upload(
        &mut self,
        py: Python<'_>,
        host: &Bound<'_, PyAny>,
        event: Py<PyAny>,
    ) -> PyResult<()> {
        let event = event.into_bound(py);
        let ts: i64 = event.getattr(intern!(py, "ts_ms"))?.extract()?;
        let content = event.getattr(intern!(py, "content"))?;
        let cluster = if content.getattr(intern!(py, "vpdq"))?.is_none() {
            self.routing.assign_image(py, &content, ts)?
        } else {
            host.call_method1(intern!(py, "_assign_video"), (&event,))?
                .cast_into::<PyString>()?
        };
        self.push(py, &cluster, &event, ts, None)?;
        self.register(py, &event, &cluster)
    }

    /// The watermark moved to `watermark_ms`: cluster the unbanked uploads it passed, in
    /// `(ts, event_id)` order (what waited for them comes out too), then apply all it passed.
    fn release(
        &mut self,
        py: Python<'_>,
        host: &Bound<'_, PyAny>,
        watermark_ms: i64,
    ) -> PyResult<()> {
        while self
            .order
            .peek()
            .is_some_and(|Reverse((ts, _))| *ts <= watermark_ms)
        {
            let Some(Reverse((_, key))) = self.order.pop() else {
                break;
            };
            if let Some(event) = self.waiting.remove(&key) {
                self.cluster_upload(py, host, event)?;
            }
        }
        if self.buffer.next_ms() <= watermark_ms {
            let items = self.buffer.release(watermark_ms);
            self.apply(py, host, items)?;
        }
        Ok(())
    }

    /// Released items, in order: unbanked clusters' events to the store, the rest to Python.
    fn apply(&mut self, py: Python<'_>, host: &Bound<'_, PyAny>, items: Vec<Item>) -> PyResult<()> {
        for item in items {
            let (cluster, event, ts, routed) = match item {
                Item::Bank(update) => {
                    self.python_apply(host, update.into_bound(py))?;
                    continue;
                }
                Item::Event {
                    cluster,
                    event,
                    ts,
                    routed,
                } => (cluster, event, ts, routed),
            };
            let cid_obj = cluster.bind(py);
            let cid = cid_obj.to_str()?;
            if cid.starts_with("b-") || self.banked.bind(py).contains(cid_obj)? {
                let r = self.routed(py, cluster, event, routed)?;
                self.python_apply(host, r)?;
                continue;
            }
            let ev = event.bind(py);
            let (stop_ms, barrier) = self.limits(host)?;
            if ts >= stop_ms {
                let r = self.routed(py, cluster, event, routed)?;
                self.python_apply(host, r)?;
                continue;
            }
            let content = ev.getattr(intern!(py, "content"))?;
            let mut out: Outcome<Py<PyAny>> = Outcome::default();
            let applied = {
                let mut store = self.unbanked.borrow_mut(py);
                let idle = store.store.idle_ms();
                store
                    .store
                    .evict(ts.saturating_sub(idle), barrier, 0, &mut out);
                with_event(ev, ts, |e| {
                    store.store.apply(cid, e, event.clone_ref(py), &mut out)
                })?
            };
            self.absorb(py, out)?;
            if applied && !content.is_none() {
                let image = self.routing.image_signals(py, &content)?;
                self.content
                    .borrow_mut(py)
                    .inner
                    .add_counted_in(cid, &image.refs(), self.content_view)
                    .map_err(|e| PyValueError::new_err(e.0))?;
            }
            let latest = self.pending.latest.get_or_insert(ts);
            *latest = (*latest).max(ts);
        }
        Ok(())
    }

    /// Take what the store did: evicted clusters' posts forgotten by the map now (no event
    /// is routed before Python would have forgotten them), the rest kept for Python.
    fn absorb(&mut self, py: Python<'_>, out: Outcome<Py<PyAny>>) -> PyResult<()> {
        if !out.evicted.is_empty() {
            let gone = forget(
                py,
                &self.routing.routes,
                (&self.content, self.content_view),
                out.evicted,
            );
            self.pending.evicted.extend(gone);
        }
        self.pending.rejected.extend(out.rejected);
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

    /// A batch's uploads matched against the banks: each one's ``Routed`` (a bank's or the
    /// allow-list's cluster) or ``None``, by its index in the batch. Python
    /// (``host._classify``, ``Router.classify_batch``) is asked only about the uploads an
    /// entry may match: an MD5 the banks hold, a usable PDQ within the widest threshold
    /// of a banked one (one batched search of the banks' index), a video, or an image
    /// when videos are banked (a frame may match it). The others match nothing, the
    /// allow-list included (its entries are in the same tables), whatever the timed adds;
    /// they are only counted (unmatched, and low quality for a PDQ under the cut, as
    /// ``Router.classify`` counts them). Most of a platform's uploads are these: no
    /// Python per upload for them.
    fn screen(
        &self,
        py: Python<'_>,
        host: &Bound<'_, PyAny>,
        parsed: &Bound<'_, PyList>,
        banks: &Banks<'_>,
    ) -> PyResult<Vec<Option<Py<PyAny>>>> {
        let (md5s, index, radius, videos) = banks;
        let mut routes: Vec<Option<Py<PyAny>>> = (0..parsed.len()).map(|_| None).collect();
        // (index in the batch, asked, low quality), and the PDQ queries of those not asked yet
        let mut uploads: Vec<(usize, bool, bool)> = Vec::new();
        let mut queries: Vec<pdq::Hash> = Vec::new();
        let mut queried: Vec<usize> = Vec::new();
        let rejection = self.rejection_cls.bind(py);
        for (i, item) in parsed.iter().enumerate() {
            if item.get_type().is(rejection)
                || kind_of(&item.getattr(intern!(py, "type"))?)? != Kind::Upload
            {
                continue;
            }
            let content = item.getattr(intern!(py, "content"))?;
            if content.is_none() {
                continue;
            }
            let pdq = content.getattr(intern!(py, "pdq"))?;
            let quality = content.getattr(intern!(py, "pdq_quality"))?;
            let usable = !pdq.is_none()
                && (quality.is_none() || quality.extract::<i64>()? >= self.routing.min_pdq_quality);
            let low = !pdq.is_none() && !usable;
            let mut ask = usable && *videos || !content.getattr(intern!(py, "vpdq"))?.is_none();
            if !ask {
                let md5 = content.getattr(intern!(py, "md5"))?;
                ask = !md5.is_none() && banked_md5(md5s, &md5)?;
            }
            if !ask && usable && *radius >= 0 {
                let hash = pdq
                    .cast::<PyString>()
                    .ok()
                    .and_then(|s| s.to_str().ok().and_then(|t| pdq::parse_hex(t.as_bytes())));
                match hash {
                    Some(h) => {
                        queries.push(h);
                        queried.push(uploads.len());
                    }
                    None => ask = true, // not a hash the core reads: Python decides
                }
            }
            uploads.push((i, ask, low));
        }
        if uploads.is_empty() {
            return Ok(routes);
        }
        if !queries.is_empty() {
            let threshold = u32::try_from(*radius).unwrap_or(u32::MAX);
            index
                .borrow()
                .inner
                .search_with(&queries, threshold, |q, _, _, _| {
                    uploads[queried[q]].1 = true;
                });
        }
        let asked = PyList::empty(py);
        let mut at = Vec::new();
        let (mut unmatched, mut low_quality) = (0u64, 0u64);
        for &(i, ask, low) in &uploads {
            if ask {
                asked.append(parsed.get_item(i)?)?;
                at.push(i);
            } else {
                unmatched += 1;
                low_quality += u64::from(low);
            }
        }
        let answers =
            host.call_method1(intern!(py, "_classify"), (&asked, unmatched, low_quality))?;
        for (i, routed) in at.into_iter().zip(answers.try_iter()?) {
            let routed = routed?;
            if !routed.is_none() {
                routes[i] = Some(routed.unbind());
            }
        }
        Ok(routes)
    }

    /// One parsed event: routed (or held, refused, deferred), then the watermark's step.
    fn feed_event(
        &mut self,
        py: Python<'_>,
        host: &Bound<'_, PyAny>,
        event: &Bound<'_, PyAny>,
        route: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let ts: i64 = event.getattr(intern!(py, "ts_ms"))?.extract()?;
        match kind_of(&event.getattr(intern!(py, "type"))?)? {
            Kind::Upload => {
                if let Some(route) = route {
                    let route = route.into_bound(py);
                    let cluster = route
                        .getattr(intern!(py, "cluster_id"))?
                        .cast_into::<PyString>()?;
                    self.push(py, &cluster, event, ts, Some(route.unbind()))?;
                    self.register(py, event, &cluster)?;
                } else {
                    let content = event.getattr(intern!(py, "content"))?;
                    let eid = event.getattr(intern!(py, "event_id"))?;
                    if self.routing.signalled(py, &content)? {
                        self.defer(event, ts, &eid)?;
                    } else {
                        let cluster = host.call_method1(intern!(py, "_unsignalled"), (event,))?;
                        if cluster.is_none() {
                            self.defer(event, ts, &eid)?;
                        } else {
                            let cluster = cluster.cast_into::<PyString>()?;
                            self.push(py, &cluster, event, ts, None)?;
                            self.register(py, event, &cluster)?;
                        }
                    }
                }
            }
            kind => match self.routing.reshare(py, event, kind == Kind::Share, ts)? {
                Reshare::Found(cluster, released) => {
                    self.push(py, &cluster, event, ts, None)?;
                    let id = cluster.to_str()?;
                    if is_unbanked_id(id) {
                        self.routing.touch(py, id, ts);
                    }
                    self.released(py, &cluster, released)?;
                }
                Reshare::Held => self.pending.held += 1,
                Reshare::Refused(reason, held, target) => {
                    self.flush(host, false)?;
                    host.call_method1(intern!(py, "_refused"), (&target, event, reason, held))?;
                }
            },
        }
        if ts > self.max_ts_ms {
            self.max_ts_ms = ts;
            let watermark = ts - self.lateness_ms;
            self.release(py, host, watermark)?;
            if watermark - self.expired_at >= EXPIRE_EVERY_MS {
                self.expired_at = watermark;
                self.flush(host, false)?;
                host.call_method1(intern!(py, "_expire"), (watermark,))?;
            }
        } else if ts <= self.buffer.released_ms() {
            // later than the allowed lateness: applied now rather than dropped
            let released = self.buffer.released_ms();
            self.release(py, host, released)?;
        }
        Ok(())
    }
}

#[pymethods]
impl ReplayLoop {
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        routes: Py<PyPostRoutes>,
        idle: Py<PyIdleClusters>,
        unbanked: Py<UnbankedClusters>,
        content: Py<PyContentSignals>,
        banked: Py<PyDict>,
        routed_cls: Py<PyType>,
        rejection_cls: Py<PyType>,
        lateness_ms: i64,
        max_held: usize,
        min_pdq_quality: i64,
    ) -> Self {
        let signals = idle.borrow(py).signals.clone_ref(py);
        // one index for both (replay's Pipeline shares it): the detector's is its view
        let content_view = if content.is(&signals) {
            DETECTOR
        } else {
            OWNER
        };
        Self {
            routing: Routing::new(py, routes, Some(idle), max_held, min_pdq_quality),
            unbanked,
            content,
            content_view,
            banked,
            routed_cls,
            rejection_cls,
            lateness_ms,
            buffer: ReorderBuffer::new(),
            waiting: HashMap::new(),
            order: BinaryHeap::new(),
            max_ts_ms: -1,
            expired_at: -1,
            limits: None,
            pending: Pending::default(),
        }
    }

    /// Feed a parsed batch (``ShareEvent`` or ``Rejection``, in input order). Its uploads
    /// are matched against ``banks`` (``HashBanks.screen()``; they do not change within a
    /// batch) first: those that match a bank or the allow-list go to their cluster, the
    /// others to the index of unbanked content (see ``screen``).
    fn feed(
        &mut self,
        py: Python<'_>,
        host: &Bound<'_, PyAny>,
        parsed: &Bound<'_, PyList>,
        banks: Banks<'_>,
    ) -> PyResult<()> {
        self.limits = None; // Python may have changed the detector between calls
        let rejection = self.rejection_cls.bind(py).clone();
        let result = (|| {
            let routes = self.screen(py, host, parsed, &banks)?;
            for (item, route) in parsed.iter().zip(routes) {
                if item.get_type().is(&rejection) {
                    self.reject(host, &item)?;
                    continue;
                }
                self.feed_event(py, host, &item, route)?;
            }
            Ok(())
        })();
        let flushed = self.flush(host, true);
        result.and(flushed)
    }

    /// A timed bank change (``BankUpdate``, applied to the banks already): held until the
    /// watermark passes ``ts_ms`` (at once when it has), ``key`` breaking ties.
    fn push_bank(
        &mut self,
        py: Python<'_>,
        host: &Bound<'_, PyAny>,
        update: Py<PyAny>,
        ts_ms: i64,
        key: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.limits = None;
        with_id(key, |k| self.buffer.push(ts_ms, k, Item::Bank(update)))?;
        let result = if ts_ms <= self.buffer.released_ms() {
            let items = self.buffer.release(self.buffer.released_ms());
            self.apply(py, host, items)
        } else {
            Ok(())
        };
        let flushed = self.flush(host, true);
        result.and(flushed)
    }

    /// The end of the input: every unbanked upload still waiting clustered, in order, and
    /// everything held applied.
    fn finish(&mut self, py: Python<'_>, host: &Bound<'_, PyAny>) -> PyResult<()> {
        self.limits = None;
        let result = self.release(py, host, i64::MAX).and_then(|()| {
            let items = self.buffer.drain();
            self.apply(py, host, items)
        });
        let flushed = self.flush(host, true);
        result.and(flushed)
    }

    /// The latest event time fed (``-1``: none yet).
    #[getter]
    fn max_ts_ms(&self) -> i64 {
        self.max_ts_ms
    }

    /// The event time of the latest record released (``-1`` before any).
    #[getter]
    fn released_ms(&self) -> i64 {
        self.buffer.released_ms()
    }

    /// Records held for the watermark (unbanked uploads waiting for the index not counted).
    fn __len__(&self) -> usize {
        self.buffer.len()
    }

    /// Unbanked uploads waiting for the watermark to be clustered.
    #[getter]
    fn waiting(&self) -> usize {
        self.waiting.len()
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        for item in self.buffer.items() {
            match item {
                Item::Event {
                    cluster,
                    event,
                    routed,
                    ..
                } => {
                    visit.call(cluster)?;
                    visit.call(event)?;
                    if let Some(r) = routed {
                        visit.call(r)?;
                    }
                }
                Item::Bank(u) => visit.call(u)?,
            }
        }
        for ev in self.waiting.values() {
            visit.call(ev)?;
        }
        for r in &self.pending.rejected {
            visit.call(r)?;
        }
        self.routing.traverse(&visit)?;
        visit.call(&self.unbanked)?;
        visit.call(&self.content)?;
        visit.call(&self.banked)?;
        visit.call(&self.routed_cls)?;
        visit.call(&self.rejection_cls)?;
        Ok(())
    }

    fn __clear__(&mut self) {
        self.buffer.clear();
        self.waiting.clear();
        self.order.clear();
        self.pending = Pending::default();
    }
}
