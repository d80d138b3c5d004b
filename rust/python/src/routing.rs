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

use std::sync::Arc;

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyString;

use viralwatch_core::content::Kind as Signal;
use viralwatch_core::emerging::unbanked_id;
use viralwatch_core::posts::Routed as Route;

use crate::content::PyContentSignals;
use crate::dedupe::with_id;
use crate::emerging::PyIdleClusters;
use crate::posts::PyPostRoutes;
use crate::route::refusal;

/// Whether a cluster id is an unbanked cluster's (``u-``).
pub(crate) fn is_unbanked_id(id: &str) -> bool {
    id.as_bytes().first() == Some(&b'u')
}

/// What routing a reshare or takedown gave.
pub(crate) enum Reshare<'py> {
    /// its target's cluster, and what its own post released (a reshare's)
    Found(Bound<'py, PyString>, Vec<Py<PyAny>>),
    /// held until its target is routed
    Held,
    /// refused: the reason and the events held, and the target it waited for
    Refused(&'static str, usize, Bound<'py, PyAny>),
}

/// An upload's image signals, lowercase, MD5 first (``streams.emerging.signals_of``), and
/// the key of the cluster it starts if none is near (``unbanked_cluster_id``'s).
#[derive(Default)]
pub(crate) struct ImageSignals {
    pub(crate) lower: Vec<(Signal, String)>,
    pub(crate) own_key: Option<String>,
}

impl ImageSignals {
    pub(crate) fn refs(&self) -> Vec<(Signal, &str)> {
        self.lower.iter().map(|(k, t)| (*k, t.as_str())).collect()
    }
}

/// An upload's (``content``: its ``Content``) image signals as the content indexes take
/// them, lowercase, MD5 first (a PDQ under ``min_pdq_quality`` left out): the router's
/// index and the detector's alike.
pub(crate) fn image_signals(
    content: &Bound<'_, PyAny>,
    min_pdq_quality: i64,
) -> PyResult<ImageSignals> {
    let py = content.py();
    let mut out = ImageSignals::default();
    let md5 = content.getattr(intern!(py, "md5"))?;
    if md5.is_truthy()? {
        let md5 = md5.cast_into::<PyString>()?;
        let text = md5.to_str()?;
        out.lower.push((Signal::Md5, text.to_ascii_lowercase()));
        out.own_key = Some(format!("md5:{text}"));
    }
    let pdq = content.getattr(intern!(py, "pdq"))?;
    if signalled_pdq(content, &pdq, min_pdq_quality)? {
        let pdq = pdq.cast_into::<PyString>()?;
        let text = pdq.to_str()?;
        out.lower.push((Signal::Pdq, text.to_ascii_lowercase()));
        out.own_key.get_or_insert_with(|| format!("pdq:{text}"));
    }
    Ok(out)
}

/// Whether an upload's PDQ (``pdq``) is one the indexes use: present, and of quality
/// ``min_pdq_quality`` or more when its quality is known.
fn signalled_pdq(
    content: &Bound<'_, PyAny>,
    pdq: &Bound<'_, PyAny>,
    min_pdq_quality: i64,
) -> PyResult<bool> {
    if !pdq.is_truthy()? {
        return Ok(false);
    }
    let quality = content.getattr(intern!(content.py(), "pdq_quality"))?;
    Ok(quality.is_none() || quality.extract::<i64>()? >= min_pdq_quality)
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
        event: &Bound<'py, PyAny>,
        share: bool,
        ts: i64,
    ) -> PyResult<Reshare<'py>> {
        let post = event.getattr(intern!(py, "post_id"))?;
        let target = if share {
            event.getattr(intern!(py, "parent_post_id"))?
        } else {
            post.clone()
        };
        let routed = {
            let mut routes = self.routes.borrow_mut(py);
            with_id(&target, |t| {
                with_id(&post, |p| {
                    routes.inner.route(
                        t,
                        p,
                        share,
                        ts,
                        event.clone().unbind(),
                        self.max_held,
                        |_| (),
                    )
                })
            })??
        };
        Ok(match routed {
            Route::Found(id, released) => {
                let cluster = self.routes.borrow(py).cluster_str(py, &id).into_bound(py);
                Reshare::Found(cluster, released)
            }
            Route::Held => Reshare::Held,
            Route::Refused(r) => {
                let (reason, held) = refusal(r);
                Reshare::Refused(reason, held, target)
            }
        })
    }

    /// ``post`` is routed to ``cluster``: mapped (or queued for its partition), and what
    /// waited for it released, in order.
    pub(crate) fn register(
        &self,
        py: Python<'_>,
        post: &Bound<'_, PyAny>,
        cluster: &Bound<'_, PyString>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let id: Arc<str> = Arc::from(cluster.to_str()?);
        let mut routes = self.routes.borrow_mut(py);
        with_id(post, |p| routes.inner.register(p, &id, |_| ()))
    }

    /// An event of the unbanked cluster ``cluster`` at ``ts_ms``: not idle (the index's
    /// order; nothing where this router does not hold the index).
    pub(crate) fn touch(&self, py: Python<'_>, cluster: &str, ts_ms: i64) {
        if let Some((idle, signals)) = &self.index {
            let held = signals.borrow(py);
            idle.borrow_mut(py).inner.touch(&held.inner, cluster, ts_ms);
        }
    }

    /// Whether an upload's content has a signal the index uses (an MD5, a usable PDQ).
    pub(crate) fn signalled(&self, py: Python<'_>, content: &Bound<'_, PyAny>) -> PyResult<bool> {
        if content.getattr(intern!(py, "md5"))?.is_truthy()? {
            return Ok(true);
        }
        signalled_pdq(
            content,
            &content.getattr(intern!(py, "pdq"))?,
            self.min_pdq_quality,
        )
    }

    /// The cluster an unbanked upload with image signals (not a video) joins or starts at
    /// ``ts`` in the index of unbanked content (``EmergingClusters.assign``).
    pub(crate) fn assign_image<'py>(
        &self,
        py: Python<'py>,
        content: &Bound<'py, PyAny>,
        ts: i64,
    ) -> PyResult<Bound<'py, PyString>> {
        let Some((idle, signals)) = &self.index else {
            return Err(PyTypeError::new_err(
                "this router holds no index of unbanked content",
            ));
        };
        let image = image_signals(content, self.min_pdq_quality)?;
        let Some(key) = &image.own_key else {
            return Err(PyTypeError::new_err("a deferred upload has no signal"));
        };
        let own = unbanked_id(key.as_bytes());
        let id = {
            let mut held = signals.borrow_mut(py);
            let mut idle = idle.borrow_mut(py);
            let threshold = idle.threshold;
            idle.inner
                .assign(&mut held.inner, &image.refs(), &own, ts, threshold)
                .map_err(|e| PyValueError::new_err(e.0))?
        };
        Ok(PyString::new(py, &id))
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
