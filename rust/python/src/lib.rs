//! `streams._core`: the PyO3 face of `viralwatch-core`. Each function takes a
//! batch of raw records and gives back what Python must act on; no single
//! event crosses the boundary on its own.

use pyo3::prelude::*;

/// The compiled core's version, so Python can tell which build it imported.
#[pyfunction]
fn version() -> &'static str {
    viralwatch_core::VERSION
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(version, m)?)?;
    Ok(())
}
