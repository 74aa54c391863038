"""The quality table: one row per variant (base, each quantization, each KV/GQA/SWA/Medusa variant),
from evaluation records (`ridgeline eval --json`), for rich, CSV, JSON and the HTML summary."""

from __future__ import annotations

from typing import Any, Sequence

from rich.table import Table

#: (row key, header, format) of the columns every variant may have, before the multiple-choice tasks
_FIXED = (("ppl", "token ppl", ".3f"), ("word_ppl", "word ppl", ".2f"), ("bits_per_byte", "bits/byte", ".4f"),
          ("cloze_acc", "cloze acc", ".1%"), ("cloze_word_ppl", "cloze word ppl", ".1f"))


def quality_rows(records: Sequence[dict]) -> list[dict[str, Any]]:
    """One flat row per record: variant, model, dtype, perplexities, cloze, each task's lm-eval metric."""
    rows = []
    for r in records:
        row: dict[str, Any] = {"variant": r["variant"], "model": r["model"]["name"], "dtype": r["model"]["dtype"],
                               "weights": r["model"].get("weights", r["model"]["dtype"]), "params": r["model"]["params"]}
        for name, t in r["tasks"].items():
            if name == "ppl":
                settings = t.get("settings", {})
                row.update(ppl=t["token_perplexity"], word_ppl=t["word_perplexity"], bits_per_byte=t["bits_per_byte"],
                           ppl_tokens=t["tokens"], ppl_context=settings.get("context"), ppl_stride=settings.get("stride"))
            elif name == "cloze":
                row.update(cloze_acc=t["accuracy"], cloze_word_ppl=t["word_perplexity"], cloze_n=t["n"])
            else:
                row[name] = t["value"]
                row[f"{name}_metric"] = t["metric"]
                row[f"{name}_acc"] = t["acc"]
                row[f"{name}_acc_norm"] = t["acc_norm"]
                row[f"{name}_n"] = t["n"]
        rows.append(row)
    return rows


def _mc_tasks(rows: Sequence[dict]) -> list[str]:
    return list(dict.fromkeys(k.removesuffix("_metric") for r in rows for k in r if k.endswith("_metric")))


def quality_columns(rows: Sequence[dict]) -> list[tuple[str, str, str]]:
    """(key, header, format) of the columns present in `rows`."""
    cols = [c for c in _FIXED if any(c[0] in r for r in rows)]
    for t in _mc_tasks(rows):
        metric = next(r[f"{t}_metric"] for r in rows if f"{t}_metric" in r)
        cols.append((t, f"{t} {metric}", ".1%"))
    return cols


def quality_table(rows: Sequence[dict], title: str = "quality") -> Table:
    """The rich table: one row per variant, every metric it was evaluated on."""
    t = Table(title=title, title_justify="left")
    t.add_column("variant", justify="left", no_wrap=True)
    t.add_column("weights", justify="left")
    cols = quality_columns(rows)
    for _, header, _ in cols:
        t.add_column(header, justify="right")
    for r in rows:
        t.add_row(r["variant"], r.get("weights", "-"),
                  *(format(r[k], f) if r.get(k) is not None else "-" for k, _, f in cols))
    ppl = next((r for r in rows if "ppl" in r), None)
    if ppl:
        t.caption = (f"perplexity over {ppl['ppl_tokens']} tokens, context {ppl['ppl_context']}, stride "
                     f"{ppl['ppl_stride']}; word ppl and bits/byte compare across tokenizers")
        t.caption_justify = "left"
    return t
