"""moetopo: topology of Mixture-of-Experts checkpoints."""


def __getattr__(name: str):
    """``__version__`` is looked up on first use: importlib.metadata is slow to import,
    and ``moetopo inspect`` never needs it."""
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("moetopo")
    except PackageNotFoundError:  # running from a source tree without install
        return "0.0.0+unknown"
