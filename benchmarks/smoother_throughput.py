"""Throughput of the chunked Nadaraya-Watson smoother against a dense baseline.

    python benchmarks/smoother_throughput.py

For each size, both are jit-compiled and timed on the same data in the same
run: ``chunked`` is :func:`miscal_jax.nw_field` (``lax.map`` over query
chunks, memory ``O(chunk * n)``), ``dense`` builds the whole ``[q, n]`` kernel
matrix (memory ``O(q * n)``). Prints compile time, steady-state wall time
(median of 5), queries per second and the size of the largest kernel block.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

from miscal_jax.smoother import nw_field


@jax.jit
def dense(query, ref, residual, log_bw):
    d2 = jnp.sum((query[:, None, :] - ref[None]) ** 2, -1) * jnp.exp(-2 * log_bw)
    log_w = -0.5 * d2
    w = jnp.exp(log_w - jnp.max(log_w, axis=1, keepdims=True))
    return (w @ residual) / jnp.sum(w, axis=1)


def timed(fn, *args):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - start
    runs = []
    for _ in range(5):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        runs.append(time.perf_counter() - start)
    return compile_s, float(np.median(runs))


def main():
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}")
    print("| n = q | d | method | compile (s) | wall (s) | queries/s | largest block (MB) |")
    print("|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    d = 16
    for n in (2000, 8000, 16000):
        ref = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
        res = jnp.asarray(rng.random(n) - 0.5, jnp.float32)
        lb = jnp.float32(0.0)
        chunked = lambda q, r, s, b: nw_field(q, r, s, b, chunk_size=256).value
        c, w = timed(chunked, ref, ref, res, lb)
        print(
            f"| {n} | {d} | chunked (256) | {c:.2f} | {w:.3f} | {n / w:,.0f} | "
            f"{256 * n * 4 / 1e6:.1f} |",
            flush=True,
        )
        if n * n * d * 4 > 6e9:  # the dense baseline's [q, n, d] intermediate
            print(f"| {n} | {d} | dense | - | - | - | {n * n * d * 4 / 1e6:,.0f} (skipped) |")
            continue
        c, w = timed(dense, ref, ref, res, lb)
        print(
            f"| {n} | {d} | dense | {c:.2f} | {w:.3f} | {n / w:,.0f} | "
            f"{n * n * d * 4 / 1e6:,.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
