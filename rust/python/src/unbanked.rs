//! `streams._core.UnbankedClusters`: unbanked clusters' detector state
//! (`viralwatch_core::unbanked`) for `streams.detector.Detector`. Events come
//! in batches of routed items; the core keeps references only to the events
//! that wait for a post (or are rejected), and gives back what Python acts on.

use std::borrow::Cow;
use std::collections::HashSet;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};
use pyo3::{intern, IntoPyObjectExt, PyTraverseError, PyVisit};

use viralwatch_core::content::{Cid, Kind as SignalKind};
use viralwatch_core::dedupe::EventIdSet;
use viralwatch_core::keyed::Keyed;
use viralwatch_core::unbanked::{Crossing, Event, Kind, Outcome, Rule, Store, MAX_HORIZON_MS};

use crate::dedupe::{with_id, EventIds};
use crate::detect::{py_low_quality, Unmatched};
use crate::ev::Ev;

/// A text the core kept as UTF-8 bytes, as the ``str`` it came from.
pub(crate) fn text<'py>(py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(PyString::new(py, s).into_any()),
        // a lone surrogate (``surrogatepass``, see with_id): decoded back the same way
        Err(_) => PyBytes::new(py, bytes).call_method1("decode", ("utf-8", "surrogatepass")),
    }
}

/// An id's bytes, as ``with_id`` hashes them: its UTF-8 (``surrogatepass`` for a lone
/// surrogate), borrowed when it can be.
fn bytes_of<'a>(obj: &'a Bound<'_, PyAny>) -> PyResult<Cow<'a, [u8]>> {
    let s = obj
        .cast::<PyString>()
        .map_err(|_| PyTypeError::new_err("an id is a str"))?;
    match s.to_str() {
        Ok(t) => Ok(Cow::Borrowed(t.as_bytes())),
        Err(_) => with_id(obj, |b| Cow::Owned(b.to_vec())),
    }
}

pub(crate) fn kind_of(kind: &Bound<'_, PyAny>) -> PyResult<Kind> {
    match kind.extract::<&str>()? {
        "upload" => Ok(Kind::Upload),
        "share" => Ok(Kind::Share),
        "takedown" => Ok(Kind::Takedown),
        other => Err(PyValueError::new_err(format!(
            "unknown event type {other:?}"
        ))),
    }
}

/// A crossing as Python gets it: ``(cluster, shares in 5 minutes, size, live, first seen,
/// last)``.
pub(crate) type CrossingRow = (String, usize, usize, usize, i64, i64);

pub(crate) fn crossing_row(c: Crossing) -> CrossingRow {
    (
        c.cluster_id,
        c.shares_5m,
        c.size,
        c.live,
        c.first_seen_ms,
        c.last_ms,
    )
}

/// `f` of a ``ShareEvent``'s fields at `ts_ms` as the store reads them (its ids' bytes
/// borrowed from the ``str``s when they can be).
pub(crate) fn with_event<R>(
    ev: &Bound<'_, PyAny>,
    ts_ms: i64,
    f: impl FnOnce(&Event<'_>) -> R,
) -> PyResult<R> {
    let py = ev.py();
    let kind = kind_of(&ev.getattr(intern!(py, "type"))?)?;
    let eid = ev.getattr(intern!(py, "event_id"))?;
    let post = ev.getattr(intern!(py, "post_id"))?;
    let user = ev.getattr(intern!(py, "user_id"))?;
    let parent = ev.getattr(intern!(py, "parent_post_id"))?;
    let (eid, post, user) = (bytes_of(&eid)?, bytes_of(&post)?, bytes_of(&user)?);
    let parent = if parent.is_none() {
        None
    } else {
        Some(bytes_of(&parent)?)
    };
    Ok(f(&Event {
        event_id: &eid,
        kind,
        ts_ms,
        post: &post,
        user: &user,
        parent: parent.as_deref(),
    }))
}

/// Unbanked clusters' posts, velocity, applied ids, waiting events, review-queue crossing
/// and idle order (see ``rust/core/src/unbanked.rs``). ``rules``: the policy's velocity
/// rules in order, as ``(severity index, window_ms, shares)``.
#[pyclass(module = "streams._core")]
pub struct UnbankedClusters {
    pub(crate) store: Store<Ev>,
    /// The keyed hashes ([`Cid::keyed`]) of the clusters taken out (:meth:`take`): the
    /// only unbanked ids the detector's dict of banked clusters can hold (its `_take`), so
    /// an unbanked cluster neither here nor in `taken` is not Python's, and its id is not
    /// made a `str` to ask the dict (`Detect`: nearly every upload's new cluster, about
    /// 240 instructions each). Never pruned: a cluster Python has dropped since only
    /// costs that look-up; a relabelled cluster is rare.
    taken: HashSet<u32, Keyed>,
}

/// An eviction as Python gets it: (before which item, cluster, posts).
type Eviction = (usize, String, Vec<Py<PyAny>>);

/// What the store counted as it applied a run: duplicates, late, clusters created,
/// uploads, shares, takedowns applied, of the uploads those of low quality and those the
/// allow-list took (`crate::detect::Unmatched`, where asked), and the latest event time
/// applied (``streams.detector.UnbankedCounts``).
type Counts = (u64, u64, u64, u64, u64, u64, u64, u64, Option<i64>);

/// What a batch did, flat and with ``None`` for an empty list: most batches are an event or
/// two, and every object made here is one more for Python's collector to count.
type Applied = (
    usize,
    Option<Vec<Py<PyAny>>>,
    Option<Vec<CrossingRow>>,
    Option<Vec<Eviction>>,
    Option<Vec<usize>>,
    Counts,
);

fn some<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

impl UnbankedClusters {
    fn evicted(py: Python<'_>, out: &mut Outcome<Ev>) -> PyResult<Vec<Eviction>> {
        std::mem::take(&mut out.evicted)
            .into_iter()
            .map(|e| {
                let posts = e
                    .posts
                    .iter()
                    .map(|p| text(py, p).map(Bound::unbind))
                    .collect::<PyResult<_>>()?;
                Ok((e.at, e.cluster_id, posts))
            })
            .collect()
    }

    /// Whether Python may hold `cluster` (an id not in the store): one taken out, or one
    /// whose keyed hash is a taken one's (the dict, asked next, tells them apart).
    pub(crate) fn taken(&self, cluster: &Cid) -> bool {
        self.taken.contains(&cluster.keyed())
    }
}

#[pymethods]
impl UnbankedClusters {
    /// ``signals``: its clusters keep their content's signals and are found by them (a
    /// worker's clusters partition: see ``Store::with_signals``).
    #[new]
    #[pyo3(signature = (rules, horizon_ms, idle_ms, signals = false))]
    fn new(
        rules: Vec<(u8, i64, u32)>,
        horizon_ms: i64,
        idle_ms: i64,
        signals: bool,
    ) -> PyResult<Self> {
        if !(1..=MAX_HORIZON_MS).contains(&horizon_ms) {
            return Err(PyValueError::new_err(format!(
                "horizon_ms must be from 1 to {MAX_HORIZON_MS} (about 49 days), not {horizon_ms}"
            )));
        }
        let rules = rules
            .into_iter()
            .map(|(severity, window_ms, shares)| Rule {
                severity,
                window_ms,
                shares,
            })
            .collect();
        let store = if signals {
            Store::with_signals(rules, horizon_ms, idle_ms)
        } else {
            Store::new(rules, horizon_ms, idle_ms)
        };
        Ok(Self {
            store,
            taken: HashSet::default(),
        })
    }

    /// Its pending events for the garbage collector (a Python record among them may
    /// reference what references the store: the clusters loop holding it).
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        for ev in self.store.handles() {
            ev.traverse(&visit)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.store.clear();
    }

    /// Whether its clusters keep their content's signals.
    #[getter]
    fn keeps_signals(&self) -> bool {
        self.store.keeps_signals()
    }

    /// ``cluster_id`` (held) holds these ``(kind, text)`` signals (a store that keeps
    /// them); how many it did not hold. A PDQ text that is not 64 hex digits raises
    /// ``ValueError`` and changes nothing.
    fn hold(&mut self, cluster_id: &str, signals: Vec<(String, String)>) -> PyResult<usize> {
        let refs: Vec<(SignalKind, &str)> = signals
            .iter()
            .map(|(k, t)| (SignalKind::of(k), t.as_str()))
            .collect();
        self.store
            .hold(cluster_id, &refs)
            .map_err(|e| PyValueError::new_err(e.0))
    }

    /// The signals ``cluster_id`` holds, ``(kind, text)`` in the order it took them.
    fn held(&self, cluster_id: &str) -> Vec<(&'static str, String)> {
        self.store.held(cluster_id)
    }

    /// The clusters holding ``signal`` (MD5: equal; PDQ: within ``threshold``), nearest
    /// first, ties by cluster id, each once at its nearest (a scan).
    fn near(&self, signal_type: &str, signal: &str, threshold: u32) -> Vec<(String, u32)> {
        self.store
            .near(SignalKind::of(signal_type), signal, threshold)
    }

    /// A number for a touch of a banked cluster: the detector's one order of clusters.
    fn next_seq(&mut self) -> u64 {
        self.store.next_seq()
    }

    /// The number of the least recently touched cluster here (``None``: none).
    fn oldest_seq(&self) -> Option<u64> {
        self.store.oldest_seq()
    }

    /// ``(number, last event time)`` of the least recently touched cluster here (``None``:
    /// none): what :meth:`evict` looks at first, so that a caller can skip a call that
    /// would evict nothing.
    fn front(&self) -> Option<(u64, i64)> {
        self.store.front()
    }

    fn __len__(&self) -> usize {
        self.store.len()
    }

    fn __contains__(&self, cluster_id: &Bound<'_, PyAny>) -> bool {
        cluster_id
            .extract::<&str>()
            .is_ok_and(|c| self.store.contains(c))
    }

    /// Posts of the clusters held.
    #[getter]
    fn posts(&self) -> usize {
        self.store.posts()
    }

    /// Events applied to the clusters held.
    #[getter]
    fn live_events(&self) -> usize {
        self.store.live_events()
    }

    /// Bytes held, estimated from the tables' capacities.
    #[getter]
    fn nbytes(&self) -> usize {
        self.store.nbytes()
    }

    /// Apply routed events (``streams.router.Routed``) from ``items[start]`` on, in order,
    /// each after evicting what was idle at its time (up to the caller's oldest cluster,
    /// ``barrier``), and stop at the first at or after ``stop_ms`` or of a banked cluster
    /// (``b-``, or one of ``banked``'s keys). Items are told by their index in ``items``.
    /// Returns how many were
    /// applied, the events rejected as ``duplicate_post``, the crossings ``(cluster,
    /// shares in 5 minutes, size, live, first seen, last)``, the evictions ``(before item,
    /// cluster, posts)``, the items applied that carry content (``None`` for an empty
    /// list), and the counters (see `Counts`). ``count_unmatched``: the uploads applied
    /// new are counted unmatched here, by the compiled loops' rule (their low quality and
    /// allow-list counts; the detector's, where it counts uploads as it applies them).
    #[pyo3(signature = (items, start, stop_ms, barrier, banked, count_unmatched = false))]
    #[allow(clippy::too_many_arguments)]
    fn apply_many(
        &mut self,
        py: Python<'_>,
        items: &Bound<'_, PyList>,
        start: usize,
        stop_ms: i64,
        barrier: u64,
        banked: &Bound<'_, PyDict>,
        count_unmatched: bool,
    ) -> PyResult<Applied> {
        let mut out: Outcome<Ev> = Outcome::default();
        let mut contents = Vec::new();
        let mut unmatched = Unmatched::default();
        let idle = self.store.idle_ms();
        let mut done = 0;
        let mut latest = None;
        for i in start..items.len() {
            let item = items.get_item(i)?;
            let cid_obj = item.getattr(intern!(py, "cluster_id"))?;
            let cid = cid_obj
                .cast::<PyString>()
                .map_err(|_| PyTypeError::new_err("a cluster id is a str"))?
                .to_str()?;
            if cid.starts_with("b-") || banked.contains(&cid_obj)? {
                break; // the detector's own (banked)
            }
            let ev = item.getattr(intern!(py, "event"))?;
            let ts: i64 = ev.getattr(intern!(py, "ts_ms"))?.extract()?;
            if ts >= stop_ms {
                break;
            }
            latest = Some(latest.map_or(ts, |t: i64| t.max(ts)));
            let has_content = !ev.getattr(intern!(py, "content"))?.is_none();
            self.store
                .evict(ts.saturating_sub(idle), barrier, i, &mut out);
            let store = &mut self.store;
            let (applied, upload) = with_event(&ev, ts, |e| {
                let applied = store.apply(cid, e, Ev::from_py(&ev), &mut out);
                (applied, e.kind == Kind::Upload)
            })?;
            if applied && has_content {
                contents.push(i);
            }
            if applied && upload && count_unmatched {
                unmatched.add(&Cid::of(cid), py_low_quality(&ev)?);
            }
            done = i + 1 - start;
        }
        let crossings = std::mem::take(&mut out.crossings)
            .into_iter()
            .map(crossing_row)
            .collect();
        let evicted = Self::evicted(py, &mut out)?;
        let rejected = std::mem::take(&mut out.rejected)
            .into_iter()
            .map(|ev| ev.into_py(py))
            .collect::<PyResult<Vec<_>>>()?;
        Ok((
            done,
            some(rejected),
            some(crossings),
            some(evicted),
            some(contents),
            (
                out.duplicates,
                out.late,
                out.created,
                out.kinds[0],
                out.kinds[1],
                out.kinds[2],
                unmatched.low_quality,
                unmatched.allowed,
                latest,
            ),
        ))
    }

    /// Evict, oldest first, what is idle at ``cut_ms`` and touched before ``barrier``:
    /// ``(stopped at one that is not idle, [(0, cluster, posts)])``.
    fn evict(
        &mut self,
        py: Python<'_>,
        cut_ms: i64,
        barrier: u64,
    ) -> PyResult<(bool, Vec<Eviction>)> {
        let mut out = Outcome::default();
        let blocked = self.store.evict(cut_ms, barrier, 0, &mut out);
        Ok((blocked, Self::evicted(py, &mut out)?))
    }

    /// Whether ``event_id`` was applied to ``cluster_id``.
    fn applied(&self, cluster_id: &str, event_id: &Bound<'_, PyAny>) -> PyResult<bool> {
        with_id(event_id, |id| self.store.applied(cluster_id, id))
    }

    /// ``(seq, first seen, last, size, live, roots, events, waiting, emerging, allowed,
    /// [(severity index, first met)])``, or ``None``.
    #[allow(clippy::type_complexity)]
    fn summary(
        &self,
        cluster_id: &str,
    ) -> Option<(
        u64,
        i64,
        i64,
        usize,
        usize,
        usize,
        usize,
        usize,
        bool,
        bool,
        Vec<(u8, i64)>,
    )> {
        self.store.summary(cluster_id).map(|s| {
            (
                s.seq,
                s.first_seen_ms,
                s.last_ms,
                s.size,
                s.live,
                s.roots,
                s.events,
                s.pending,
                s.emerging,
                s.allowed,
                s.met,
            )
        })
    }

    /// Shares of ``cluster_id`` in ``(now - window, now]``.
    fn count(&self, cluster_id: &str, window_ms: i64, now_ms: i64) -> usize {
        self.store.count(cluster_id, window_ms, now_ms)
    }

    /// The event times kept (within the horizon), sorted.
    fn times(&self, cluster_id: &str) -> Vec<i64> {
        self.store.times(cluster_id)
    }

    /// Every post as ``(post, parent, user, ts_ms, live)``, parents first.
    fn made<'py>(&self, py: Python<'py>, cluster_id: &str) -> PyResult<Bound<'py, PyList>> {
        let rows = self
            .store
            .made(cluster_id)
            .into_iter()
            .map(|m| {
                let parent = match m.parent {
                    Some(p) => text(py, p)?,
                    None => py.None().into_bound(py),
                };
                (
                    text(py, m.post)?,
                    parent,
                    text(py, m.user)?,
                    m.ts_ms,
                    m.live,
                )
                    .into_bound_py_any(py)
            })
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, rows)
    }

    /// The events waiting for a post of the cluster, as ``(post, event)``, in the order
    /// they came.
    fn pending<'py>(
        &self,
        py: Python<'py>,
        cluster_id: &str,
    ) -> PyResult<Vec<(Bound<'py, PyAny>, Py<PyAny>)>> {
        self.store
            .pending(cluster_id)
            .into_iter()
            .map(|(t, h)| Ok((text(py, t)?, h.to_py(py)?.unbind())))
            .collect()
    }

    /// The allow-list signal matches (``add``) or no longer matches the cluster's
    /// content; ``False`` if the cluster is not here.
    fn allow(&mut self, cluster_id: &str, kind: &str, signal: &str, add: bool) -> bool {
        self.store.allow(cluster_id, kind, signal, add)
    }

    fn allowed_by(&self, cluster_id: &str) -> Vec<(String, String)> {
        self.store.allowed_by(cluster_id)
    }

    /// Take a cluster out (it is banked from now on): ``(seq, first seen, last, posts as
    /// made() gives them, event times, latest time, event ids, waiting events as
    /// pending() gives them, emerging, rules met, allow-list signals)``, or ``None``.
    #[allow(clippy::type_complexity)]
    fn take<'py>(
        &mut self,
        py: Python<'py>,
        cluster_id: &str,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Some(t) = self.store.take(cluster_id) else {
            return Ok(None);
        };
        self.taken.insert(Cid::of(cluster_id).keyed());
        let posts = t
            .posts
            .iter()
            .map(|(post, parent, user, ts, live)| {
                let parent = match parent {
                    Some(p) => text(py, p)?,
                    None => py.None().into_bound(py),
                };
                (text(py, post)?, parent, text(py, user)?, *ts, *live).into_bound_py_any(py)
            })
            .collect::<PyResult<Vec<_>>>()?;
        let mut ids = EventIdSet::new();
        for d in &t.digests {
            ids.insert_digest(*d);
        }
        let pending = t
            .pending
            .into_iter()
            .map(|(target, h)| (text(py, &target)?, h.into_py(py)?).into_bound_py_any(py))
            .collect::<PyResult<Vec<_>>>()?;
        let out = (
            t.seq,
            t.first_seen_ms,
            t.last_ms,
            PyList::new(py, posts)?,
            t.times,
            t.latest_ms,
            Py::new(py, EventIds::from_set(ids))?,
            PyList::new(py, pending)?,
            t.emerging,
            t.met,
            t.allowed_by,
        );
        Ok(Some(out.into_bound_py_any(py)?))
    }
}
