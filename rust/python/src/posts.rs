//! `streams._core.PostRoutes`: the router's post -> cluster map and held orphans
//! (`viralwatch_core::posts::Resolver`). Post ids are kept as bytes, cluster
//! ids compact (`ClusterId`): a cluster id's Python string is made when it is
//! asked for (kept, one per cluster, it cost 72 bytes a cluster, about 24 a
//! live post). Held events stay Python objects.

use pyo3::exceptions::{PyKeyError, PyTypeError};
use pyo3::prelude::*;
use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use pyo3::types::{PyBytes, PyDict, PyList, PyString};
use pyo3::{PyTraverseError, PyVisit};

use crate::dedupe::with_id;
use crate::ev::{post_text, Ev, RegBatch};
use crate::route::refusal;
use viralwatch_core::content::Cid;
use viralwatch_core::keyed::Keyed;
use viralwatch_core::posts::{ClusterId, PostClusters, Resolver, Routed};
use viralwatch_core::wire::write_utf8;
use viralwatch_core::wire_index::write_cid;

/// A registration for another partition: post, cluster.
type Foreign = (Box<[u8]>, Arc<str>);

/// Held events as Python's records (a compiled one made a ``ShareEvent`` now).
fn into_py(py: Python<'_>, events: Vec<Ev>) -> PyResult<Vec<Py<PyAny>>> {
    events.into_iter().map(|ev| ev.into_py(py)).collect()
}

fn cluster_text<'py>(cluster: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyString>> {
    cluster
        .cast::<PyString>()
        .cloned()
        .map_err(|_| PyTypeError::new_err("a cluster id is a str"))
}

/// Which cluster each live post belongs to, and the events waiting for their parent post
/// (see ``streams.router``). ``partition``/``partitions``: a streaming resolve partition's,
/// which keeps only its own posts (``zlib.crc32`` of the id), records those it keeps for
/// its log (:meth:`take_new`) and queues the others' (:meth:`take_foreign`).
#[pyclass(module = "streams._core", name = "PostRoutes")]
pub struct PyPostRoutes {
    pub(crate) inner: Resolver<(), Ev>,
}

/// A cluster id's Python string.
fn id_str(py: Python<'_>, id: &ClusterId) -> Py<PyString> {
    id.with_str(|s| PyString::new(py, s).unbind())
}

impl PyPostRoutes {
    /// The Python string of a cluster id (made now: none is kept).
    pub(crate) fn cluster_str(&self, py: Python<'_>, id: &str) -> Py<PyString> {
        PyString::new(py, id).unbind()
    }
}

#[pymethods]
impl PyPostRoutes {
    #[new]
    #[pyo3(signature = (partition = None, partitions = 1))]
    fn new(partition: Option<u32>, partitions: u32) -> Self {
        let posts = match partition {
            None => PostClusters::new(),
            Some(p) => PostClusters::partition(p, partitions),
        };
        Self {
            inner: Resolver::new(posts),
        }
    }

    /// The held events for the garbage collector (a Python record among them may reference
    /// what references this map: a loop holding it).
    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        for ev in self.inner.orphans.items() {
            ev.traverse(&visit)?;
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.inner.orphans.clear();
    }

    /// Posts mapped.
    fn __len__(&self) -> usize {
        self.inner.posts.len()
    }

    /// Distinct clusters the posts belong to.
    #[getter]
    fn clusters(&self) -> usize {
        self.inner.posts.clusters()
    }

    /// Events held, waiting for their parent (or target) post.
    #[getter]
    fn held(&self) -> usize {
        self.inner.orphans.len()
    }

    /// Heap bytes of the map (its table at capacity, long ids, cluster ids).
    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.posts.heap_bytes()
    }

    fn __contains__(&self, post: &Bound<'_, PyAny>) -> bool {
        with_id(post, |p| self.inner.posts.contains(p)).unwrap_or(false)
    }

    /// The cluster of ``post``, or ``default``.
    #[pyo3(signature = (post, default = None))]
    fn get(
        &self,
        py: Python<'_>,
        post: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let found = with_id(post, |p| {
            self.inner.posts.get(p).map(|(id, _)| id_str(py, id))
        })?;
        Ok(match found {
            Some(s) => s.into_any(),
            None => default.unwrap_or_else(|| py.None()),
        })
    }

    fn __getitem__(&self, py: Python<'_>, post: &Bound<'_, PyAny>) -> PyResult<Py<PyString>> {
        with_id(post, |p| {
            self.inner.posts.get(p).map(|(id, _)| id_str(py, id))
        })?
        .ok_or_else(|| PyKeyError::new_err(post.clone().unbind()))
    }

    /// Map ``post`` to ``cluster``, replacing what it had (not recorded for a log).
    fn __setitem__(&mut self, post: &Bound<'_, PyAny>, cluster: &Bound<'_, PyAny>) -> PyResult<()> {
        let c = cluster_text(cluster)?;
        let id = c.to_str()?;
        with_id(post, |p| self.inner.posts.set(p, id, |_| ()))
    }

    /// Every post, by id (bytes order).
    fn keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for (k, _, _) in self.inner.posts.items() {
            out.append(post_text(py, &k)?)?;
        }
        Ok(out)
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.keys(py)?.try_iter().map(|i| i.into_any())
    }

    /// Every post's cluster, in :meth:`keys` order.
    fn values<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(
            py,
            self.inner
                .posts
                .items()
                .into_iter()
                .map(|(_, id, _)| id_str(py, id)),
        )
    }

    /// ``(post, cluster)`` of every post, by post id (bytes order): the same whatever the
    /// order they came in.
    fn items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for (k, id, _) in self.inner.posts.items() {
            out.append((post_text(py, &k)?, id_str(py, id)))?;
        }
        Ok(out)
    }

    /// Take back a state log's entries (in the order written): ``posts`` mapped (what a
    /// post had replaced: its cluster was evicted and it came again, see
    /// ``streams.wire.ResolveDelta``), then ``forgot`` forgotten. Nothing is recorded.
    fn fold(&mut self, posts: &Bound<'_, PyDict>, forgot: &Bound<'_, PyAny>) -> PyResult<()> {
        for (post, cluster) in posts.iter() {
            let c = cluster_text(&cluster)?;
            let id = c.to_str()?;
            with_id(&post, |p| self.inner.posts.set(p, id, |_| ()))?;
        }
        self.forget_many(forgot)?;
        Ok(())
    }

    /// Forget posts (their clusters evicted); how many were mapped.
    fn forget_many(&mut self, posts: &Bound<'_, PyAny>) -> PyResult<usize> {
        let mut n = 0;
        for post in posts.try_iter()? {
            n += usize::from(with_id(&post?, |p| self.inner.posts.remove(p))?);
        }
        Ok(n)
    }

    /// Route a reshare of ``post`` (``share``) or a takedown of ``target``: ``(cluster,
    /// released, None)`` when ``target``'s cluster is known (``released``: the events a
    /// reshare's post released, see :meth:`register`); ``(None, [], None)`` when held
    /// until ``target`` is routed; ``(None, [], (reason, held))`` when refused (``"cycle"``,
    /// ``"orphan_overflow"``).
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn route(
        &mut self,
        py: Python<'_>,
        target: &Bound<'_, PyAny>,
        post: &Bound<'_, PyAny>,
        share: bool,
        ts_ms: i64,
        event: Py<PyAny>,
        max_held: usize,
    ) -> PyResult<(
        Option<Py<PyString>>,
        Vec<Py<PyAny>>,
        Option<(&'static str, usize)>,
    )> {
        let routed = with_id(target, |t| {
            with_id(post, |p| {
                let this = &mut self.inner;
                this.route(t, p, share, ts_ms, Ev::Py(event), max_held, |_| ())
            })
        })??;
        Ok(match routed {
            Routed::Found(id, released) => (
                Some(id.with_str(|s| self.cluster_str(py, s))),
                into_py(py, released)?,
                None,
            ),
            Routed::Held => (None, Vec::new(), None),
            Routed::Refused(r) => (None, Vec::new(), Some(refusal(r))),
        })
    }

    /// ``post`` was routed to ``cluster``: mapped (a partition's own post) unless mapped
    /// already, or queued for its partition; then what waited for it, released (in the order
    /// held), and what waited for their posts in turn (depth first, the last released
    /// first): the events, all now of ``cluster``.
    fn register(
        &mut self,
        py: Python<'_>,
        post: &Bound<'_, PyAny>,
        cluster: &Bound<'_, PyAny>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let c = cluster_text(cluster)?;
        let id = Cid::of(c.to_str()?);
        into_py(py, with_id(post, |p| self.inner.register(p, &id, |_| ()))?)
    }

    /// Give up on the held events at or before ``cut_ms``: by target (in the order each
    /// first got an event), then in the order held.
    fn expire(&mut self, py: Python<'_>, cut_ms: i64) -> PyResult<Vec<Py<PyAny>>> {
        self.inner
            .orphans
            .expire(cut_ms)
            .into_iter()
            .map(|(_, ev)| ev.into_py(py))
            .collect()
    }

    /// The posts this partition mapped since the last call as its state log writes them
    /// (``"p"``), less ``dropped`` (posts mapped, then forgotten: no longer mapped):
    /// ``(text, count)``, ``text`` the JSON object orjson writes for ``{post: cluster}``
    /// (each post once, in the place it was first mapped, with the cluster it was mapped
    /// to last, as a dict built in order keeps them), or ``{post: cluster}`` itself when a
    /// post id is not UTF-8 (a lone surrogate, which no parsed event has: orjson refuses
    /// it, as before). Why: a ``str`` per post and per cluster, a dict, and orjson reading
    /// them back, for a log entry that is bytes anyway (one post an event).
    fn take_new_log<'py>(
        &mut self,
        py: Python<'py>,
        dropped: Vec<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let new = self.inner.posts.take_new();
        let mut gone: HashSet<Vec<u8>> = HashSet::new();
        for p in &dropped {
            gone.insert(with_id(p, |k| k.to_vec())?);
        }
        // each post once, first place, last cluster (a table of this batch's posts, keyed
        // as the core's tables of ids users choose are: `viralwatch_core::keyed`)
        let mut at: HashMap<&[u8], usize, Keyed> =
            HashMap::with_capacity_and_hasher(new.len(), Keyed::default());
        let mut order: Vec<(&[u8], &Cid)> = Vec::with_capacity(new.len());
        for (k, id) in new.iter() {
            if gone.contains(k) {
                continue;
            }
            match at.entry(k) {
                Entry::Occupied(e) => order[*e.get()].1 = id,
                Entry::Vacant(e) => {
                    e.insert(order.len());
                    order.push((k, id));
                }
            }
        }
        // checked once here (an ASCII id, nearly every one, by words), written as bytes
        if order
            .iter()
            .any(|(k, _)| !k.is_ascii() && std::str::from_utf8(k).is_err())
        {
            let out = PyDict::new(py);
            for (k, id) in order {
                out.set_item(post_text(py, k)?, id.with_str(|s| self.cluster_str(py, s)))?;
            }
            return Ok(out.into_any());
        }
        let mut text = Vec::with_capacity(2 + order.len() * 48);
        text.push(b'{');
        for (i, (k, id)) in order.iter().enumerate() {
            if i > 0 {
                text.push(b',');
            }
            write_utf8(&mut text, k);
            text.push(b':');
            write_cid(&mut text, id);
        }
        text.push(b'}');
        Ok((PyBytes::new(py, &text), order.len())
            .into_pyobject(py)?
            .into_any())
    }

    /// Posts of other partitions routed here since the last call: ``(their partition,
    /// RegBatch)`` for each partition owed any, by partition, each in the order routed: a
    /// batch a run of them released or not (:attr:`RegBatch.released`), so the order holds.
    fn take_foreign(&mut self) -> Vec<(u32, RegBatch)> {
        let mut by_home: BTreeMap<u32, Vec<(bool, Vec<Foreign>)>> = BTreeMap::new();
        for (home, post, cluster, released) in self.inner.posts.take_foreign() {
            let runs = by_home.entry(home).or_default();
            match runs.last_mut() {
                Some((r, regs)) if *r == released => regs.push((post, cluster)),
                _ => runs.push((released, vec![(post, cluster)])),
            }
        }
        by_home
            .into_iter()
            .flat_map(|(home, runs)| {
                (runs.into_iter()).map(move |(released, regs)| (home, RegBatch { regs, released }))
            })
            .collect()
    }

    /// Whether the posts registered now are released events' (a partition routing the
    /// held events its log kept): their registrations for other partitions are marked so
    /// (:attr:`RegBatch.released`).
    #[getter]
    fn get_released(&self) -> bool {
        self.inner.posts.released
    }

    #[setter]
    fn set_released(&mut self, released: bool) {
        self.inner.posts.released = released;
    }
}
