"""ridgeline: where the limit is, how close real runs get, and what each optimization buys."""

from ridgeline.errors import RidgelineError
from ridgeline.loader import load_model  # the one model loader (torch is imported only when it is called)

__version__ = "0.1.0"
__all__ = ["RidgelineError", "__version__", "load_model"]
