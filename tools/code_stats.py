"""Code statistics of src/jaxbp, reproducible: `python tools/code_stats.py [--src DIR] [--json]`.

`--src` is the package folder (`.../src/jaxbp`, default: the one beside this tool). The
figures, and how each is computed:

- Groups. Every `.py` file under the package is one module, put in one group: the first
  folder under the package decides (`FOLDER_GROUPS`, e.g. `_core/` -> core, `_train/` ->
  training, `app/` -> app), its `__init__.py` included (a subpackage such as `runs/` may
  keep its code there); else an `__init__.py` is `package`; else the file's own name
  decides (`MODULE_GROUPS`, e.g. `_backprop.py` -> core). Names are looked up without
  their leading underscores. A module no table knows goes to `other` and is listed by
  name: nothing is dropped. The library is every group but app.
- Lines: every line of the file (`str.splitlines`). Code lines: lines that are neither
  blank (whitespace only) nor comment-only (a `#` comment is the first token on the
  line, per `tokenize`); docstrings are code lines.
- Raise statements: the `ast.Raise` nodes of the module.
- Check lines: the union of the full line spans (`lineno..end_lineno`, the `def` line
  to the last line, decorators not included) of every function or method whose name,
  stripped of leading underscores, starts with `check`, `refuse`, `require` or
  `validate` or ends with `_check`, and of every `raise` statement (its own span) not
  inside such a function. Each line counts once. The share is check lines over all
  lines, for the library and per library module (the highest one is named); app's
  check lines are reported apart.
- Module size: the modules over 500 lines and the largest module, by all lines.
- Call chain of the configuration: in a fresh interpreter that imports the jaxbp of
  `--src` (PYTHONPATH = the folder above it, JAX on CPU), a `sys.setprofile` hook
  records every call event of a function defined in a `jaxbp` module (not `jaxbp.app`)
  while `step = jaxbp.make_train_step(optax.sgd(0.1), cfg)` is built, with
  `cfg = jaxbp.Config(activation="tanh", loss="cross_entropy")`, and called once on
  `params = jaxbp.init_mlp(jax.random.key(0), [4, 8, 3])`, `x = ones((5, 4), float32)`,
  `y = arange(5) % 3` (this traces and compiles the step). A call is kept when one of
  its arguments (the first `co_argcount + co_kwonlyargcount` locals at call time, plus
  the contents of `*args`; `**kwargs` is not looked into) is a configuration: an
  instance of `jaxbp.Config` or of a class named `Network` defined in a `jaxbp` module
  (so the configuration's own methods are kept, through `self`). The stops are the kept
  calls' modules in order, consecutive repeats merged into one. Reported: distinct
  modules, stops, entries (stops) per module, and climbs back up: the stops whose module
  already appeared earlier in the sequence (= stops - distinct modules).
- The same chain without the configuration's own methods: the calls where the only
  matching argument is the first one, named `self` (the value answering about itself:
  `config.output`, `network.loss`), are left out, so what remains is the code that takes
  the configuration as an argument and works with it.
- Call chain of params: the same hook around one eager `jaxbp.manual_grad(params, x, y,
  cfg)` (fresh params, same x, y, cfg), keeping the calls one of whose arguments is
  that `params` list object itself (identity).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import io
import json
import os
import subprocess
import sys
import tokenize
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any

DEFAULT_SRC = Path(__file__).resolve().parents[1] / "src" / "jaxbp"
BIG_MODULE = 500
CHECK_PREFIXES = ("check", "refuse", "require", "validate")
CHECK_SUFFIX = "_check"

FOLDER_GROUPS = {
    "app": "app",
    "core": "core",
    "train": "training",
    "training": "training",
    "per_example": "per-example",
    "privacy": "privacy",
    "second_order": "second order",
    "curvature": "second order",
    "parity": "parity",
    "fused": "fused kernel",
    "files": "files and runs",
    "runs": "files and runs",
}
"""First folder under the package (leading underscores stripped) -> group."""

MODULE_GROUPS = {
    **dict.fromkeys(
        ["activations", "losses", "tasks", "init", "layers", "norm", "dropout", "config"],
        "core",
    ),
    **dict.fromkeys(["network", "mlp", "forward", "backprop", "validate", "custom_vjp"], "core"),
    **dict.fromkeys(
        ["train", "state", "paths", "shuffle", "sharding", "diagnostics", "evaluate"],
        "training",
    ),
    "per_example": "per-example",
    "dp": "privacy",
    "privacy": "privacy",
    "second_order": "second order",
    "parity": "parity",
    "check": "parity",
    "fused": "fused kernel",
    "fused_kernel": "fused kernel",
    **dict.fromkeys(["checkpoint", "data_files", "idx", "datasets", "runs"], "files and runs"),
}
"""Module file name (leading underscores stripped, no `.py`) -> group."""

GROUP_ORDER = [
    "core",
    "training",
    "per-example",
    "privacy",
    "second order",
    "parity",
    "fused kernel",
    "files and runs",
    "package",
    "other",
    "app",
]


# --- grouping --------------------------------------------------------------------------


def group_of(rel: PurePosixPath) -> str:
    """The group of a module, from its path relative to the package folder."""
    folder = rel.parts[0].lstrip("_") if len(rel.parts) > 1 else None
    if folder in FOLDER_GROUPS:
        return FOLDER_GROUPS[folder]
    if rel.name == "__init__.py":
        return "package"
    return MODULE_GROUPS.get(rel.stem.lstrip("_"), "other")


# --- one module -------------------------------------------------------------------------


def comment_only_lines(text: str) -> set[int]:
    """Line numbers whose first token is a comment."""
    found = set()
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT and not tok.line[: tok.start[1]].strip():
            found.add(tok.start[0])
    return found


def code_lines(text: str) -> set[int]:
    """Line numbers (1-based) that are neither blank nor comment-only."""
    comments = comment_only_lines(text)
    return {
        number
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and number not in comments
    }


def is_check_name(name: str) -> bool:
    bare = name.lstrip("_")
    return bare.startswith(CHECK_PREFIXES) or bare.endswith(CHECK_SUFFIX)


def span(node: ast.AST) -> set[int]:
    return set(range(node.lineno, node.end_lineno + 1))


def check_spans(tree: ast.AST) -> tuple[list[dict[str, Any]], list[int]]:
    """The check functions `{name, start, end}` and the lines of raises outside them."""
    functions: list[dict[str, Any]] = []
    raises: list[int] = []

    def visit(node: ast.AST, inside: bool, prefix: str) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = prefix + node.name
            prefix = name + "."
            if not isinstance(node, ast.ClassDef) and is_check_name(node.name):
                functions.append({"name": name, "start": node.lineno, "end": node.end_lineno})
                inside = True
        elif isinstance(node, ast.Raise) and not inside:
            raises.extend(sorted(span(node)))
        for child in ast.iter_child_nodes(node):
            visit(child, inside, prefix)

    visit(tree, False, "")
    return functions, raises


def measure_module(path: Path, rel: PurePosixPath) -> dict[str, Any]:
    text = path.read_text(encoding="utf-8")
    tree = ast.parse(text, filename=str(path))
    code = code_lines(text)
    functions, raise_lines = check_spans(tree)
    checks = set(raise_lines).union(*(range(f["start"], f["end"] + 1) for f in functions))
    return {
        "module": str(rel),
        "group": group_of(rel),
        "lines": len(text.splitlines()),
        "code_lines": len(code),
        "raises": sum(isinstance(node, ast.Raise) for node in ast.walk(tree)),
        "check_lines": len(checks),
        "check_code_lines": len(checks & code),
        "check_functions": functions,
    }


# --- the tree ---------------------------------------------------------------------------

SUMMED = ("modules", "lines", "code_lines", "raises", "check_lines", "check_code_lines")


def percent(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 1) if whole else 0.0


def summed(modules: list[dict[str, Any]]) -> dict[str, Any]:
    total = {key: sum(m[key] for m in modules) for key in SUMMED[1:]}
    total["modules"] = len(modules)
    total["check_percent"] = percent(total["check_lines"], total["lines"])
    return total


def highest_check_share(modules: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not modules:
        return None
    top = max(modules, key=lambda m: (m["check_lines"] / max(m["lines"], 1), m["module"]))
    return {
        "module": top["module"],
        "check_lines": top["check_lines"],
        "lines": top["lines"],
        "check_percent": percent(top["check_lines"], top["lines"]),
    }


def measure_tree(src: Path) -> dict[str, Any]:
    """Every static figure (lines, raises, check lines, sizes) of the package at `src`."""
    src = Path(src)
    paths = sorted(src.rglob("*.py"))
    modules = [measure_module(p, PurePosixPath(p.relative_to(src).as_posix())) for p in paths]
    groups = {g: [m for m in modules if m["group"] == g] for g in GROUP_ORDER}
    library = [m for m in modules if m["group"] != "app"]
    largest = max(modules, key=lambda m: (m["lines"], m["module"]))
    return {
        "src": str(src),
        "modules": modules,
        "groups": {
            g: {**summed(ms), "names": [m["module"] for m in ms]} for g, ms in groups.items()
        },
        "library": summed(library),
        "app": summed(groups["app"]),
        "total": summed(modules),
        "other": [m["module"] for m in groups["other"]],
        "highest_check_share": highest_check_share(library),
        "over_500": [
            {"module": m["module"], "lines": m["lines"]} for m in modules if m["lines"] > BIG_MODULE
        ],
        "largest": {"module": largest["module"], "lines": largest["lines"]},
    }


# --- call chains (run in a child interpreter) -------------------------------------------


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def in_library(module: str) -> bool:
    return in_package(module, "jaxbp") and not in_package(module, "jaxbp.app")


def arguments(frame: Any) -> list[Any]:
    """The values of a frame's arguments at its call event, `*args` spread out."""
    code = frame.f_code
    count = code.co_argcount + code.co_kwonlyargcount
    names = list(code.co_varnames[:count])
    star = bool(code.co_flags & inspect.CO_VARARGS)
    local = frame.f_locals
    values = [local.get(name) for name in names]
    if star:
        extra = local.get(code.co_varnames[count], ())
        values.extend(extra if isinstance(extra, tuple) else ())
    return values


def config_matcher(config_cls: type | None):
    """True for a `jaxbp.Config` or an instance of a jaxbp class named `Network`."""

    def is_config(value: Any) -> bool:
        try:
            cls = type(value)
            if config_cls is not None and issubclass(cls, config_cls):
                return True
            return any(
                c.__name__ == "Network" and in_package(str(c.__module__), "jaxbp")
                for c in cls.__mro__
            )
        except Exception:
            return False

    return is_config


def follow(matches, run) -> list[list[Any]]:
    """`[module, qualname, only_self]` of each library call, during `run()`, with a matching
    argument; `only_self` when the one matching argument is the method's own `self`."""
    calls: list[list[Any]] = []

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if not isinstance(module, str) or not in_library(module):
            return
        values = arguments(frame)
        matched = [i for i, value in enumerate(values) if matches(value)]
        if matched:
            code = frame.f_code
            only_self = matched == [0] and code.co_varnames[:1] == ("self",)
            calls.append([module, getattr(code, "co_qualname", code.co_name), only_self])

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(previous)
    return calls


def trace_child(expected_src: str) -> dict[str, Any]:
    """Both call chains, measured in this interpreter (see the module docstring)."""
    import jax
    import jax.numpy as jnp
    import optax

    import jaxbp

    where = Path(jaxbp.__file__).resolve().parent
    if where != Path(expected_src).resolve():
        raise SystemExit(f"imported jaxbp from {where}, not from {expected_src}")
    cfg = jaxbp.Config(activation="tanh", loss="cross_entropy")
    x = jnp.ones((5, 4), jnp.float32)
    y = jnp.arange(5) % 3
    optimizer = optax.sgd(0.1)
    params = jaxbp.init_mlp(jax.random.key(0), [4, 8, 3])
    opt_state = optimizer.init(params)

    def one_step() -> None:
        step = jaxbp.make_train_step(optimizer, cfg)
        jax.block_until_ready(step(params, opt_state, x, y))

    config_calls = follow(config_matcher(getattr(jaxbp, "Config", None)), one_step)
    fresh = jaxbp.init_mlp(jax.random.key(0), [4, 8, 3])  # the step donated `params`
    params_calls = follow(
        lambda value: value is fresh,
        lambda: jax.block_until_ready(jaxbp.manual_grad(fresh, x, y, cfg)),
    )
    return {"config": config_calls, "params": params_calls}


def short(module: str) -> str:
    return module.removeprefix("jaxbp.")


def chain(calls: list[list[Any]]) -> dict[str, Any]:
    """Stops (consecutive calls in one module merged), entries per module, climbs."""
    stops: list[dict[str, Any]] = []
    for module, function, *_ in calls:
        if stops and stops[-1]["module"] == short(module):
            stops[-1]["functions"].append(function)
        else:
            stops.append({"module": short(module), "functions": [function]})
    seen: set[str] = set()
    climbs = 0
    for stop in stops:
        climbs += stop["module"] in seen
        seen.add(stop["module"])
    entries = Counter(stop["module"] for stop in stops)
    return {
        "calls": len(calls),
        "modules": len(seen),
        "stops": len(stops),
        "climbs_back_up": climbs,
        "entries": dict(sorted(entries.items(), key=lambda kv: (-kv[1], kv[0]))),
        "sequence": stops,
    }


def measure_chains(src: Path) -> dict[str, Any]:
    """Run `trace_child` in a fresh interpreter that imports the jaxbp at `src`."""
    src = Path(src).resolve()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src.parent), env.get("PYTHONPATH")]))
    env["JAX_PLATFORMS"] = "cpu"
    command = [sys.executable, str(Path(__file__).resolve()), "--trace-child", str(src)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the tracing interpreter failed:\n{done.stderr}")
    raw = json.loads(done.stdout.strip().splitlines()[-1])  # the last line: the JSON
    chains = {name: chain(calls) for name, calls in raw.items()}
    chains["config_functions"] = chain([c for c in raw["config"] if not c[2:] or not c[2]])
    return chains


# --- output -----------------------------------------------------------------------------


def row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def group_table(stats: dict[str, Any]) -> list[str]:
    head = ["group", "modules", "lines", "code lines", "raise", "check lines", "check %"]
    lines = [row(head), row(["---"] + ["---:"] * (len(head) - 1))]
    keys = ["modules", "lines", "code_lines", "raises", "check_lines", "check_percent"]
    for name, group in stats["groups"].items():
        if group["modules"]:
            lines.append(row([name] + [group[k] for k in keys]))
    for name in ("library", "app", "total"):
        label = "library (all but app)" if name == "library" else name
        lines.append(row([f"**{label}**"] + [stats[name][k] for k in keys]))
    return lines


def static_markdown(stats: dict[str, Any]) -> list[str]:
    lib, top = stats["library"], stats["highest_check_share"]
    out = [f"# Code statistics of `{stats['src']}`", "", "## Lines, raises, check lines", ""]
    out += group_table(stats)
    out += ["", "Modules per group:", ""]
    out += [
        f"- {name}: {', '.join(group['names'])}"
        for name, group in stats["groups"].items()
        if group["modules"]
    ]
    out += ["", f"Unknown modules (`other`): {', '.join(stats['other']) or 'none'}", ""]
    out += [
        f"Check lines, library: {lib['check_lines']} of {lib['lines']} lines "
        f"({lib['check_percent']} %); {lib['check_code_lines']} of {lib['code_lines']} code "
        f"lines ({percent(lib['check_code_lines'], lib['code_lines'])} %).",
        f"Highest share: `{top['module']}`, {top['check_lines']} of {top['lines']} lines "
        f"({top['check_percent']} %)."
        if top
        else "Highest share: no modules.",
        "",
        "Check functions counted (module: functions):",
        "",
    ]
    for m in stats["modules"]:
        if m["check_functions"]:
            names = ", ".join(f["name"] for f in m["check_functions"])
            out.append(f"- {m['module']}: {names}")
    big = ", ".join(f"{m['module']} ({m['lines']})" for m in stats["over_500"]) or "none"
    largest = stats["largest"]
    out += ["", "## Module size", "", f"Over {BIG_MODULE} lines: {big}."]
    out += [f"Largest module: {largest['module']} ({largest['lines']} lines).", ""]
    return out


def functions_text(functions: list[str]) -> str:
    counts = Counter(functions)
    ordered = list(dict.fromkeys(functions))
    return ", ".join(f"{f} x{counts[f]}" if counts[f] > 1 else f for f in ordered)


def chain_markdown(title: str, found: dict[str, Any]) -> list[str]:
    out = [f"## {title}", ""]
    out += [
        f"Calls recorded: {found['calls']}; distinct modules: {found['modules']}; "
        f"stops: {found['stops']}; climbs back up: {found['climbs_back_up']}.",
        "",
        "Entries per module: "
        + ", ".join(f"{module} {n}" for module, n in found["entries"].items())
        + ".",
        "",
        "Stop sequence: " + " -> ".join(stop["module"] for stop in found["sequence"]),
        "",
    ]
    out += [
        f"{i}. {stop['module']}: {functions_text(stop['functions'])}"
        for i, stop in enumerate(found["sequence"], start=1)
    ]
    return [*out, ""]


def markdown(stats: dict[str, Any], chains: dict[str, Any]) -> str:
    out = static_markdown(stats)
    out += chain_markdown(
        "Call chain: the configuration from make_train_step through one step", chains["config"]
    )
    out += chain_markdown(
        "Call chain: the configuration from make_train_step through one step, functions "
        "that take it (its own methods, where it is only `self`, left out)",
        chains["config_functions"],
    )
    out += chain_markdown("Call chain: params through one eager manual_grad", chains["params"])
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=DEFAULT_SRC, help="the src/jaxbp folder")
    parser.add_argument("--json", action="store_true", help="JSON instead of Markdown")
    parser.add_argument("--trace-child", metavar="SRC", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.trace_child:
        print(json.dumps(trace_child(args.trace_child)))
        return
    if not (args.src / "__init__.py").is_file():
        parser.error(f"{args.src} is not a package folder (no __init__.py)")
    stats = measure_tree(args.src)
    chains = measure_chains(args.src)
    if args.json:
        print(json.dumps({**stats, "chains": chains}, indent=1))
    else:
        print(markdown(stats, chains))


if __name__ == "__main__":
    main()
