"""The package's layers (DESIGN §2): each module imports only from its own layer or below, and
no import cycle exists between modules. Imports inside functions count too (a lazy import is
still a dependency). Bottom up: saar, models → sampling, agent → data → rl → runtime → study."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).parents[1] / "cleaner_jax"
LAYERS = {
    "saar": 0,
    "models": 0,
    "benchmarking": 0,
    "sampling": 1,
    "agent": 1,
    "data": 2,
    "rl": 3,
    "runtime": 4,
    "study": 5,
}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path, name: str, modules) -> set[str]:
    """The cleaner_jax modules `path` imports (absolute or relative, at any depth):
    `from pkg import mod` depends on pkg.mod, `from mod import func` on mod."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for a in node.names:
                sub = f"{module}.{a.name}"
                out.add(sub if sub in modules else module)
    return {m for m in out if m in modules} - {name}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: _imports(path, name, files) for name, path in files.items()}


def _layer(module: str) -> int:
    top = module.split(".")[1]
    if top not in LAYERS:
        raise AssertionError(f"{module}: cleaner_jax/{top} has no layer in LAYERS; add it")
    return LAYERS[top]


def test_every_subpackage_has_a_layer():
    tops = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()}
    tops -= {"__init__", "__pycache__"}
    assert tops == set(LAYERS)


def test_no_upward_import():
    upward = [
        f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
        for m, deps in sorted(_graph().items())
        if m != "cleaner_jax"
        for d in sorted(deps)
        if d != "cleaner_jax" and _layer(d) > _layer(m)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycle = stack[stack.index(d) :] + [d]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_the_checker_sees_an_upward_and_a_cyclic_import(tmp_path):
    """The walker itself: a models module that imports rl, and two modules importing each other."""
    pkg = tmp_path / "cleaner_jax"
    for sub in ("models", "rl"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "models" / "a.py").write_text("def f():\n    from cleaner_jax.rl import b\n")
    (pkg / "rl" / "b.py").write_text("from . import c\n")
    (pkg / "rl" / "c.py").write_text("from cleaner_jax.rl.b import x\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, pkg
    try:
        graph = _graph()
        assert graph["cleaner_jax.models.a"] == {"cleaner_jax.rl.b"}
        assert graph["cleaner_jax.rl.b"] == {"cleaner_jax.rl.c"}
        assert graph["cleaner_jax.rl.c"] == {"cleaner_jax.rl.b"}
        with pytest.raises(AssertionError, match="models.a .layer 0. imports cleaner_jax.rl.b"):
            test_no_upward_import()
        with pytest.raises(pytest.fail.Exception, match="import cycle: cleaner_jax.rl.b"):
            test_no_import_cycle()
    finally:
        PACKAGE = saved
