"""fit with the items split over devices: 8 host devices, and two processes, equal one device.

Both run in subprocesses: the device count is fixed when JAX starts, and the
two-process case is two real processes joined by ``jax.distributed`` with
gloo collectives on localhost.
"""

import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from miscal_jax.model import FitConfig, fit, out_of_fold
from miscal_jax.synthetic.planted import make_planted

N, SEED = 600, 4
CONFIG = FitConfig(folds=3, candidates=("raw", "pca", "linear"))
COMMON = f"""
import jax, numpy as np
from miscal_jax.model import FitConfig, fit_sharded, out_of_fold_sharded
from miscal_jax.synthetic.planted import make_planted
d = make_planted({N}, seed={SEED}, amplitude=0.25)
cfg = FitConfig(folds=3, candidates=("raw", "pca", "linear"))
"""

EIGHT = COMMON + textwrap.dedent(
    """
    import re, sys
    from miscal_jax.model import sharded
    assert jax.device_count() == 8
    mesh = jax.make_mesh((8,), ("items",))
    model, info = fit_sharded(jax.random.key(0), d.embeddings, d.conf, d.correct, cfg, mesh=mesh)
    est, p = out_of_fold_sharded(model, mesh=mesh)
    np.savez(sys.argv[1], value=est.value, p=p, select=info["select_error"])
    # one program over repeated calls of the same shapes
    size = sharded._fit_sharded._cache_size()
    for _ in range(2):
        fit_sharded(jax.random.key(1), d.embeddings, d.conf, d.correct, cfg, mesh=mesh)
    assert sharded._fit_sharded._cache_size() == size
    # the kernel sums run on the ring: reference shards passed device to device
    auto = sharded._automatic(mesh)
    rows = sharded._rows(auto, "items", d.embeddings, d.conf, d.correct)
    hlo = sharded._fit_sharded.lower(jax.random.key(0), *rows, cfg, mesh=auto, axis="items")
    assert len(re.findall("collective-permute", hlo.compile().as_text())) > 0
    print("ok")
    """
)

PROCESS = COMMON + textwrap.dedent(
    """
    import sys
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding, PartitionSpec as P
    pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    assert jax.process_count() == 2 and jax.device_count() == 4
    mesh = jax.make_mesh((4,), ("items",))
    rows = NamedSharding(mesh, P("items"))
    half = slice(pid * len(d.conf) // 2, (pid + 1) * len(d.conf) // 2)  # each process its rows
    x, p, y = (
        jax.make_array_from_process_local_data(rows, np.asarray(a)[half])
        for a in (d.embeddings, d.conf, d.correct)
    )
    model, info = fit_sharded(jax.random.key(0), x, p, y, cfg, mesh=mesh)
    est, corrected = out_of_fold_sharded(model, mesh=mesh)
    value = multihost_utils.process_allgather(est.value, tiled=True)
    corrected = multihost_utils.process_allgather(corrected, tiled=True)
    if pid == 0:
        np.savez(out, value=value, p=corrected)
    jax.distributed.shutdown()
    print("ok")
    """
)


def _one_device():
    d = make_planted(N, seed=SEED, amplitude=0.25)
    model, info = jax.jit(fit)(jax.random.key(0), d.embeddings, d.conf, d.correct, CONFIG)
    est, p = out_of_fold(model)
    return np.asarray(est.value), np.asarray(p), np.asarray(info["select_error"])


@pytest.mark.slow
def test_fit_over_8_devices_equals_one_device(tmp_path):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    out = tmp_path / "eight.npz"
    run = subprocess.run(
        [sys.executable, "-c", EIGHT, str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]
    got = np.load(out)
    value, p, select = _one_device()
    np.testing.assert_allclose(got["value"], value, atol=1e-5)
    # the corrected confidence passes the final isotonic map, a step function: a 1e-7 change
    # of its input may land on the next step (seen: 1.2e-5 at 1 of 600 items)
    np.testing.assert_allclose(got["p"], p, atol=5e-5)
    np.testing.assert_allclose(got["select"], select, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_fit_over_two_processes_equals_one_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    out = tmp_path / "two.npz"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PROCESS, str(pid), str(port), str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for pid in (0, 1)
    ]
    results = [proc.communicate(timeout=900) for proc in procs]
    for proc, (stdout, stderr) in zip(procs, results, strict=True):
        assert proc.returncode == 0 and stdout.strip().endswith("ok"), stderr[-3000:]
    got = np.load(out)
    value, p, _ = _one_device()
    np.testing.assert_allclose(got["value"], value, atol=1e-5)
    np.testing.assert_allclose(got["p"], p, atol=5e-5)  # the final isotonic map's steps
