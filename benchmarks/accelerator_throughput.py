"""Kernel-sum throughput, forward and backward, on whatever device JAX finds.

    python benchmarks/accelerator_throughput.py                  # sizes for the device found
    python benchmarks/accelerator_throughput.py --sizes 16384 --dims 16 --backward-baseline

Rows, each at ``q = n`` and one bandwidth, measured in this process:

- ``xla fwd`` / ``xla bwd``: :func:`miscal_jax.kernel_moments` (``impl="xla"``),
  the moments of a leave-one-out Nadaraya-Watson loss, and ``jax.grad`` of that
  loss with respect to the points, the values and the bandwidth (the forward
  and then the hand-written one-recompute backward; "backward alone" is the
  difference);
- ``pallas fwd`` / ``pallas bwd``: the same with ``impl="pallas"`` (Triton on a
  GPU, Mosaic on a TPU; skipped on CPU, where it would run in the interpreter);
- ``autodiff bwd`` (``--backward-baseline``): the backward the library had
  before, reverse-mode autodiff through the block scan with each block
  checkpointed, which recomputes the forward two to three times;
- ``attention``: ``jax.nn.dot_product_attention`` of the points with
  themselves, one head (cuDNN's fused attention on a GPU where available),
  the nearest off-the-shelf fused kernel;
- ``exp ceiling``: a jitted ``exp`` plus row sum over ``q * n`` elements, the
  most any kernel sum can reach on this device.

``share`` is a row's pairs/s over the device's exp-unit limit: on NVIDIA cards
the SFU rate (16 ``ex2`` per SM per clock on A100 and H100: 108 x 16 x 1.41 GHz
= 2.4e12/s on an A100, 132 x 16 x 1.98 GHz = 4.2e12/s on an H100 SXM), on CPU
and others the measured ``exp ceiling``. Forward and backward both need one
exponential per pair, so the limit is the same for both.

Wall time is the best of ``--reps`` runs after one compile-and-warm-up run
(whose time, compile included, is printed as ``first``). On an H100 the
default sizes (``2^14, 2^17, 2^20`` x ``d = 16, 64, 384``) finish in a few
minutes; on CPU the default sizes are ``2^12`` and ``2^14``.
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from miscal_jax.kernels import kernel_moments
from miscal_jax.kernels.blockwise import block_log_weights, finish, fold, start
from miscal_jax.kernels.moments import block_sizes

#: Exponentials per second of each card's special-function units (see the docstring).
EXP_LIMITS = {"A100": 108 * 16 * 1.41e9, "H100": 132 * 16 * 1.98e9, "H200": 132 * 16 * 1.98e9}


def best_time(fn, reps):
    start_t = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start_t
    runs = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        runs.append(time.perf_counter() - t)
    return first, min(runs)


def loo_loss(points, residual, log_bw, impl):
    n = points.shape[0]
    m = kernel_moments(points, points, residual[:, None], log_bw, query_index=jnp.arange(n),
                       impl=impl)  # fmt: skip
    return jnp.mean((residual - m.sum_wv[:, 0] / jnp.maximum(m.sum_w, 1e-6)) ** 2)


def autodiff_loss(points, residual, log_bw):
    """The previous backward: autodiff through the checkpointed block scan."""
    n, d = points.shape
    bq, bn = block_sizes(512, 2048, n, n, 1)
    values = jnp.concatenate([jnp.ones((n, 1)), residual[:, None]], axis=1)
    codes = jnp.arange(n, dtype=jnp.int32)
    inv_h2 = jnp.exp(-2.0 * log_bw)[None]
    refs = (points.reshape(-1, bn, d), codes.reshape(-1, bn), values.reshape(-1, bn, 2))

    @jax.checkpoint
    def query_block(args):
        q, qc = args

        @jax.checkpoint
        def step(acc, block):
            z, zc, v = block
            log_w, _ = block_log_weights(q, qc, z, zc, inv_h2, kernel="gaussian", loo=True)
            return fold(acc, log_w, v), None

        return finish(jax.lax.scan(step, start((1, bq), 2), refs)[0])

    out = jax.lax.map(query_block, (points.reshape(-1, bq, d), codes.reshape(-1, bq)))
    ratio = (out.sum_wv[:, 0, :, 0] / jnp.maximum(out.sum_w[:, 0], 1e-6)).reshape(n)
    return jnp.mean((residual - ratio) ** 2)


@jax.jit
def exp_ceiling(points):
    a = points[:, 0] * 1e-3
    refs = a.reshape(-1, min(4096, a.shape[0]))

    def rows(q):
        step = lambda acc, r: (acc + jnp.sum(jnp.exp(q[:, None] * r[None, :]), axis=1), None)
        return jax.lax.scan(step, jnp.zeros_like(q), refs)[0]

    return jax.lax.map(rows, a.reshape(-1, min(1024, a.shape[0])))


@jax.jit
def attention(points):
    dtype = jnp.bfloat16 if jax.default_backend() == "gpu" else jnp.float32  # cuDNN wants 16 bits
    x = points[None, :, None, :].astype(dtype)
    return jax.nn.dot_product_attention(x, x, x)


def main():
    on_cpu = jax.default_backend() == "cpu"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_sizes = [1 << 12, 1 << 14] if on_cpu else [1 << 14, 1 << 17, 1 << 20]
    parser.add_argument("--sizes", type=int, nargs="+", default=default_sizes)
    parser.add_argument("--dims", type=int, nargs="+", default=[16, 64, 384])
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--backward-baseline", action="store_true")
    args = parser.parse_args()
    device = jax.devices()[0]
    name = getattr(device, "device_kind", str(device))
    limit = next((v for k, v in EXP_LIMITS.items() if k in name), None)
    print(f"device: {name} ({jax.default_backend()}), jax {jax.__version__}")
    header = ("q = n", "d", "row", "first s", "wall s", "pairs/s", "share")
    print("{:>8} {:>4} {:<14} {:>8} {:>8} {:>9} {:>6}".format(*header))
    impls = ["xla"] if on_cpu else ["xla", "pallas"]
    for n in args.sizes:
        for d in args.dims:
            rng = np.random.default_rng(0)
            points = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
            residual = jnp.asarray(rng.normal(size=n) * 0.3, jnp.float32)
            lb = jnp.float32(np.log(0.5 * np.sqrt(d)))
            rows = {"exp ceiling": best_time(lambda p=points: exp_ceiling(p), args.reps)}
            inputs = (points, residual, lb)
            for impl in impls:
                fwd = jax.jit(lambda p, r, b, i=impl: loo_loss(p, r, b, i))
                bwd = jax.jit(jax.grad(lambda p, r, b, i=impl: loo_loss(p, r, b, i), (0, 1, 2)))
                rows[f"{impl} fwd"] = best_time(lambda f=fwd, a=inputs: f(*a), args.reps)
                rows[f"{impl} bwd"] = best_time(lambda f=bwd, a=inputs: f(*a), args.reps)
            if args.backward_baseline:
                old = jax.jit(jax.grad(autodiff_loss, (0, 1, 2)))
                rows["autodiff bwd"] = best_time(lambda f=old, a=inputs: f(*a), args.reps)
            if d <= 384:
                rows["attention"] = best_time(lambda p=points: attention(p), args.reps)
            top = limit or n * n / rows["exp ceiling"][1]
            for row, (first, wall) in rows.items():
                rate = n * n / wall
                print(f"{n:>8} {d:>4} {row:<14} {first:>8.2f} {wall:>8.3f} {rate:>9.2e} "
                      f"{rate / top:>6.2f}")  # fmt: skip
            for impl in impls:  # the bwd rows time jax.grad: the forward, then the backward
                fwd, back = rows[f"{impl} fwd"][1], rows[f"{impl} bwd"][1] - rows[f"{impl} fwd"][1]
                line = f"{impl}: backward alone {back:.3f} s, {back / fwd:.2f}x forward"
                if "autodiff bwd" in rows:
                    old = rows["autodiff bwd"][1] - fwd
                    line += f" (autodiff: {old:.3f} s = {old / fwd:.2f}x)"
                print(f"{'':>14}{line}")
    blocks = block_sizes(512, 2048, 1 << 20, 1 << 20, 1)
    print(f"XLA blocks (bq, bn) at n = 2^20, one bandwidth: {blocks}")


if __name__ == "__main__":
    main()
