"""Throughput and gradient memory of the kernel-sum primitive, next to baselines.

    python benchmarks/smoother_throughput.py                 # the default table
    python benchmarks/smoother_throughput.py --sizes 4096 20480 --dims 16
    python benchmarks/smoother_throughput.py --grad-n 65536  # backward-pass memory only

Every row of one run is measured on the same machine in the same process:

- ``library``: :func:`miscal_jax.nw_field` (value, se and n_eff: the moments
  ``sum w``, ``sum w r``, ``sum w r^2``, ``sum w^2``), jitted.
- ``v0.1``: the smoother as it was before the primitive (one query at a time,
  vmapped, ``lax.map`` over chunks of 256; kept here as the baseline).
- ``numpy``: NumPy chunked (``Q @ Z.T``, ``np.exp``, moments by matmul), float32.
- ``ceiling``: jitted ``exp`` plus a row sum over the same number of elements,
  the most any kernel sum can do on this machine.
- ``distance matmul``: only the blocked ``Q Z^T`` at ``precision=HIGHEST`` (and
  a row sum), the part of a kernel sum that is not an exponential. ``bound``
  is the time of the ceiling plus this matmul: no kernel sum whose distances
  come from the matmul and whose weights from ``exp`` can be faster, so its
  share is the most such an implementation can reach.
- ``pykeops``: KeOps' Gaussian kernel sum of the same four moments, if it
  installs and compiles (``pip install pykeops``; it builds C++ at first use).
- ``dot_product_attention``: ``jax.nn.dot_product_attention`` (on a GPU, the
  fused attention the Gaussian smoother is equivalent to).

Pairs/s is ``q * n / wall``; wall is the best of ``--reps`` runs after one
compile-and-warm-up run. The gradient section reports the peak resident memory
of ``jax.grad`` of a leave-one-out loss, in a fresh subprocess.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from miscal_jax.smoothing.nadaraya_watson import nw_field


def best_time(fn, reps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    runs = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        runs.append(time.perf_counter() - start)
    return first, min(runs)


@jax.jit
def ceiling(points):
    """exp + row sum over [q, n] elements (an outer product) in 1024 x 4096 blocks."""
    a = points[:, 0] * 1e-3
    refs = a.reshape(-1, 4096)

    def rows(q):
        step = lambda acc, r: (acc + jnp.sum(jnp.exp(q[:, None] * r[None, :]), axis=1), None)
        return jax.lax.scan(step, jnp.zeros_like(q), refs)[0]

    return jax.lax.map(rows, a.reshape(-1, 1024))


BLOCKS = (512, 2048)  # the library's default query and reference blocks


@jax.jit
def distance_matmul(points):
    """Blocked ``Q Z^T`` at HIGHEST precision (the library's blocks), summed over each row."""
    bq, bn = BLOCKS
    refs = points.reshape(-1, bn, points.shape[1])
    dot = lambda q, z: jnp.matmul(q, z.T, precision=jax.lax.Precision.HIGHEST)

    def rows(q):
        step = lambda acc, z: (acc + jnp.sum(dot(q, z), axis=1), None)
        return jax.lax.scan(step, jnp.zeros(q.shape[0]), refs)[0]

    return jax.lax.map(rows, points.reshape(-1, bq, points.shape[1]))


@jax.jit
def v01_nw_field(query, ref, residual, log_bw):
    """The pre-primitive smoother: one query at a time, vmapped, lax.map over chunks."""
    ref_sq = jnp.sum(ref * ref, axis=1)
    inv_h2 = jnp.exp(-2.0 * log_bw)

    def one(q):
        log_w = -0.5 * jnp.maximum(jnp.sum(q * q) + ref_sq - 2.0 * (ref @ q), 0.0) * inv_h2
        w = jnp.exp(log_w - jnp.max(log_w))
        sw = jnp.sum(w)
        value = jnp.sum(w * residual) / sw
        return value, jnp.sum(w * (residual - value) ** 2) / sw, jnp.sum(w * w)

    return jax.lax.map(one, query, batch_size=256)


@jax.jit
def attention(points):
    """``jax.nn.dot_product_attention`` of the points with themselves (one head)."""
    x = points[None, :, None, :]
    return jax.nn.dot_product_attention(x, x, x)


def numpy_chunked(query, ref, residual, h, chunk=1024):
    cols = np.stack([np.ones_like(residual), residual, residual**2], 1)
    ref_sq = (ref * ref).sum(1)
    out = np.empty((query.shape[0], 3), np.float32)
    for s in range(0, query.shape[0], chunk):
        q = query[s : s + chunk]
        log_w = (q @ ref.T - 0.5 * ref_sq[None] - 0.5 * (q * q).sum(1)[:, None]) / h**2
        w = np.exp(log_w - log_w.max(1, keepdims=True))
        out[s : s + chunk] = w @ cols
    return out


def pykeops_sum():
    """KeOps' version of the library's moments: ``sum w [1, r, r^2]`` and ``sum w^2``."""
    try:
        from pykeops.numpy import LazyTensor  # noqa: F401

        def run(query, ref, residual, h):
            x = LazyTensor(query[:, None, :] / h)
            y = LazyTensor(ref[None, :, :] / h)
            cols = np.stack([np.ones_like(residual), residual, residual**2], axis=1)
            w = (-0.5 * ((x - y) ** 2).sum(-1)).exp()
            return (w * LazyTensor(cols[None, :, :])).concat(w * w).sum(1)

        return run
    except Exception as err:  # not installed, or no compiler
        print(f"pykeops: not available ({type(err).__name__}: {err})", flush=True)
        return None


def throughput(sizes, dims, reps, with_numpy_up_to):
    rng = np.random.default_rng(0)
    print("| q = n | d | method | first run (s) | wall (s) | pairs/s | share of ceiling |")
    print("|---|---|---|---|---|---|---|")
    keops = pykeops_sum()
    for d in dims:
        for n in sizes:
            points = (rng.normal(size=(n, d)) / np.sqrt(d)).astype(np.float32)
            residual = (rng.random(n) - 0.5).astype(np.float32)
            z, r = jnp.asarray(points), jnp.asarray(residual)
            lb = jnp.float32(np.log(0.5))
            rows = {}
            rows["ceiling"] = best_time(lambda z=z: ceiling(z), reps)
            rows["library"] = best_time(lambda z=z, r=r, lb=lb: nw_field(z, z, r, lb), reps)
            rows["distance matmul"] = best_time(lambda z=z: distance_matmul(z), reps)
            rows["bound"] = (0.0, rows["ceiling"][1] + rows["distance matmul"][1])
            if n <= with_numpy_up_to:  # the slower baselines only up to this size
                rows["v0.1"] = best_time(lambda z=z, r=r, lb=lb: v01_nw_field(z, z, r, lb), reps)
                rows["dot_product_attention"] = best_time(lambda z=z: attention(z), reps)
                rows["numpy"] = best_time(
                    lambda p=points, s=residual: numpy_chunked(p, p, s, 0.5), reps
                )
                if keops is not None:
                    rows["pykeops"] = best_time(
                        lambda p=points, s=residual: keops(p, p, s, 0.5), reps
                    )
            top = rows["ceiling"][1]
            for name, (first, wall) in rows.items():
                first = f"{first:.2f}" if first else "-"
                print(
                    f"| {n} | {d} | {name} | {first} | {wall:.3f} | {n * n / wall:.2e} | "
                    f"{top / wall:.2f} |",
                    flush=True,
                )


GRAD_SCRIPT = """
import json, sys, time
import jax, jax.numpy as jnp, numpy as np
from miscal_jax.smoothing.nadaraya_watson import loo_field, nw_field
n, d, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rng = np.random.default_rng(0)
z = jnp.asarray(rng.normal(size=(n, d)).astype(np.float32) / np.sqrt(d))
r = jnp.asarray((rng.random(n) - 0.5).astype(np.float32))
loss = lambda lb, z: jnp.mean((r - loo_field(z, r, lb).value) ** 2)
fn = jax.jit(jax.grad(loss, argnums=(0, 1))) if mode == "grad" else jax.jit(loss)
lowered = fn.lower(jnp.float32(-0.5), z).compile()
temp = lowered.memory_analysis().temp_size_in_bytes
start = time.perf_counter()
jax.block_until_ready(lowered(jnp.float32(-0.5), z))
wall = time.perf_counter() - start
# VmHWM: this process's own peak (ru_maxrss would include the forking parent's)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps({"temp": temp, "peak": int(hwm) * 1024, "wall": wall}))
"""


def gradient_memory(n, d):
    print(f"\nleave-one-out loss at q = n = {n}, d = {d} (fresh process each):")
    print("| pass | XLA temporaries (MB) | peak RSS (MB) | wall (s) |")
    print("|---|---|---|---|")
    for mode in ("forward", "grad"):
        out = subprocess.run(
            [sys.executable, "-c", GRAD_SCRIPT, str(n), str(d), mode],
            capture_output=True,
            text=True,
            check=True,
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"| {mode} | {row['temp'] / 2**20:.1f} | {row['peak'] / 2**20:.0f} | "
            f"{row['wall']:.1f} |",
            flush=True,
        )
    print(f"(a dense [q, n] float32 matrix would be {n * n * 4 / 2**20:,.0f} MB)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 20480, 102400])
    parser.add_argument("--dims", type=int, nargs="+", default=[16, 384])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument(
        "--numpy-up-to", type=int, default=20480, help="run the slower baselines up to this size"
    )
    parser.add_argument("--grad-n", type=int, default=65536)
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args()
    if any(n % BLOCKS[1] for n in args.sizes):
        parser.error(f"--sizes: multiples of {BLOCKS[1]} (the reference block), please.")
    device = jax.devices()[0]
    print(f"device: {device.platform} / {device.device_kind}, jax {jax.__version__}")
    if not args.skip_throughput:
        throughput(args.sizes, args.dims, args.reps, args.numpy_up_to)
    if args.grad_n:
        gradient_memory(args.grad_n, 16)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak:.0f} MB")


if __name__ == "__main__":
    main()
