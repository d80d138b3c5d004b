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

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyType};
use pyo3::{intern, PyTraverseError, PyVisit};

use viralwatch_core::content::{DETECTOR, OWNER};
use viralwatch_core::keyed::Keyed;
use viralwatch_core::unbanked::Kind;

use crate::content::PyContentSignals;
use crate::dedupe::with_id;
use crate::detect::{Detect, Forgetting, Item};
use crate::emerging::PyIdleClusters;
use crate::ev::{parse_lines, Ev, Line};
use crate::posts::PyPostRoutes;
use crate::routing::{Banks, Cluster, Deliver, Reshare, Routing};
use crate::unbanked::UnbankedClusters;

/// Events whose reshares' look-ups in the post map are read ahead together
/// (``Routing::warm``) before the first of them is fed: enough for their cache misses to
/// overlap (a miss costs 0.4-1 us on this VM, dependent; 20-50 ns a load when independent),
/// few enough for what they read to stay in cache until their turn.
const WARM_GROUP: usize = 32;

/// How often (event time) held orphans are checked for expiry.
const EXPIRE_EVERY_MS: i64 = 10_000;

/// Replay's loop (see the module doc) over the router's map (``routes``), the index's idle
/// order (``idle``), the detector's unbanked store (``unbanked``) and banked clusters
/// (``banked``, a dict by cluster id). ``host`` (the ``Pipeline``) is given to each call:
/// ``_classify``, ``reject``, ``_apply_one``, ``_limits``, ``_settle``, ``_expire``,
/// ``_refused``, ``_unsignalled`` and ``_assign_video`` are called on it.
#[pyclass(module = "streams._core")]
pub struct ReplayLoop {
    /// the post -> cluster map, held orphans and the index of unbanked content
    routing: Routing,
    rejection_cls: Py<PyType>,
    lateness_ms: i64,
    /// the reorder buffer and what is released from it (the detector's side, shared with
    /// a clusters partition: ``crate::detect``)
    detect: Detect,
    /// unbanked uploads waiting for the watermark, by event id, and their `(ts, id)` order
    waiting: HashMap<Box<[u8]>, Ev, Keyed>,
    order: BinaryHeap<Reverse<(i64, Box<[u8]>)>>,
    max_ts_ms: i64,
    expired_at: i64,
}

/// What a registration released is held for the watermark (the reorder buffer).
impl Deliver for ReplayLoop {
    fn routing(&self) -> &Routing {
        &self.routing
    }

    fn touch(&mut self, py: Python<'_>, cluster: &Cluster, _event: &Ev, ts: i64) -> PyResult<()> {
        self.routing.touch(py, &cluster.cid, ts);
        Ok(())
    }

    fn deliver(&mut self, py: Python<'_>, cluster: &Cluster, event: Ev, ts: i64) -> PyResult<()> {
        self.detect.push(py, cluster, event, ts, None)
    }
}

impl ReplayLoop {
    fn reject(&mut self, host: &Bound<'_, PyAny>, rejection: &Bound<'_, PyAny>) -> PyResult<()> {
        self.detect.flush(host, false)?;
        host.call_method1(intern!(host.py(), "reject"), (rejection,))?;
        Ok(())
    }

    /// `event`'s post is routed to `cluster`: mapped, and what waited for it released.
    fn register(&mut self, py: Python<'_>, event: &Ev, cluster: &Cluster) -> PyResult<()> {
        event.with_posts(py, |post, _| Routing::register(self, py, post, cluster))?
    }

    fn defer(&mut self, py: Python<'_>, event: Ev, ts_ms: i64) -> PyResult<()> {
        let key: Box<[u8]> = event.with_id(py, |k| Box::from(k))?;
        match self.waiting.entry(key) {
            Entry::Occupied(_) => self.detect.pending.duplicates += 1, // waits once, as at the owner
            Entry::Vacant(v) => {
                self.order.push(Reverse((ts_ms, v.key().clone())));
                v.insert(event);
            }
        }
        Ok(())
    }

    /// An unbanked upload the watermark passed: the cluster it joins or starts.
    fn cluster_upload(
        &mut self,
        py: Python<'_>,
        host: &Bound<'_, PyAny>,
        event: Ev,
    ) -> PyResult<()> {
        let ts = event.ts_ms(py)?;
        let cluster = match event.image(py)? {
            Some(image) if !image.video => self.routing.assign_image(py, &image, ts)?,
            _ => Cluster::of_py(
                &host
                    .call_method1(intern!(py, "_assign_video"), (event.to_py(py)?,))?
                    .cast_into::<PyString>()?,
            )?,
        };
        self.held_and_registered(py, cluster, event, ts, None)
    }

    /// An upload routed to `cluster`: held for the watermark, its post registered.
    fn held_and_registered(
        &mut self,
        py: Python<'_>,
        cluster: Cluster,
        event: Ev,
        ts: i64,
        route: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let held = event.clone_ref(py);
        self.detect.push(py, &cluster, held, ts, route)?;
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
        self.detect.release(py, host, watermark_ms)?;
        Ok(())
    }

    /// One parsed event: routed (or held, refused, deferred), then the watermark's step.
    fn feed_event(
        &mut self,
        py: Python<'_>,
        host: &Bound<'_, PyAny>,
        event: Ev,
        route: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let ts = event.ts_ms(py)?;
        match event.kind(py)? {
            Kind::Upload => {
                if let Some(route) = route {
                    let route = route.into_bound(py);
                    let cluster = route
                        .getattr(intern!(py, "cluster_id"))?
                        .cast_into::<PyString>()?;
                    let cluster = Cluster::of_py(&cluster)?;
                    self.held_and_registered(py, cluster, event, ts, Some(route.unbind()))?;
                } else {
                    let signalled = match event.image(py)? {
                        Some(image) => self.routing.signalled(&image),
                        None => false,
                    };
                    if signalled {
                        self.defer(py, event, ts)?;
                    } else {
                        let cluster =
                            host.call_method1(intern!(py, "_unsignalled"), (event.to_py(py)?,))?;
                        if cluster.is_none() {
                            self.defer(py, event, ts)?;
                        } else {
                            let cluster = Cluster::of_py(&cluster.cast_into::<PyString>()?)?;
                            self.held_and_registered(py, cluster, event, ts, None)?;
                        }
                    }
                }
            }
            kind => match self.routing.reshare(py, &event, kind == Kind::Share, ts)? {
                Reshare::Found(cluster, released) => {
                    self.detect.push(py, &cluster, event, ts, None)?;
                    if cluster.is_unbanked() {
                        self.routing.touch(py, &cluster.cid, ts);
                    }
                    Routing::release(self, py, &cluster, released)?;
                }
                Reshare::Held => self.detect.pending.held += 1,
                Reshare::Refused(reason, held, target) => {
                    self.detect.flush(host, false)?;
                    let event = event.to_py(py)?;
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
                self.detect.flush(host, false)?;
                host.call_method1(intern!(py, "_expire"), (watermark,))?;
            }
        } else if ts <= self.detect.buffer.released_ms() {
            // later than the allowed lateness: applied now rather than dropped
            let released = self.detect.buffer.released_ms();
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
        let forgetting = Forgetting::Routes(routes.clone_ref(py));
        Self {
            routing: Routing::new(py, routes, Some(idle), max_held, min_pdq_quality),
            rejection_cls,
            lateness_ms,
            detect: Detect::new(
                unbanked,
                (content, content_view),
                banked,
                routed_cls,
                forgetting,
                min_pdq_quality,
            ),
            waiting: HashMap::default(),
            order: BinaryHeap::new(),
            max_ts_ms: -1,
            expired_at: -1,
        }
    }

    /// Feed a batch of input lines (``bytes``, share events: no bank update), parsed here
    /// as ``streams.events.parse_events`` parses them, in input order. Its uploads
    /// are matched against ``banks`` (``HashBanks.screen()``; they do not change within a
    /// batch) first: those that match a bank or the allow-list go to their cluster, the
    /// others to the index of unbanked content (see ``screen``). No Python record is made
    /// of an event but where Python acts on it (see ``streams._core``'s ``ev``).
    fn feed(
        &mut self,
        py: Python<'_>,
        host: &Bound<'_, PyAny>,
        lines: &Bound<'_, PyList>,
        banks: Banks<'_>,
    ) -> PyResult<()> {
        self.detect.limits = None; // Python may have changed the detector between calls
        let result = (|| {
            let lines = parse_lines(py, lines)?;
            let routes = self.routing.screen(py, host, &lines, &banks)?;
            let mut lines = lines.into_iter();
            for (j, route) in routes.into_iter().enumerate() {
                if j % WARM_GROUP == 0 {
                    let group = lines.as_slice();
                    self.routing.warm(py, &group[..group.len().min(WARM_GROUP)]);
                }
                let Some(line) = lines.next() else { break };
                match line {
                    Line::Rejected(r) => self.reject(host, r.bind(py))?,
                    Line::Event(ev) => self.feed_event(py, host, ev, route)?,
                }
            }
            Ok(())
        })();
        let flushed = self.detect.flush(host, true);
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
        self.detect.limits = None;
        let buffer = &mut self.detect.buffer;
        with_id(key, |k| buffer.push(ts_ms, k, Item::Bank(update)))?;
        let result = if ts_ms <= buffer.released_ms() {
            let released = buffer.released_ms();
            self.detect.release(py, host, released).map(|_| ())
        } else {
            Ok(())
        };
        let flushed = self.detect.flush(host, true);
        result.and(flushed)
    }

    /// The end of the input: every unbanked upload still waiting clustered, in order, and
    /// everything held applied.
    fn finish(&mut self, py: Python<'_>, host: &Bound<'_, PyAny>) -> PyResult<()> {
        self.detect.limits = None;
        let result = self.release(py, host, i64::MAX).and_then(|()| {
            let items = self.detect.buffer.drain();
            self.detect.apply(py, host, items)
        });
        let flushed = self.detect.flush(host, true);
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
        self.detect.buffer.released_ms()
    }

    /// Records held for the watermark (unbanked uploads waiting for the index not counted).
    fn __len__(&self) -> usize {
        self.detect.buffer.len()
    }

    /// Unbanked uploads waiting for the watermark to be clustered.
    #[getter]
    fn waiting(&self) -> usize {
        self.waiting.len()
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.detect.traverse(&visit)?;
        for ev in self.waiting.values() {
            ev.traverse(&visit)?;
        }
        self.routing.traverse(&visit)?;
        visit.call(&self.rejection_cls)?;
        Ok(())
    }

    fn __clear__(&mut self) {
        self.detect.clear();
        self.waiting.clear();
        self.order.clear();
    }
}
