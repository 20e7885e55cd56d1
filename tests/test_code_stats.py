"""tools/code_stats.py against a tiny package whose figures were counted by hand."""

import importlib.util
import sys
from pathlib import Path, PurePosixPath

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "code_stats.py"
spec = importlib.util.spec_from_file_location("code_stats", TOOL)
code_stats = importlib.util.module_from_spec(spec)
spec.loader.exec_module(code_stats)

MODULES = {
    "__init__.py": '"""Pkg."""\n\nfrom jaxbp._validate import check_x\n',
    # 19 lines: blank 2, 5, 6, 14, 15; comment-only 8 (line 3 is docstring, so code).
    # Check lines: check_x 7-13, the raise outside it 18.
    "_validate.py": '''"""Checks.

# not a comment: inside the docstring
"""


def check_x(x):
    # why
    if x < 0:
        raise ValueError(
            "x < 0"
        )
    return x


def scale(x):
    if x == 0:
        raise ZeroDivisionError("x")  # trailing comment
    return 1 / x
''',
    # 14 lines: blank 5, 8, 11, 12. Check lines: _refuse_big 2-7 (its raise inside),
    # run_check 9-10, the raise 14.
    "_train.py": """class Step:
    def _refuse_big(self, n):
        def inner():
            raise ValueError("big")

        if n > 9:
            inner()

    def run_check(self):
        return None


def train(n):
    raise RuntimeError(n)
""",
    "_mystery.py": "x = 1\n",
    "app/cli.py": "def main():\n    raise SystemExit(1)\n",
}


@pytest.fixture
def stats(tmp_path):
    for name, text in MODULES.items():
        path = tmp_path / "jaxbp" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return code_stats.measure_tree(tmp_path / "jaxbp")


def test_counts_by_module(stats):
    got = {
        m["module"]: (m["group"], m["lines"], m["code_lines"], m["raises"], m["check_lines"])
        for m in stats["modules"]
    }
    assert got == {
        "__init__.py": ("package", 3, 2, 0, 0),
        "_mystery.py": ("other", 1, 1, 0, 0),
        "_train.py": ("training", 14, 10, 2, 9),
        "_validate.py": ("core", 19, 13, 2, 8),
        "app/cli.py": ("app", 2, 2, 1, 1),
    }
    names = {m["module"]: [f["name"] for f in m["check_functions"]] for m in stats["modules"]}
    assert names["_train.py"] == ["Step._refuse_big", "Step.run_check"]
    assert names["_validate.py"] == ["check_x"]


def test_totals(stats):
    library = {k: stats["library"][k] for k in code_stats.SUMMED}
    assert library == {
        "modules": 4,
        "lines": 37,
        "code_lines": 26,
        "raises": 4,
        "check_lines": 17,
        "check_code_lines": 15,
    }
    assert stats["library"]["check_percent"] == 45.9  # 17 / 37
    assert (stats["app"]["lines"], stats["app"]["raises"]) == (2, 1)
    assert (stats["total"]["lines"], stats["total"]["raises"]) == (39, 5)
    assert stats["other"] == ["_mystery.py"]
    assert stats["highest_check_share"]["module"] == "_train.py"  # 9 / 14
    assert stats["highest_check_share"]["check_percent"] == 64.3
    assert stats["over_500"] == []
    assert stats["largest"] == {"module": "_validate.py", "lines": 19}


@pytest.mark.parametrize(
    ("path", "group"),
    [
        ("__init__.py", "package"),
        ("_fused_kernel.py", "fused kernel"),
        ("datasets.py", "files and runs"),
        ("_check.py", "parity"),
        ("_core/flow.py", "core"),
        ("_core/__init__.py", "core"),
        ("runs/__init__.py", "files and runs"),
        ("_curvature/products.py", "second order"),
        ("app/__init__.py", "app"),
        ("_io/checkpoint.py", "files and runs"),
        ("_io/__init__.py", "package"),
        ("_io/weird.py", "other"),
    ],
)
def test_groups_of_both_layouts(path, group):
    assert code_stats.group_of(PurePosixPath(path)) == group


def test_chain_merges_repeats_and_counts_climbs():
    calls = [["jaxbp._train", "a"], ["jaxbp._config", "b"], ["jaxbp._config", "c"]]
    calls += [["jaxbp._train", "d"], ["jaxbp._mlp", "e"], ["jaxbp._config", "f"]]
    found = code_stats.chain(calls)
    assert [s["module"] for s in found["sequence"]] == [
        "_train",
        "_config",
        "_train",
        "_mlp",
        "_config",
    ]
    assert (found["modules"], found["stops"], found["climbs_back_up"]) == (3, 5, 2)
    assert found["entries"] == {"_config": 2, "_train": 2, "_mlp": 1}


class Hostile:
    """An argument that refuses comparison and hashing."""

    __hash__ = None

    def __eq__(self, other):
        raise TypeError("no comparison")


def test_follow_uses_identity_and_removes_the_profiler():
    namespace = {"__name__": "jaxbp._fake"}
    exec(
        "def inner(a, *rest, k=None):\n    return a\n\ndef outer(a):\n    inner(1, 2, a)", namespace
    )
    app = {"__name__": "jaxbp.app.fake"}
    exec("def outer(a):\n    return a", app)
    target = Hostile()

    def run():
        namespace["outer"](Hostile())
        namespace["outer"](target)
        app["outer"](target)
        raise RuntimeError("stop")

    before = sys.getprofile()
    with pytest.raises(RuntimeError, match="stop"):
        code_stats.follow(lambda value: value is target, run)
    assert sys.getprofile() is before
    assert code_stats.follow(lambda value: value is target, lambda: namespace["outer"](target)) == [
        ["jaxbp._fake", "outer", False],
        ["jaxbp._fake", "inner", False],
    ]


def test_follow_marks_a_method_of_the_value_itself():
    namespace = {"__name__": "jaxbp._fake"}
    exec(
        "class Value:\n    def own(self):\n        return other(self)\n\n"
        "def other(value):\n    return value",
        namespace,
    )
    value = namespace["Value"]()
    calls = code_stats.follow(lambda v: v is value, value.own)
    assert calls == [["jaxbp._fake", "Value.own", True], ["jaxbp._fake", "other", False]]


def test_configuration_is_found_by_class_name_and_module():
    network = type("Network", (), {"__module__": "jaxbp._core.network"})
    elsewhere = type("Network", (), {"__module__": "jaxbpx"})
    config = type("Config", (), {})
    is_config = code_stats.config_matcher(config)
    assert is_config(network())
    assert is_config(config())
    assert not is_config(elsewhere())
    assert not is_config(Hostile())
