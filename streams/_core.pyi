"""Type stubs of the compiled core (``rust/python``), built by maturin into ``streams._core``."""

def version() -> str:
    """The compiled core's version (its crate's)."""
