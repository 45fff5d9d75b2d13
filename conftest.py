"""pytest configuration for the tests and the docstrings' examples (doctests).

Every compiled XLA executable keeps a few memory maps; the suite compiles
thousands, and a process holding too many hits the kernel's map limit
(``vm.max_map_count``), which aborts inside XLA's compiler. Compiled code is
released after each test module.
"""

import jax
import pytest


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    yield
    jax.clear_caches()
