"""Every ``python`` code block of the README runs, in order, in one namespace."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


# the slowest test (about 3 minutes): it runs with the slow checks, in CI too
@pytest.mark.slow
def test_readme_code_blocks_run(tmp_path, monkeypatch):
    blocks = re.findall(r"^```python\n(.*?)^```", README.read_text(), re.M | re.S)
    assert len(blocks) >= 4
    monkeypatch.chdir(tmp_path)  # the blocks write model.msgpack
    namespace = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
    assert (tmp_path / "model.msgpack").exists()
    assert namespace["grads"]["w"].shape == namespace["emb"].shape[1:]
    assert float(abs(namespace["d_bandwidth"])) > 0
