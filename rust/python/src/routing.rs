//! Routing one parsed event, shared by replay's loop (`streams._core.ReplayLoop`) and a
//! streaming resolve partition's (`streams._core.ResolveLoop`): a reshare or takedown to
//! its parent's cluster through the post -> cluster map (or held, or refused), a post
//! registered with what waited for it released, an unbanked upload's image signals and
//! the cluster it joins or starts in the index of unbanked content, and an unbanked
//! cluster's event noted in the index's idle order.
//!
//! One implementation: the two loops differ in what they do with a routed event (replay
//! holds it for its watermark, a resolve partition sends it to its clusters partition),
//! not in how it is routed.

use std::borrow::Cow;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString};

use viralwatch_core::content::{Cid, Kind as Signal, ReadSignal};
use viralwatch_core::emerging::unbanked_cid;
use viralwatch_core::event::Kind as EventKind;
use viralwatch_core::keyed::Keyed;
use viralwatch_core::pdq;
use viralwatch_core::posts::Routed as Route;
use viralwatch_core::unbanked::Kind;

use crate::content::PyContentSignals;
use crate::emerging::PyIdleClusters;
use crate::ev::{Ev, Image, Line};
use crate::pdq::PyPdqIndex;
use crate::posts::PyPostRoutes;
use crate::route::refusal;
use crate::unbanked::text;

/// A routed event's cluster: its id read once, where the event was routed ([`Cid`]: its
/// compact form and keyed hash, which every table it reaches looks it up by), and its
/// Python string where Python gave one or one was made (only for what Python is given).
pub(crate) struct Cluster {
    pub(crate) cid: Cid,
    py: Option<Py<PyString>>,
}

impl Cluster {
    /// A cluster Python named.
    pub(crate) fn of_py(id: &Bound<'_, PyString>) -> PyResult<Self> {
        Ok(Self {
            cid: Cid::of(id.to_str()?),
            py: Some(id.clone().unbind()),
        })
    }

    pub(crate) fn of_cid(cid: Cid) -> Self {
        Self { cid, py: None }
    }

    /// With its Python string made now, if it had none (a loop that hands every event to
    /// Python: the string made once, not at each use).
    pub(crate) fn with_py(mut self, py: Python<'_>) -> Self {
        if self.py.is_none() {
            self.py = Some(self.make(py));
        }
        self
    }

    fn make(&self, py: Python<'_>) -> Py<PyString> {
        self.cid.with_str(|s| PyString::new(py, s).unbind())
    }

    /// Its Python string (made now if it has none).
    pub(crate) fn py_str<'py>(&self, py: Python<'py>) -> Bound<'py, PyString> {
        match &self.py {
            Some(s) => s.bind(py).clone(),
            None => self.make(py).into_bound(py),
        }
    }

    /// An unbanked cluster's (``u-``).
    pub(crate) fn is_unbanked(&self) -> bool {
        self.cid.kind_is(b'u')
    }
}

/// What routing a reshare or takedown gave.
pub(crate) enum Reshare<'py> {
    /// its target's cluster, and what its own post released (a reshare's)
    Found(Cluster, Vec<Ev>),
    /// held until its target is routed
    Held,
    /// refused: the reason and the events held, and the target it waited for
    Refused(&'static str, usize, Bound<'py, PyAny>),
}

/// An upload's image signals, lowercase, MD5 first (``streams.emerging.signals_of``), and
/// the key of the cluster it starts if none is near (``unbanked_cluster_id``'s: the
/// signal's kind and its text as given). Borrowed from the event: a signal is copied only
/// to lowercase it (no allocation for the usual upload, once an upload and again where it
/// is applied).
pub(crate) struct ImageSignals<'a> {
    lower: [(Signal, Cow<'a, str>); 2],
    /// the PDQ's words and the MD5's bytes, where the parser read them (see `Image`)
    pdq_hash: Option<pdq::Hash>,
    md5_bytes: Option<[u8; 16]>,
    n: usize,
    own_key: Option<(&'static [u8], &'a str)>,
}

impl<'a> ImageSignals<'a> {
    fn push(&mut self, kind: Signal, text: &'a str, key: &'static [u8], lower: bool) {
        let text_lower = if lower {
            Cow::Borrowed(text)
        } else {
            lowercase(text)
        };
        self.lower[self.n] = (kind, text_lower);
        self.n += 1;
        self.own_key.get_or_insert((key, text));
    }

    /// The signals, as the indexes take them (a hash's value with it, where the parser
    /// read it).
    pub(crate) fn signals(&self) -> [ReadSignal<'_>; 2] {
        self.lower.each_ref().map(|(k, t)| ReadSignal {
            kind: *k,
            text: t,
            pdq: if *k == Signal::Pdq {
                self.pdq_hash
            } else {
                None
            },
            md5: if *k == Signal::Md5 {
                self.md5_bytes
            } else {
                None
            },
        })
    }

    /// How many of [`Self::signals`] are signals.
    pub(crate) fn len(&self) -> usize {
        self.n
    }

    /// The id of the cluster the upload starts if none is near (``unbanked_cluster_id``:
    /// ``u-`` and the BLAKE2b of ``kind:text``), or `None` with no signal.
    fn own_cid(&self) -> Option<Cid> {
        let (kind, text) = self.own_key?;
        let n = kind.len() + text.len();
        let mut stack = [0_u8; 128];
        let mut heap = Vec::new();
        let key: &mut [u8] = if n <= stack.len() {
            &mut stack[..n]
        } else {
            heap.resize(n, 0);
            &mut heap
        };
        key[..kind.len()].copy_from_slice(kind);
        key[kind.len()..].copy_from_slice(text.as_bytes());
        Some(unbanked_cid(key))
    }
}

/// `text` in lowercase, copied only if it has an uppercase letter.
fn lowercase(text: &str) -> Cow<'_, str> {
    if text.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(text.to_ascii_lowercase())
    } else {
        Cow::Borrowed(text)
    }
}

/// An upload's image signals as the content indexes take them, lowercase, MD5 first (a
/// PDQ under ``min_pdq_quality`` left out): the router's index and the detector's alike.
pub(crate) fn image_signals<'a>(image: &'a Image<'_>, min_pdq_quality: i64) -> ImageSignals<'a> {
    let mut out = ImageSignals {
        lower: [
            (Signal::Md5, Cow::Borrowed("")),
            (Signal::Md5, Cow::Borrowed("")),
        ],
        pdq_hash: None,
        md5_bytes: None,
        n: 0,
        own_key: None,
    };
    if let Some(md5) = image.md5.as_deref().filter(|t| !t.is_empty()) {
        out.push(Signal::Md5, md5, b"md5:", image.lower);
        out.md5_bytes = image.md5_bytes.copied();
    }
    if signalled_pdq(image, min_pdq_quality) {
        out.push(
            Signal::Pdq,
            image.pdq.as_deref().unwrap_or_default(),
            b"pdq:",
            image.lower,
        );
        out.pdq_hash = image.pdq_hash.copied();
    }
    out
}

/// Whether an upload's PDQ is counted low quality (``Stats.low_quality``): present, of a
/// known quality under ``min_pdq_quality`` (``streams.router.low_quality``'s rule for an
/// image; what `crate::detect::Unmatched` counts).
pub(crate) fn low_pdq(image: &Image<'_>, min_pdq_quality: i64) -> bool {
    image.pdq.is_some() && image.quality.is_some_and(|q| q < min_pdq_quality)
}

/// Whether an upload's PDQ is one the indexes use: present, and of quality
/// ``min_pdq_quality`` or more when its quality is known.
fn signalled_pdq(image: &Image<'_>, min_pdq_quality: i64) -> bool {
    image.pdq.as_deref().is_some_and(|t| !t.is_empty())
        && image.quality.is_none_or(|q| q >= min_pdq_quality)
}

/// What `HashBanks.screen` gives for a batch: the MD5 table's keys (lowercase hex, as
/// [`TextSet`]), the PDQ index, the widest PDQ threshold of an enabled bank (`-1`: no PDQ
/// search), and whether videos are banked (a frame may match any image's PDQ).
pub(crate) type Banks<'py> = (Bound<'py, TextSet>, Bound<'py, PyPdqIndex>, i64, bool);

/// A set of texts by their UTF-8 bytes (``streams._core.TextSet``): the banks' MD5 table's
/// keys, which `HashBanks` keeps beside the table (added with a key new to it, discarded
/// with its last entry). The screen asks it of each upload's MD5; asked of the table (a
/// Python dict) each question made a Python string of the MD5 and hashed it with SipHash:
/// 769 instructions a question, 70 M of a worker's 5,337 M resolve stage (callgrind,
/// `bench_stages.py --events 300000`), where a look-up here is a keyed hash of 32 bytes.
/// Two texts are equal exactly when their UTF-8 bytes are, so it answers as the dict.
#[pyclass(module = "streams._core", name = "TextSet")]
#[derive(Default)]
pub(crate) struct TextSet {
    keys: std::collections::HashSet<Box<[u8]>, Keyed>,
}

#[pymethods]
impl TextSet {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    /// Add ``text``; ``False`` when it is there already.
    fn add(&mut self, text: &str) -> bool {
        self.keys.insert(text.as_bytes().into())
    }

    /// Drop ``text``; ``False`` when it was not there.
    fn discard(&mut self, text: &str) -> bool {
        self.keys.remove(text.as_bytes())
    }

    fn __len__(&self) -> usize {
        self.keys.len()
    }

    fn __contains__(&self, text: &str) -> bool {
        self.holds(text.as_bytes())
    }
}

impl TextSet {
    pub(crate) fn holds(&self, text: &[u8]) -> bool {
        self.keys.contains(text)
    }
}

/// Whether the banks' MD5 table holds `md5` (as `HashBanks.lookup_md5` looks it up,
/// lowercase); `true` for a text the core does not read (Python then decides).
fn banked_md5(md5s: &TextSet, md5: &str) -> bool {
    if !md5.is_ascii() {
        return true;
    }
    if md5.bytes().any(|b| b.is_ascii_uppercase()) {
        md5s.holds(md5.to_ascii_lowercase().as_bytes())
    } else {
        md5s.holds(md5.as_bytes())
    }
}

/// What a loop does with the events a registration released (:meth:`Routing::release`):
/// replay's loop holds them for its watermark, a resolve partition's sends them to their
/// clusters partition; an unbanked cluster's event is noted in the index (or, away from
/// its owner, for it).
pub(crate) trait Deliver {
    /// the routing the loop holds
    fn routing(&self) -> &Routing;
    /// ``event``, of the unbanked cluster ``cluster``, at ``ts`` (before it is delivered)
    fn touch(&mut self, py: Python<'_>, cluster: &Cluster, event: &Ev, ts: i64) -> PyResult<()>;
    /// ``event`` (at ``ts``) routed to ``cluster``
    fn deliver(&mut self, py: Python<'_>, cluster: &Cluster, event: Ev, ts: i64) -> PyResult<()>;
}

/// The router's compiled state: the post -> cluster map with held orphans (``routes``)
/// and, where this router holds it, the index of unbanked content (``index``: its idle
/// order and holders).
pub(crate) struct Routing {
    pub(crate) routes: Py<PyPostRoutes>,
    pub(crate) index: Option<(Py<PyIdleClusters>, Py<PyContentSignals>)>,
    pub(crate) max_held: usize,
    pub(crate) min_pdq_quality: i64,
}

impl Routing {
    pub(crate) fn new(
        py: Python<'_>,
        routes: Py<PyPostRoutes>,
        idle: Option<Py<PyIdleClusters>>,
        max_held: usize,
        min_pdq_quality: i64,
    ) -> Self {
        let index = idle.map(|idle| {
            let signals = idle.borrow(py).signals.clone_ref(py);
            (idle, signals)
        });
        Self {
            routes,
            index,
            max_held,
            min_pdq_quality,
        }
    }

    /// Route a reshare (``share``) or takedown at ``ts``: see :class:`Reshare`.
    pub(crate) fn reshare<'py>(
        &self,
        py: Python<'py>,
        event: &Ev,
        share: bool,
        ts: i64,
    ) -> PyResult<Reshare<'py>> {
        let mut target_text = None;
        let routed = {
            let mut routes = self.routes.borrow_mut(py);
            event.with_posts(py, |p, t| {
                let routed =
                    routes
                        .inner
                        .route(t, p, share, ts, event.clone_ref(py), self.max_held, |_| ());
                if matches!(routed, Route::Refused(_)) {
                    target_text = Some(t.to_vec());
                }
                routed
            })?
        };
        Ok(match routed {
            Route::Found(id, released) => Reshare::Found(Cluster::of_cid(id), released),
            Route::Held => Reshare::Held,
            Route::Refused(r) => {
                let (reason, held) = refusal(r);
                let target = text(py, &target_text.unwrap_or_default())?;
                Reshare::Refused(reason, held, target)
            }
        })
    }

    /// Read ahead what routing `lines`' reshares and takedowns will read first (see
    /// ``Resolver::warm``), in one tight loop before their turn: their look-ups' cache
    /// misses overlap one another rather than each waiting behind its event's work. One
    /// borrow of the map for all: a borrow is an atomic exchange, which waits for every
    /// load before it, and one a look-up kept them in a queue. Nothing changes.
    pub(crate) fn warm(&self, py: Python<'_>, lines: &[Line]) {
        let mut posts: Vec<&[u8]> = Vec::with_capacity(2 * lines.len());
        for line in lines {
            // (an event Python made is rare here: not read ahead)
            if let Line::Event(Ev::Core(ev)) = line {
                if ev.kind() != EventKind::Upload {
                    let post = ev.post_id().as_bytes();
                    match ev.parent_post_id() {
                        Some(target) => posts.extend([target.as_bytes(), post]),
                        None => posts.push(post),
                    }
                }
            }
        }
        let mut clusters = Vec::with_capacity(posts.len());
        self.routes
            .borrow(py)
            .inner
            .warm_many(&posts, &mut clusters);
        if let Some((idle, signals)) = &self.index {
            // the clusters found, touched in the idle order (``touch``)
            let held = signals.borrow(py);
            idle.borrow(py).inner.warm_many(&held.inner, &clusters);
        }
    }

    /// ``post`` is routed to ``cluster``: mapped (or queued for its partition), and what
    /// waited for it released, in order, each delivered to ``to`` (:meth:`release`).
    pub(crate) fn register<D: Deliver>(
        to: &mut D,
        py: Python<'_>,
        post: &[u8],
        cluster: &Cluster,
    ) -> PyResult<()> {
        let released = {
            let mut routes = to.routing().routes.borrow_mut(py);
            routes.inner.register(post, &cluster.cid, |_| ())
        };
        Self::release(to, py, cluster, released)
    }

    /// What waited for a post of ``cluster`` (``released``, in the order given) routed to
    /// it: for each, its time read, the cluster touched if unbanked, and the event
    /// delivered. The one walk of both loops: replay's and a resolve partition's differ
    /// only in what touching and delivering do (:class:`Deliver`).
    pub(crate) fn release<D: Deliver>(
        to: &mut D,
        py: Python<'_>,
        cluster: &Cluster,
        released: Vec<Ev>,
    ) -> PyResult<()> {
        if released.is_empty() {
            return Ok(());
        }
        let unbanked = cluster.is_unbanked();
        for child in released {
            let ts = child.ts_ms(py)?;
            if unbanked {
                to.touch(py, cluster, &child, ts)?;
            }
            to.deliver(py, cluster, child, ts)?;
        }
        Ok(())
    }

    /// An event of the unbanked cluster ``cluster`` at ``ts_ms``: not idle (the index's
    /// order; nothing where this router does not hold the index).
    pub(crate) fn touch(&self, py: Python<'_>, cluster: &Cid, ts_ms: i64) {
        if let Some((idle, signals)) = &self.index {
            let held = signals.borrow(py);
            idle.borrow_mut(py).inner.touch(&held.inner, cluster, ts_ms);
        }
    }

    /// Whether an upload's content has a signal the index uses (an MD5, a usable PDQ).
    pub(crate) fn signalled(&self, image: &Image<'_>) -> bool {
        image.md5.as_deref().is_some_and(|t| !t.is_empty())
            || signalled_pdq(image, self.min_pdq_quality)
    }

    /// The cluster an unbanked upload with image signals (not a video) joins or starts at
    /// ``ts`` in the index of unbanked content (``EmergingClusters.assign``).
    pub(crate) fn assign_image(
        &self,
        py: Python<'_>,
        image: &Image<'_>,
        ts: i64,
    ) -> PyResult<Cluster> {
        self.assign(py, image, ts, false)
    }

    /// `assign_image` with the GIL released for the search and insertion: a worker's
    /// resolve partition, whose process has another thread (Faust's consumer). Not
    /// replay's: a release costs about 0.1 us, an upload's search a few, and no other
    /// thread waits there.
    pub(crate) fn assign_image_released(
        &self,
        py: Python<'_>,
        image: &Image<'_>,
        ts: i64,
    ) -> PyResult<Cluster> {
        self.assign(py, image, ts, true)
    }

    fn assign(
        &self,
        py: Python<'_>,
        image: &Image<'_>,
        ts: i64,
        release: bool,
    ) -> PyResult<Cluster> {
        let Some((idle, signals)) = &self.index else {
            return Err(PyTypeError::new_err(
                "this router holds no index of unbanked content",
            ));
        };
        let image = image_signals(image, self.min_pdq_quality);
        let Some(own) = image.own_cid() else {
            return Err(PyTypeError::new_err("a deferred upload has no signal"));
        };
        let id = {
            let mut held = signals.borrow_mut(py);
            let mut idle = idle.borrow_mut(py);
            let threshold = idle.threshold;
            let (held, idle) = (&mut held.inner, &mut idle.inner);
            let signals = &image.signals()[..image.len()];
            // The index's search and insertion, the GIL released (`release`: a worker's):
            // the longest pure step of a resolve batch (a search is memory-bound, several
            // microseconds at a million posts), where the worker's other thread may run.
            // Safe: both tables are borrowed mutably through their cells above (another
            // thread asking for them would be refused, not let in; none does: they are
            // this resolve partition's), and the closure reads Rust values alone.
            let mut assign = || idle.assign(held, signals, &own, ts, threshold);
            if release { py.detach(assign) } else { assign() }
                .map_err(|e| PyValueError::new_err(e.0))?
        };
        Ok(Cluster::of_cid(id))
    }

    /// A batch's uploads matched against the banks: each one's ``Routed`` (a bank's or the
    /// allow-list's cluster) or ``None``, by its index in the batch. Python
    /// (``host._classify``, ``Router.classify_batch``) is asked only about the uploads an
    /// entry may match (given its ``ShareEvent``): an MD5 the banks hold, a usable PDQ
    /// within the widest threshold of a banked one (one batched search of the banks'
    /// index), a video, or an image when videos are banked (a frame may match it). The
    /// others match nothing, the allow-list included (its entries are in the same tables),
    /// whatever the timed adds. Most of a platform's uploads are these: no Python per upload
    /// for them, and no call for a batch with none asked. (Not counted here: an upload is
    /// counted once, where it is new, `crate::detect::Unmatched`.)
    pub(crate) fn screen(
        &self,
        py: Python<'_>,
        host: &Bound<'_, PyAny>,
        lines: &[Line],
        banks: &Banks<'_>,
    ) -> PyResult<Vec<Option<Py<PyAny>>>> {
        let (md5s, index, radius, videos) = banks;
        let md5s = md5s.borrow();
        let mut routes: Vec<Option<Py<PyAny>>> = (0..lines.len()).map(|_| None).collect();
        // (index in the batch, asked), and the PDQ queries of those not asked yet
        let mut uploads: Vec<(usize, bool)> = Vec::new();
        let mut queries: Vec<pdq::Hash> = Vec::new();
        let mut queried: Vec<usize> = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let Line::Event(ev) = line else {
                continue;
            };
            if ev.kind(py)? != Kind::Upload {
                continue;
            }
            let Some(image) = ev.image(py)? else {
                continue;
            };
            let usable = image.pdq.is_some()
                && (image.quality.is_none() || image.quality >= Some(self.min_pdq_quality));
            let mut ask = image.odd || usable && *videos || image.video;
            if !ask {
                if let Some(md5) = image.md5.as_deref() {
                    ask = banked_md5(&md5s, md5);
                }
            }
            if !ask && usable && *radius >= 0 {
                // read with its line (a compiled event's), or here (a Python record's)
                let hash = image.pdq_hash.copied().or_else(|| {
                    image
                        .pdq
                        .as_deref()
                        .and_then(|t| pdq::parse_hex(t.as_bytes()))
                });
                match hash {
                    Some(h) => {
                        queries.push(h);
                        queried.push(uploads.len());
                    }
                    None => ask = true, // not a hash the core reads: Python decides
                }
            }
            uploads.push((i, ask));
        }
        if uploads.is_empty() {
            return Ok(routes);
        }
        if !queries.is_empty() {
            let threshold = u32::try_from(*radius).unwrap_or(u32::MAX);
            let banked = index.borrow();
            let banked = &banked.inner;
            // The batch's search with the GIL released, as the unbanked index's (see
            // `assign_image`). Safe: the banks' index is borrowed through its cell above (a
            // bank update, in another thread, would be refused, not let in; bank updates are
            // the worker loop's, this thread's), and the closure reads Rust values alone.
            py.detach(|| {
                banked.search_with(&queries, threshold, |q, _, _, _| {
                    uploads[queried[q]].1 = true;
                });
            });
        }
        let asked = PyList::empty(py);
        let mut at = Vec::new();
        for &(i, ask) in &uploads {
            if ask {
                let Line::Event(ev) = &lines[i] else {
                    continue;
                };
                asked.append(ev.to_py(py)?)?;
                at.push(i);
            }
        }
        if at.is_empty() {
            return Ok(routes);
        }
        let answers = host.call_method1(intern!(py, "_classify"), (&asked,))?;
        for (i, routed) in at.into_iter().zip(answers.try_iter()?) {
            let routed = routed?;
            if !routed.is_none() {
                routes[i] = Some(routed.unbind());
            }
        }
        Ok(routes)
    }

    pub(crate) fn traverse(&self, visit: &pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.routes)?;
        if let Some((idle, signals)) = &self.index {
            visit.call(idle)?;
            visit.call(signals)?;
        }
        Ok(())
    }
}
