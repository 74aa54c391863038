"""The `ridgeline` command: one module per command family, each command parse → one library call → render.

| module | commands |
|---|---|
| analyze | analyze, plot |
| sweep | sweep |
| catalogue | devices, models, formats |
| measure | probe, bench |
| serve | serve-bench |
| quant | quantize, export-gguf |
| quality | eval |
| train | gqa |
| fleet | fleet probe, fleet bench, fleet eval (Ray) |
| accel | accel |
| compress | compress (run), compress train |
| medusa | medusa train, medusa accuracy, medusa tree |
| distill | distill |
| techniques | techniques |
| demo | demo |

Heavy imports (torch, transformers) happen inside command bodies, so `ridgeline --help` and the analytic
commands start without torch.
"""

from ridgeline.cli.common import app, console, err_console

# importing a module registers its commands; `ridgeline --help` lists them in this order
from ridgeline.cli import analyze, sweep, catalogue, measure, serve, quant, quality, train, fleet, accel, compress, medusa, distill, techniques, demo  # noqa: E402,F401,I001


def main() -> None:
    """Console-script entry point."""
    app()


__all__ = ["app", "console", "err_console", "main"]
