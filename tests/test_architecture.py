"""The shape of the code, read from its syntax: the core stands alone, the app is a client
of the public API, no module grows past 500 lines, and what the network value and the
base layer record settle is not worked out again elsewhere."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src" / "jaxbp"
MODULES = sorted(SRC.rglob("*.py"))


def tree(path):
    return ast.parse(path.read_text(), filename=str(path))


def imported(path):
    """The jaxbp modules `path` imports (absolute imports only: the project uses no other)."""
    names = set()
    for node in ast.walk(tree(path)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxbp"):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("jaxbp")}
    return names


def rel(path):
    return path.relative_to(SRC).as_posix()


@pytest.mark.parametrize("path", MODULES, ids=rel)
def test_no_module_over_500_lines(path):
    assert len(path.read_text().splitlines()) <= 500


@pytest.mark.parametrize("path", sorted((SRC / "_core").glob("*.py")), ids=rel)
def test_the_core_imports_only_the_core(path):
    outside = {m for m in imported(path) if not m.startswith("jaxbp._core")}
    assert not outside, f"{rel(path)} imports {sorted(outside)}"


@pytest.mark.parametrize("path", sorted((SRC / "app").glob("*.py")), ids=rel)
def test_the_app_uses_only_the_public_api(path):
    private = {m for m in imported(path) if m.partition(".")[2].startswith("_")}
    assert not private, f"{rel(path)} imports {sorted(private)}"


def calls(node, name):
    return [
        n
        for n in ast.walk(node)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == name
    ]


@pytest.mark.parametrize("path", MODULES, ids=rel)
def test_what_the_records_settle_is_not_worked_out_again(path):
    source = tree(path)
    # A layer's facts come from the base record, not getattr defaults.
    for call in calls(source, "getattr"):
        target = ast.unparse(call.args[0]) if call.args else ""
        assert not (len(call.args) == 3 and "layer" in target), ast.unparse(call)
    # The network's layers come from the Network, built once from params: its builder
    # (network.py's `_build`) is the one place that reads the depth off them.
    for node in ast.walk(source):
        is_body = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        if is_body and node.func.attr == "body" and "len(params" in ast.unparse(node):
            assert rel(path) == "_core/network.py", ast.unparse(node)
    # The state record alone knows its own type; the fused path alone knows its name.
    for call in calls(source, "isinstance"):
        if "TrainState" in ast.unparse(call.args[1]):
            assert rel(path) == "_train/state.py", ast.unparse(call)
    for node in ast.walk(source):
        if isinstance(node, ast.Compare) and any(
            isinstance(c, ast.Constant) and c.value == "fused"
            for c in [*node.comparators, node.left]
        ):
            pytest.fail(f"{rel(path)} compares with 'fused': {ast.unparse(node)}")
