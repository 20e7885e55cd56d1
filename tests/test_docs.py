"""The documentation: every `python` block of the README and of docs/ runs, the API
reference has an entry for every public name and module, and the site builds with
`mkdocs build --strict` (the `docs` extra, in `dev`), rendering each of those entries."""

import ast
import importlib
import importlib.util
import json
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import jaxbp
from conftest import XLA_CACHE

ROOT = Path(__file__).parent.parent
API = ROOT / "docs" / "api"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```$", re.M | re.S)
DIRECTIVE = re.compile(r"^::: ([\w.]+)$", re.M)


def python_blocks(page):
    """`(line, code)` of each ```python block of `page`, `line` the first line of code."""
    text = page.read_text()
    blocks = [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in FENCE.finditer(text)]
    opened = len(re.findall(r"^```python$", text, re.M))
    assert len(blocks) == opened, f"{page}: a ```python block without its closing ``` line"
    return blocks


def page_id(page):
    return page.relative_to(ROOT).as_posix()


def run(argv, cwd, env=None):
    """`argv` in a fresh process, which must exit 0 (else its stderr is the failure)."""
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-4000:]


RUNNER = """
import sys, json, traceback
page, blocks = json.load(open(sys.argv[1]))
scope = {"__name__": "__main__"}
for line, code in blocks:
    try:  # padded, so that a traceback gives the line of the page
        exec(compile("\\n" * (line - 1) + code, page, "exec"), scope)
    except BaseException:
        traceback.print_exc()
        sys.exit(f"{page}: the block at line {line} failed")
"""


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=page_id)
def test_the_python_blocks_of_a_page_run_in_order(page, tmp_path):
    """A page's blocks in order, in one fresh interpreter with JAX's default settings
    (not this suite's strict ones; only its compilation cache and XLA flags are
    shared) and warnings as errors, in an empty folder."""
    spec = tmp_path / "blocks.json"
    spec.write_text(json.dumps([str(page), python_blocks(page)]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_") or k in XLA_CACHE}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    work = tmp_path / "work"
    work.mkdir()
    # As in this suite: a read or write fault of the shared cache (two processes at one
    # entry) is shown, not raised; jax compiles the program itself then.
    cache_faults = [f"-Wdefault:Error {verb} persistent" for verb in ("reading", "writing")]
    run([sys.executable, "-W", "error", *cache_faults, "-c", RUNNER, str(spec)], cwd=work, env=env)


def public_modules():
    """Every module of jaxbp whose dotted name has no part starting with `_`."""
    found = ["jaxbp"]
    for info in pkgutil.walk_packages(jaxbp.__path__, "jaxbp."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            found.append(info.name)
    return found


def public_names(name):
    """A module's public names: its `__all__`, else what it defines without a `_`."""
    module = importlib.import_module(name)
    if hasattr(module, "__all__"):
        return list(module.__all__)
    source = ast.parse(Path(module.__file__).read_text())
    defined = [
        node.name
        for node in source.body
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_")
    ]
    return defined


def documented():
    """The objects the API pages render (`::: name`), by page."""
    return {page: DIRECTIVE.findall(page.read_text()) for page in sorted(API.glob("*.md"))}


def test_every_public_name_has_an_entry_in_the_api_reference():
    entries = {name for names in documented().values() for name in names}
    missing = [f"jaxbp.{name}" for name in jaxbp.__all__ if f"jaxbp.{name}" not in entries]
    assert not missing, f"not in docs/api/*.md (add a '::: NAME' line): {missing}"


def test_every_public_module_is_documented_or_re_exported_by_a_documented_one():
    """A public module has its own entry, or each of its names is rendered through a
    documented package that re-exports it (`jaxbp.runs.folder` through `jaxbp.runs`)."""
    entries = {name for names in documented().values() for name in names}
    for name in public_modules():
        if name in entries or name == "jaxbp":
            continue
        parent = name.rpartition(".")[0]
        assert parent in entries, f"{name}: no '::: {name}' in docs/api/*.md"
        module, package = importlib.import_module(name), importlib.import_module(parent)
        outside = [
            n
            for n in public_names(name)
            if n not in package.__all__ or getattr(package, n) is not getattr(module, n)
        ]
        assert not outside, f"{name}: {outside} neither documented nor re-exported by {parent}"


def test_no_name_is_documented_twice():
    seen = {}
    for page, names in documented().items():
        for name in names:
            assert name not in seen, f"{name} in {page.name} and {seen[name]}"
            seen[name] = page.name


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs not installed")
def test_the_site_builds_strictly_and_renders_every_entry(tmp_path):
    site = tmp_path / "site"
    run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT)
    assert (site / "index.html").is_file() and (site / "api" / "index.html").is_file()
    ids = set()
    for page in (site / "api").rglob("*.html"):
        ids |= set(re.findall(r'id="([\w.]+)"', page.read_text()))
    empty = [f"jaxbp.{name}" for name in jaxbp.__all__ if f"jaxbp.{name}" not in ids]
    for names in documented().values():
        for name in (n for n in names if n != "jaxbp" and importlib.util.find_spec(n)):
            module = importlib.import_module(name)
            for n in public_names(name):  # there, or as jaxbp's own (jaxbp.runs.Run: jaxbp.Run)
                also = getattr(jaxbp, n, None) is getattr(module, n)
                if f"{name}.{n}" not in ids and not (also and f"jaxbp.{n}" in ids):
                    empty.append(f"{name}.{n}")
    assert not empty, f"entries the site does not render: {empty}"
    for figure in (ROOT / "experiments" / "results").glob("*.png"):
        assert (site / "experiments" / "results" / figure.name).is_file(), figure.name
