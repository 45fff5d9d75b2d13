"""Command line: ``miscal-jax report`` (also ``python -m miscal_jax report``)."""

import argparse
import sys

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="miscal-jax",
        description="Find where a model's confidence is wrong for particular inputs, and fix it.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="run the pipeline and write a report")
    rep.add_argument(
        "--data", help="npz/csv/csv.gz/jsonl/parquet file (default: shipped MMLU-Pro demo set)"
    )
    rep.add_argument("--embeddings", help="row-aligned .npy of embeddings for a table")
    rep.add_argument("--out", default="miscal-report", help="output folder (default: %(default)s)")
    rep.add_argument("--seed", type=int, default=0)
    rep.add_argument(
        "--model", default=None, help="demo set only: model name or part of it (default gpt-4o)"
    )
    rep.add_argument(
        "--confidence-col",
        default=None,
        help="confidence column (default 'confidence'; demo set: 'verbal' or 'logit')",
    )
    rep.add_argument("--correct-col", default="correct")
    rep.add_argument("--folds", type=int, default=5)
    rep.add_argument("--permutations", type=int, default=200)
    rep.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def _fail(message: str) -> int:
    print(f"miscal-jax: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 for bad input, with one line on stderr)."""
    args = _parser().parse_args(argv)
    if args.folds < 2:
        return _fail(f"--folds: need at least 2, got {args.folds}.")
    if args.permutations < 1:
        return _fail(f"--permutations: need at least 1, got {args.permutations}.")
    from miscal_jax.io import DEFAULT_MODEL, load_data, load_default
    from miscal_jax.report import run_report

    try:
        if args.data is None:
            if args.embeddings:
                return _fail("--embeddings: only used together with --data.")
            data = load_default(args.model or DEFAULT_MODEL, args.confidence_col or "verbal")
        else:
            if args.model:
                return _fail("--model: only selects a model of the shipped demo set.")
            data = load_data(
                args.data,
                embeddings=args.embeddings,
                confidence_col=args.confidence_col or "confidence",
                correct_col=args.correct_col,
            )
        if data.embeddings.shape[0] < 2 * args.folds:
            return _fail(f"--folds: {args.folds} folds need at least {2 * args.folds} rows.")
        progress = not args.quiet and sys.stderr.isatty()
        if not args.quiet:
            print(
                f"miscal-jax: {data.embeddings.shape[0]} items, "
                f"{data.embeddings.shape[1]}-d embeddings; fitting {args.folds} folds...",
                file=sys.stderr,
            )
        summary = run_report(
            data,
            args.out,
            seed=args.seed,
            folds=args.folds,
            permutations=args.permutations,
            progress=progress or not args.quiet,
        )
    except ValueError as err:
        return _fail(str(err))
    except OSError as err:
        return _fail(f"--out: cannot write the report ({err}).")
    m = summary["methods"]
    print(
        f"heterogeneity p = {summary['heterogeneity']['p_value']:.4f}; "
        f"{len(summary['regimes'])} regimes; held-out Brier isotonic "
        f"{m['isotonic']['brier']:.4f} -> local {m['local']['brier']:.4f}; "
        f"report in {args.out}/report.md"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
