//! Held orphans' refusals as Python names them. The held events themselves are
//! `streams._core.PostRoutes`' (`viralwatch_core::posts::Resolver`, over
//! `viralwatch_core::route::Orphans`): routing a reshare and holding it are one call.

use viralwatch_core::route::Refusal;

/// Why an event was not held, as the router's rejection names it, with the items held.
pub(crate) fn refusal(r: Refusal) -> (&'static str, usize) {
    match r {
        Refusal::Cycle => ("cycle", 0),
        Refusal::Overflow { held } => ("orphan_overflow", held),
    }
}
