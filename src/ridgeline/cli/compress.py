"""`ridgeline compress`: compress a prompt (or evaluate methods on held-out text); `compress train`: the scorers."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperGroup

from ridgeline.cli.common import app, command, console, csv_list, dumps, err_console, say, write_record, writing
from ridgeline.cli.progress import progress
from ridgeline.errors import RidgelineError


class _RunByDefault(TyperGroup):
    """`ridgeline compress MODEL ...` means `ridgeline compress run MODEL ...`; `train` is the other subcommand."""

    def parse_args(self, ctx, args):  # noqa: ANN001, ANN201 -- click's signature
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


compress_app = typer.Typer(cls=_RunByDefault, no_args_is_help=True, add_completion=False,
                           help="Prompt compression: keep fewer prompt tokens (TTFT, KV), measured for quality.")
app.add_typer(compress_app, name="compress")

METHOD = typer.Option("lingua", "--method", help="truncate, random, selective (self-information), lingua (LLMLingua-style), learned or scrl (need --scorer)")
SCORER = typer.Option(None, "--scorer", help="folder of a scorer saved by `ridgeline compress train` (learned, scrl)")


def _method(method: str, scorer: Optional[Path], unit: Optional[str], protect: Optional[str]):
    from ridgeline.compress import method_config

    overrides = {}
    if unit is not None:
        overrides["unit"] = unit
    if protect is not None:
        overrides["protect"] = tuple(p for p in csv_list(protect, "--protect") if p != "none")
    if method in ("learned", "scrl"):
        if scorer is None:
            raise RidgelineError(f"--method {method} needs --scorer DIR (train one with `ridgeline compress train`)")
        overrides["scorer"] = scorer
    elif scorer is not None:
        raise RidgelineError(f"--scorer goes with --method learned or scrl, not {method}")
    if method == "truncate" and overrides:
        raise RidgelineError("truncate keeps the last tokens: --unit and --protect do not apply")
    return method_config(method, **overrides)


@compress_app.command("run")
@command
def run(
    model: str = typer.Argument(..., help="target model: smollm2-135m (bundled), a .gguf, a model folder or hub id"),
    method: str = METHOD,
    rate: Optional[float] = typer.Option(None, "--rate", help="compression rate > 1 in the target's tokens (2: keep half)"),
    budget: Optional[int] = typer.Option(None, "--budget", help="tokens to keep instead of a rate"),
    text: Optional[Path] = typer.Option(None, "--text", help="UTF-8 text file to compress"),
    corpus_eval: bool = typer.Option(False, "--corpus-eval", help="evaluate the method on held-out corpus windows instead (ΔNLL of the true continuation, cloze)"),
    scorer: Optional[Path] = SCORER,
    unit: Optional[str] = typer.Option(None, "--unit", help="token, word, phrase or line (default: the method's)"),
    protect: Optional[str] = typer.Option(None, "--protect", help="always-kept classes: newline, punct, speaker, re:PATTERN, or none (default: the method's)"),
    question: int = typer.Option(0, "--question-tokens", help="the prompt's last N tokens are its question, kept whole by the budget controller"),
    lengths: str = typer.Option("512", "--lengths", help="--corpus-eval: context lengths in tokens, comma-separated"),
    samples: int = typer.Option(8, "--samples", help="--corpus-eval: held-out windows"),
    share: float = typer.Option(0.5, "--question-share", help="--corpus-eval: share of the budget kept verbatim at the context's end"),
    as_json: bool = typer.Option(False, "--json", help="print the record as JSON"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="also write the JSON record here"),
) -> None:
    """Compress a text file with one method (what was kept, the rate, the time), or evaluate it on held-out text."""
    from ridgeline.compress import Parts, compress
    from ridgeline.loader import load_model

    cfg = _method(method, scorer, unit, protect)
    if (text is None) == (not corpus_eval):
        raise RidgelineError("give --text FILE to compress, or --corpus-eval to evaluate on held-out text")
    if corpus_eval:
        return _corpus_eval(model, cfg, rate, budget, lengths, samples, share, as_json, out)
    prompt = _read_text(text)
    lm, tok = load_model(model, "fp32")
    result = compress(prompt, cfg, rate=rate, budget=budget, model=lm, tokenizer=tok,
                      parts=Parts(question=question) if question else None)
    record = {"kind": "ridgeline.compress", "model": model, "text": str(text), **result.to_json()}
    write_record(out, record)
    if as_json:
        print(dumps(record))
        return
    console.print(_marked(prompt, result.spans), soft_wrap=True)
    console.print(_numbers(result))


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise RidgelineError(f"cannot read --text {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise RidgelineError(f"--text {path} is not UTF-8 text") from None


def _marked(text: str, spans) -> object:  # noqa: ANN001
    """The original text with what was dropped struck through and dimmed."""
    from rich.text import Text

    out, pos = Text(), 0
    for s, e in spans:
        out.append(text[pos:s], style="dim strike")
        out.append(text[s:e])
        pos = e
    out.append(text[pos:], style="dim strike")
    return out


def _numbers(result) -> object:  # noqa: ANN001
    from rich.table import Table

    t = Table(title=f"compressed with {result.method}", show_header=False)
    for k, v in (("original tokens", result.original_tokens), ("kept tokens", result.kept_tokens),
                 ("rate requested / achieved", f"{result.requested_rate:.3g} / {result.rate:.3g}"),
                 ("protected tokens", result.settings.get("protected_tokens", 0)),
                 ("compressor time", f"{result.compressor_s * 1e3:.1f} ms")):
        t.add_row(k, str(v))
    return t


def _corpus_eval(model: str, cfg, rate, budget, lengths: str, samples: int, share: float, as_json: bool,  # noqa: ANN001
                 out: Optional[Path]) -> None:
    from ridgeline.cli.common import int_list
    from ridgeline.compress import CorpusEvalConfig, corpus_eval
    from ridgeline.loader import load_model

    if budget is not None or rate is None:
        raise RidgelineError("--corpus-eval takes --rate (contexts differ in length), not --budget")
    config = CorpusEvalConfig(lengths=tuple(int_list(lengths, "--lengths")), rates=(rate,), samples=samples,
                              question_share=share)
    lm, tok = load_model(model, "fp32")
    with progress("corpus eval") as report:
        record = corpus_eval(lm, tok, {cfg.name: cfg}, config, report)
    record["model"] = model
    write_record(out, record)
    if as_json:
        print(dumps(record))
        return
    console.print(_summary_table(record["summary"]))


def _summary_table(rows: list[dict]) -> object:
    from rich.table import Table

    t = Table(title="held-out continuation (64 tokens) given the compressed context")
    for col in ("context", "rate", "method", "ΔNLL nats/tok", "± SE", "cloze", "gap recovered", "rate achieved",
                "compressor"):
        t.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        gap = "" if r["gap_recovered"] is None else f"{r['gap_recovered']:.0%}"
        t.add_row(str(r["length"]), f"{r['rate']:g}" if r["rate"] else "-", r["method"], f"{r['delta_nll']:+.4f}",
                  f"{r['delta_nll_se']:.4f}", f"{r['cloze_accuracy']:.2f}", gap,
                  f"{r['rate_achieved_mean']:.3f}", f"{r['compressor_s_median'] * 1e3:.0f} ms")
    return t


@compress_app.command("train")
@command
def train(
    model: str = typer.Argument("smollm2-135m", help="target model whose first layers the scorer copies"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for the trained scorer (checkpoints land here too)"),
    stage: str = typer.Option("learned", "--stage", help="learned (lingua labels + supervised), scrl (policy gradient from --init) or both (scrl goes to OUT-scrl)"),
    init: Optional[Path] = typer.Option(None, "--init", help="--stage scrl: the learned scorer to start from"),
    resume: bool = typer.Option(False, "--resume", help="continue the run checkpointed in --out"),
    steps: Optional[int] = typer.Option(None, "--steps", help="optimizer steps (default: 300 learned, 100 scrl)"),
    windows: int = typer.Option(160, "--windows", help="learned: calibration windows labelled by lingua"),
    context: int = typer.Option(256, "--context", help="learned: tokens per window"),
    layers: int = typer.Option(4, "--layers", help="learned: the target's first K layers the scorer runs"),
    rate: float = typer.Option(2.0, "--rate", help="scrl: the rate the policy is trained for"),
    samples: int = typer.Option(4, "--samples", help="scrl: sampled keep-masks per window"),
    as_json: bool = typer.Option(False, "--json", help="print the training record as JSON"),
) -> None:
    """Train the learned keep/drop scorer on lingua's labels (calibration split) and/or fine-tune it with SCRL."""
    from ridgeline.compress import SCRLConfig, ScorerTrainConfig, train_scorer, train_scrl
    from ridgeline.loader import load_model

    if stage not in ("learned", "scrl", "both"):
        raise RidgelineError(f"--stage must be learned, scrl or both, got {stage!r}")
    if stage == "scrl" and init is None:
        raise RidgelineError("--stage scrl needs --init DIR (a scorer from --stage learned)")
    lm, tok = load_model(model, "fp32")
    results = []
    with progress("compress train") as report, writing(out):
        if stage in ("learned", "both"):
            cfg = ScorerTrainConfig(windows=windows, context=context, layers=layers, steps=steps or 300)
            results.append(train_scorer(lm, tok, out, cfg, resume, report))
            init = out
            stage = "learned" if results[-1].interrupted else stage  # no SCRL on a half-trained scorer
        if stage in ("scrl", "both"):
            target = out if stage == "scrl" else out.with_name(out.name + "-scrl")
            cfg = SCRLConfig(steps=steps or 100, rate=rate, samples=samples)
            results.append(train_scrl(lm, tok, init, target, cfg, resume and stage == "scrl", report))
    record = [{"stage": r.stage, "folder": str(r.folder), "steps_done": r.steps_done, "steps": r.steps,
               "interrupted": r.interrupted, "seconds": r.seconds, "curve": r.curve} for r in results]
    if as_json:
        print(dumps(record))
        return
    for r in results:
        last = r.curve[-1] if r.curve else {}
        shown = ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k != "step" and isinstance(v, float))
        say(f"{r.stage}: {r.steps_done}/{r.steps} steps in {r.seconds:.0f} s{' (interrupted)' if r.interrupted else ''}"
            f"; saved {r.folder}" + (f"; last step: {shown}" if shown else ""))
    if any(r.interrupted for r in results):
        err_console.print("interrupted: the checkpoint holds the last completed step; rerun with --resume")
