"""The package's layers: every import points down (or sideways within a layer), the actor
side never imports the learner side, and no modules import each other in a cycle.

Parsed from the source (``ast``), imports inside functions included."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "jaxrl_impala"

# Lower first. A module's layer is that of its longest matching prefix.
LAYERS = {
    "jaxrl_impala.core": 0,
    "jaxrl_impala.config": 0,
    "jaxrl_impala.errors": 0,
    "jaxrl_impala.unroll": 1,
    "jaxrl_impala.envs": 1,
    "jaxrl_impala.transport": 1,
    "jaxrl_impala.networks": 2,
    "jaxrl_impala.runtime": 2,
    "jaxrl_impala.io": 2,
    "jaxrl_impala.algorithms": 3,
    "jaxrl_impala.learner": 4,
    "jaxrl_impala.actor": 4,
    "jaxrl_impala.train": 5,
    # the CLIs, and the package root (which only re-exports)
    "jaxrl_impala": 6,
    "jaxrl_impala.actor.__main__": 6,
    "jaxrl_impala.train.__main__": 6,
    "jaxrl_impala.evaluate": 6,
    "jaxrl_impala.plot": 6,
    "jaxrl_impala.cli": 6,
}
# Sides of the same layer that must not import each other.
APART = [("jaxrl_impala.actor", "jaxrl_impala.learner")]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules that ``path`` imports (``from a import b`` counts ``a.b`` when
    ``b`` is a module)."""
    me = module_name(path)
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative
                pkg = me.split(".")[: len(me.split(".")) - node.level + (path.stem == "__init__")]
                base = ".".join([*pkg, base] if base else pkg)
            subs = [f"{base}.{a.name}" for a in node.names]
            names = [n if n in modules else base for n in subs]
        else:
            continue
        found |= {n for n in names if n in modules and n != me}
    return found


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in files}
    return {module_name(p): imports(p, modules) for p in files}


def violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for src, targets in graph.items():
        for dst in sorted(targets):
            if layer(dst) > layer(src):
                out.append(f"{src} (layer {layer(src)}) imports {dst} (layer {layer(dst)})")
            for a, b in APART:
                for x, y in ((a, b), (b, a)):
                    if src.startswith(x) and (dst == y or dst.startswith(y + ".")):
                        out.append(f"{src} imports {dst}: {x} and {y} stay apart")
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle found by a depth-first search (one per back edge)."""
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_every_module_has_a_layer():
    graph = import_graph()
    assert "jaxrl_impala.train.loop" in graph and "jaxrl_impala.core.vtrace" in graph
    for module in graph:
        layer(module)  # raises when no prefix matches


def test_imports_point_down_and_the_actor_never_imports_the_learner():
    assert violations(import_graph()) == []


def test_there_is_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_checks_catch_what_they_look_for():
    graph = {
        "jaxrl_impala.core.vtrace": {"jaxrl_impala.learner.update"},  # upward
        "jaxrl_impala.actor.rollout": {"jaxrl_impala.learner.batches"},  # across
        "jaxrl_impala.io.metrics": {"jaxrl_impala.io.plots"},
        "jaxrl_impala.io.plots": {"jaxrl_impala.io.metrics"},  # a cycle
    }
    found = violations(graph)
    assert any("core.vtrace (layer 0) imports jaxrl_impala.learner.update" in v for v in found)
    assert any("stay apart" in v for v in found)
    assert cycles(graph) == [
        ["jaxrl_impala.io.metrics", "jaxrl_impala.io.plots", "jaxrl_impala.io.metrics"]
    ]


def long_functions(root: Path = PACKAGE, max_lines: int = 100, max_positional: int = 8):
    """Functions over ``max_lines`` lines or with more than ``max_positional`` positional
    parameters (``self`` and ``cls`` not counted)."""
    out = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            args = node.args
            positional = len(args.posonlyargs) + len(args.args)
            if args.args and args.args[0].arg in ("self", "cls"):
                positional -= 1
            lines = node.end_lineno - node.lineno + 1
            if lines > max_lines or positional > max_positional:
                out.append(
                    f"{path.name}:{node.lineno} {node.name}: {lines} lines, {positional} positional"
                )
    return out


def test_no_function_is_over_100_lines_or_8_positional_parameters(tmp_path):
    assert long_functions() == []
    (tmp_path / "m.py").write_text(
        "def f(a, b, c, d, e, f, g, h, i):\n    pass\n\n\nclass C:\n    def g(self, *, a):\n"
        + "        x = 1\n" * 100
    )
    assert long_functions(tmp_path) == [
        "m.py:1 f: 2 lines, 9 positional",
        "m.py:6 g: 101 lines, 0 positional",
    ]
