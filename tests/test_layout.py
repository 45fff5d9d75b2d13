"""The library's surface: a small top level, no private imports, a core without the app."""

import pathlib
import re
import subprocess
import sys

import miscal_jax as mj

PACKAGE = pathlib.Path(mj.__file__).parent


def test_top_level_is_small_and_curated():
    assert len(mj.__all__) <= 25, len(mj.__all__)
    for name in mj.__all__:
        assert hasattr(mj, name), name


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for block in re.findall(
            r"^\s*from miscal_jax[\w.]* import (?:\([^)]*\)|[^\n]*)", text, re.M
        ):
            names = re.findall(r"\b(\w+)\b(?:\s+as\s+\w+)?", block.split(" import ", 1)[1])
            offenders += [f"{path.relative_to(PACKAGE)}: {n}" for n in names if n.startswith("_")]
        # nor reaches them through a module alias (``from miscal_jax.app import html as H``)
        aliases = re.findall(r"^\s*from miscal_jax[\w.]* import \w+ as (\w+)", text, re.M)
        aliases += re.findall(r"^\s*import miscal_jax[\w.]* as (\w+)", text, re.M)
        for alias in aliases:
            used = re.findall(rf"\b{alias}\.(_[a-z]\w*)", text)
            offenders += [f"{path.relative_to(PACKAGE)}: {alias}.{n}" for n in used]
    assert not offenders, offenders


def test_core_never_imports_the_app():
    for path in PACKAGE.rglob("*.py"):
        if "app" in path.relative_to(PACKAGE).parts or path.name == "__main__.py":
            continue
        imports = re.findall(r"^\s*(?:from|import) miscal_jax\.app\b", path.read_text(), re.M)
        assert not imports, path


def test_core_imports_without_plotting_tables_or_scipy():
    code = (
        "import sys, miscal_jax\n"
        "heavy = [m for m in ('matplotlib', 'scipy', 'pyarrow', 'pandas') if m in sys.modules]\n"
        "print(','.join(heavy) or 'ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok", out.stdout
