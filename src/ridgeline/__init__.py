"""ridgeline: where the limit is, how close real runs get, and what each optimization buys."""

from ridgeline.errors import RidgelineError

__version__ = "0.1.0"
__all__ = ["RidgelineError", "__version__"]
