"""Scale: wall time and peak memory of the cross-fit and of the whole report against n.

Planted data (``make_planted``, 8 signal + 24 nuisance columns: d = 32). Each
size runs in a fresh process (peak RSS is the process's own), first the
cross-fit alone, then ``miscal-jax report`` on the same data with an empty
compilation cache (a new user's first run: every program compiles). Above
``SELECT_ON`` items the model is chosen on a subsample and carried to every
item (:mod:`miscal_jax.model.carry`); where the exact path also fits in
time (``--exact-up-to``) it runs beside it, and the two fields are compared
(correlation, largest difference) with the planted truth's correlation and
the held-out Brier of each. The log-log slope of the report's time is
printed at the end.

    python benchmarks/scale.py                      # 10^3, 10^4, 10^5
    python benchmarks/scale.py --sizes 1000000      # 10^6 (long)
    python benchmarks/scale.py --sizes 100000 --no-report --signal-at 60   # SIGTERM mid-run
"""

import argparse
import json
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time

CHILD = r"""
import json, resource, sys, time
import jax, numpy as np
from miscal_jax.model import crossfit
from miscal_jax.synthetic.planted import make_planted
n, select_on, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
d = make_planted(n, seed=0, amplitude=0.25, nuisance_dim=24)
np.savez(path, embeddings=d.embeddings, confidence=d.conf, correct=d.correct, group=d.region)
start = time.perf_counter()
r = crossfit(d.embeddings, d.conf, d.correct, progress=False,
             select_on={"none": None, "auto": "auto"}[select_on])
seconds = time.perf_counter() - start
brier = lambda m: float(np.mean((r.predictions[m] - d.correct) ** 2))
np.save(path + ".field.npy", r.field)
print(json.dumps({
    "fit_s": seconds, "scale": r.scale, "chosen": [fold["chosen"] for fold in r.info],
    "truth_corr": float(np.corrcoef(r.field, d.field)[0, 1]),
    "brier_local": brier("local"), "brier_isotonic": brier("isotonic"),
    "fit_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""


def _child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _report(data: str, out: str) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    cold = {**os.environ, "MISCAL_JAX_CACHE_DIR": out + ".xla"}  # a first run: every compile
    subprocess.run(
        [sys.executable, "-m", "miscal_jax", "report", "--data", data, "--out", out, "--quiet"],
        check=True,
        capture_output=True,
        env=cold,
    )
    rss = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 1024
    return time.perf_counter() - start, rss


def _interrupted(data: str, out: str, after: float) -> dict:
    """SIGTERM to ``miscal-jax report`` ``after`` seconds in: time to exit, code, leftovers."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "miscal_jax", "report", "--data", data, "--out", out, "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(after)
    sent = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    parent = os.path.dirname(out) or "."
    left = [f for f in os.listdir(parent) if f.startswith(os.path.basename(out))]
    return {
        "signal_after_s": after,
        "exit_s": round(time.perf_counter() - sent, 2),
        "exit_code": proc.returncode,
        "left_behind": left,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--exact-up-to", type=int, default=20000)
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument(
        "--signal-at",
        type=float,
        default=None,
        help="also send SIGTERM to a report on the largest size this many seconds in",
    )
    args = parser.parse_args()
    import jax

    print(f"# JAX {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} cores")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            data = os.path.join(tmp, f"planted_{n}.npz")
            fit = _child([str(n), "auto", data])
            row = {"n": n, **fit}
            if fit["scale"]["path"] == "subsample" and n <= args.exact_up_to:
                import numpy as np

                approx = np.load(data + ".field.npy")
                exact = _child([str(n), "none", data])
                field = np.load(data + ".field.npy")
                row["exact"] = {
                    "fit_s": exact["fit_s"],
                    "truth_corr": exact["truth_corr"],
                    "brier_local": exact["brier_local"],
                    "field_corr": float(np.corrcoef(approx, field)[0, 1]),
                    "field_max_diff": float(np.max(np.abs(approx - field))),
                }
            if not args.no_report:
                row["report_s"], row["report_rss_mb"] = _report(data, os.path.join(tmp, f"r{n}"))
            rows.append(row)
            print(json.dumps(row), flush=True)
        if args.signal_at is not None:
            stop = _interrupted(data, os.path.join(tmp, "stopped"), args.signal_at)
            print(
                f"SIGTERM {stop['signal_after_s']:.0f} s into the report on n = {rows[-1]['n']:,}: "
                f"exited in {stop['exit_s']} s with code {stop['exit_code']}, left behind "
                f"{stop['left_behind'] or 'nothing'}",
                flush=True,
            )
    print(
        "\n| n | path | fit (s) | fit RSS (MB) | report (s) | report RSS (MB) | truth corr | "
        "Brier local / isotonic |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['n']:,} | {r['scale']['path']} | {r['fit_s']:.1f} | {r['fit_rss_mb']:.0f} | "
            f"{r.get('report_s', float('nan')):.1f} | {r.get('report_rss_mb', float('nan')):.0f} | "
            f"{r['truth_corr']:.3f} | {r['brier_local']:.4f} / {r['brier_isotonic']:.4f} |"
        )
    for r in rows:
        if "exact" in r:
            e = r["exact"]
            print(
                f"n = {r['n']:,}: exact path fit {e['fit_s']:.1f} s, truth corr "
                f"{e['truth_corr']:.3f}, Brier {e['brier_local']:.4f}; carried vs exact field: "
                f"corr {e['field_corr']:.4f}, largest difference {e['field_max_diff']:.4f}"
            )
    timed = [r for r in rows if "report_s" in r]
    if len(timed) >= 2:
        a, b = timed[0], timed[-1]
        slope = math.log(b["report_s"] / a["report_s"]) / math.log(b["n"] / a["n"])
        print(f"log-log slope of the report's time, n = {a['n']:,} to {b['n']:,}: {slope:.2f}")


if __name__ == "__main__":
    main()
