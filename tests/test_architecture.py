"""The package's shape: no import cycle, no reach into another module's private names, small modules.

Read from the source with :mod:`ast` (nothing is imported), so a cycle hidden in a function-level
import counts as much as one at the top of a module. Imports under ``if TYPE_CHECKING:`` are
annotations only and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "semhooks"
MAX_LINES = 600

# Known debt, as a ratchet: the redesign (issue 14) has not removed these yet. Any violation
# not listed here fails, and so does a listed one that is gone (delete it from the list).
KNOWN_CYCLES: list[list[str]] = []
KNOWN_PRIVATE_IMPORTS: set[tuple[str, str]] = set()
KNOWN_LARGE: dict[str, int] = {}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
# The top-level recipes package (beside semhooks) is held to the same shape.
RECIPE_MODULES = {_module_name(p): p for p in sorted((PACKAGE.parent / "recipes").glob("*.py"))}
SIZED_MODULES = {**MODULES, **RECIPE_MODULES}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path, top: str = "semhooks") -> list[tuple[str, list[str], int]]:
    """``(module, imported names, line)`` for every import of package ``top`` outside
    TYPE_CHECKING."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: list[tuple[str, list[str], int]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                if base == top or base.startswith(top + "."):
                    names = [a.name for a in child.names]
                    for name in names:  # "from semhooks.x import submodule"
                        if f"{base}.{name}" in MODULES:
                            found.append((f"{base}.{name}", [], child.lineno))
                    found.append((base, names, child.lineno))
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name == top or alias.name.startswith(top + "."):
                        found.append((alias.name, [], child.lineno))
            visit(child)

    visit(tree)
    return found


def _resolve(module: str) -> str | None:
    while module and module not in MODULES:
        module = module.rpartition(".")[0]
    return module or None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for target, _, _ in _imports(path):
            resolved = _resolve(target)
            # A package importing its own submodules (re-exports) is not a cycle by itself;
            # importing a package runs its __init__, so a child importing its parent package
            # counts as an edge to the parent.
            if resolved and resolved != name:
                graph[name].add(resolved)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def strong(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def _is_parent_package(a: str, b: str) -> bool:
    return b.startswith(a + ".")


def test_no_import_cycles():
    graph = _graph()
    # A package __init__ that re-exports its children, and a child that imports a sibling
    # through the package, is the normal shape of a package: drop parent -> child edges.
    pruned = {v: {w for w in ws if not _is_parent_package(v, w)} for v, ws in graph.items()}
    cycles = _cycles(pruned)
    new = [c for c in cycles if c not in KNOWN_CYCLES]
    assert not new, "import cycles among semhooks modules:\n" + "\n".join(
        " <-> ".join(c) for c in new
    )
    gone = [c for c in KNOWN_CYCLES if c not in cycles]
    assert not gone, f"these cycles are gone: delete them from KNOWN_CYCLES: {gone}"


def test_no_import_of_another_modules_private_names():
    bad, seen = [], set()
    for path in MODULES.values():
        rel = path.relative_to(PACKAGE.parent).as_posix()
        for target, names, line in _imports(path):
            for imported in names:
                if imported.startswith("_") and not imported.startswith("__"):
                    seen.add((rel, imported))
                    if (rel, imported) not in KNOWN_PRIVATE_IMPORTS:
                        bad.append(f"{rel}:{line} imports {imported} from {target}")
    assert not bad, "\n".join(bad)
    gone = KNOWN_PRIVATE_IMPORTS - seen
    assert not gone, f"fixed: delete from KNOWN_PRIVATE_IMPORTS: {sorted(gone)}"


def test_the_semhooks_package_never_imports_recipes():
    bad = [
        f"{path.name}:{line}"
        for path in MODULES.values()
        for _, _, line in _imports(path, top="recipes")
    ]
    assert not bad, bad


# Data flows data / backend -> vocabulary -> extraction -> interventions / estimators / sae ->
# relations -> studies: a wing never imports a higher one (function-level imports count too).
_ABOVE_EXTRACTION = ("estimators", "interventions", "sae", "studies", "relations")
WING_ORDER = {
    "semhooks.data": ("backend", "vocabulary", "extraction", *_ABOVE_EXTRACTION),
    "semhooks.backend": ("vocabulary", "extraction", *_ABOVE_EXTRACTION),
    "semhooks.vocabulary": ("extraction", *_ABOVE_EXTRACTION),
    "semhooks.extraction": _ABOVE_EXTRACTION,
    "semhooks.interventions": ("estimators", "sae", "studies", "relations"),
    "semhooks.estimators": ("interventions", "sae", "studies", "relations"),
    # the studies use the relation data (patching's default prompts); never the reverse
    "semhooks.relations": ("studies",),
}


def _wing_violations(low: str, higher: tuple[str, ...]) -> list[str]:
    banned = tuple(f"semhooks.{wing}" for wing in higher)
    return [
        f"{name}:{line} imports {target}"
        for name, path in MODULES.items()
        if name == low or name.startswith(low + ".")
        for target, _, line in _imports(path)
        if any(target == b or target.startswith(b + ".") for b in banned)
    ]


@pytest.mark.parametrize("low", sorted(WING_ORDER))
def test_a_wing_never_imports_a_higher_one(low):
    bad = _wing_violations(low, WING_ORDER[low])
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    ("low", "source", "found"),
    [
        (
            "semhooks.estimators",
            "def f():\n    from semhooks.studies.vocab import vocab_lens\n",
            "semhooks.studies.vocab",
        ),
        # the shape the distributed LRE helpers once had: extraction reaching up to relations
        (
            "semhooks.extraction",
            "def f():\n    from semhooks.relations.jacobian import mean_jacobian\n",
            "semhooks.relations.jacobian",
        ),
        (
            "semhooks.extraction",
            "def f():\n    from semhooks.relations import checks\n",
            "semhooks.relations",
        ),
    ],
)
def test_the_wing_check_sees_a_planted_upward_import(tmp_path, monkeypatch, low, source, found):
    wing = low.rpartition(".")[2]
    planted = tmp_path / "semhooks" / wing / "planted.py"
    planted.parent.mkdir(parents=True)
    planted.write_text(source)
    monkeypatch.setattr(f"{__name__}.PACKAGE", tmp_path / "semhooks")
    monkeypatch.setattr(f"{__name__}.MODULES", {f"{low}.planted": planted})
    assert _wing_violations(low, WING_ORDER[low]) == [f"{low}.planted:2 imports {found}"]


@pytest.mark.parametrize("name", sorted(SIZED_MODULES))
def test_module_size(name):
    lines = SIZED_MODULES[name].read_text(encoding="utf-8").count("\n")
    limit = KNOWN_LARGE.get(name, MAX_LINES)
    assert lines <= limit, f"{name} has {lines} lines (at most {limit}): split it by idea"
    if name in KNOWN_LARGE and lines <= MAX_LINES:
        pytest.fail(f"{name} is now {lines} lines: delete it from KNOWN_LARGE")


def test_recipes_have_no_import_cycle_and_no_private_import():
    graph: dict[str, set[str]] = {name: set() for name in RECIPE_MODULES}
    bad = []
    for name, path in RECIPE_MODULES.items():
        for top in ("recipes", "semhooks"):
            for target, names, line in _imports(path, top=top):
                if target in RECIPE_MODULES and target != name:
                    graph[name].add(target)
                bad += [
                    f"{name}:{line} imports {n} from {target}"
                    for n in names
                    if n.startswith("_") and not n.startswith("__")
                ]
    assert not bad, "\n".join(bad)
    pruned = {v: {w for w in ws if not _is_parent_package(v, w)} for v, ws in graph.items()}
    assert graph["recipes.core"], "the recipes graph is empty: the import walk is broken"
    assert not _cycles(pruned), _cycles(pruned)


def test_the_architecture_test_sees_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# ---------------------------------------------------------------------- every module is tested
TESTS = Path(__file__).resolve().parent
MIN_TESTED_LINES = 40  # below this a module is glue (a version string, a few constants)

# Modules that no test imports and none of whose names a test uses, tested only through
# what their package builds on them. Any other untested module fails; so does an entry
# here that a test now reaches (delete it).
COVERED_THROUGH_PACKAGE: dict[str, str] = {
    "semhooks.backend.kv": "ModelAdapter's KV-cache methods (test_adapter, test_vocab)",
    "semhooks.backend.limits": "the refusals it names (test_conformance)",
    "semhooks.backend.tokens": "ModelAdapter.tokenize (test_tokens, test_adapter)",
    "semhooks.data.lines": "the data loaders reading through it (test_datasets)",
    "semhooks.estimators.mi.base": "the estimators built on it (test_mi)",
    "semhooks.estimators.mi.neural": "MINE and InfoNCE's shared training loop (test_mi)",
    "semhooks.estimators.probes": "the probing and lexical studies (test_probing, test_lexical)",
}


def _parse_module_sources(sources: dict[str, str]) -> dict[str, ast.Module]:
    return {name: ast.parse(text) for name, text in sources.items()}


def _resolve_from(here: str, is_package: bool, node: ast.ImportFrom) -> str:
    base = node.module or ""
    if node.level:
        package = here if is_package else here.rpartition(".")[0]
        parts = package.split(".")
        anchor = parts[: len(parts) - node.level + 1]
        base = ".".join([*anchor, base] if base else anchor)
    return base


def _definers(trees: dict[str, ast.Module], packages: set[str]):
    """``definer(module, name)``: the module whose code defines ``name`` as seen from
    ``module``, following re-exports (``from .x import name``) through packages."""
    exports: dict[str, dict[str, tuple[str, str | None]]] = {}
    for here, tree in trees.items():
        table: dict[str, tuple[str, str | None]] = {}
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                table[node.name] = (here, None)
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Name):
                        table[t.id] = (here, None)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve_from(here, here in packages, node)
                for alias in node.names:
                    if f"{base}.{alias.name}" in trees:
                        table[alias.asname or alias.name] = (f"{base}.{alias.name}", None)
                    elif base in trees:
                        table[alias.asname or alias.name] = (base, alias.name)
        exports[here] = table

    def definer(module: str, name: str, depth: int = 0) -> str | None:
        found = exports.get(module, {}).get(name)
        if found is None or depth > 20:
            return None
        target, renamed = found
        return target if renamed is None else definer(target, renamed, depth + 1)

    return definer


def _tested_modules(sources: dict[str, str], packages: set[str], tests: list[str]) -> set[str]:
    """Modules a test file imports, or one of whose names it uses (``from pkg import name``
    or ``sh.name`` after ``import semhooks as sh``), re-exports followed."""
    trees = _parse_module_sources(sources)
    definer = _definers(trees, packages)
    covered: set[str] = set()
    for text in tests:
        aliases: dict[str, str] = {}
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in trees:
                        covered.add(alias.name)
                        aliases[alias.asname or alias.name] = alias.name
            elif isinstance(node, ast.ImportFrom) and node.module in trees and not node.level:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    if sub in trees:
                        covered.add(sub)
                        aliases[alias.asname or alias.name] = sub
                    elif (where := definer(node.module, alias.name)) is not None:
                        covered.add(where)
        for node in ast.walk(ast.parse(text)):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
            ):
                module = aliases[node.value.id]
                sub = f"{module}.{node.attr}"
                where = sub if sub in trees else definer(module, node.attr)
                if where is not None:
                    covered.add(where)
    return covered


def _untested(sources: dict[str, str], packages: set[str], tests: list[str]) -> list[str]:
    covered = _tested_modules(sources, packages, tests)
    return sorted(
        name
        for name, text in sources.items()
        if name not in packages and text.count("\n") >= MIN_TESTED_LINES and name not in covered
    )


def test_every_module_has_a_test_file_that_reaches_it():
    sources = {name: path.read_text(encoding="utf-8") for name, path in MODULES.items()}
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    tests = [p.read_text(encoding="utf-8") for p in sorted(TESTS.glob("test_*.py"))]
    untested = _untested(sources, packages, tests)
    new = [m for m in untested if m not in COVERED_THROUGH_PACKAGE]
    assert not new, (
        "no test file imports these modules or uses a name they define (write tests/"
        "test_<module>.py): " + ", ".join(new)
    )
    gone = sorted(set(COVERED_THROUGH_PACKAGE) - set(untested))
    assert not gone, f"now tested directly: delete from COVERED_THROUGH_PACKAGE: {gone}"


def test_the_architecture_test_sees_a_planted_untested_module():
    body = "\n" * MIN_TESTED_LINES
    sources = {
        "semhooks": "from semhooks.a import used\nfrom .b import Thing as Other\n",
        "semhooks.a": f"def used():\n    pass\n{body}",
        "semhooks.b": f"class Thing:\n    pass\n{body}",
        "semhooks.c": f"def helper():\n    pass\n{body}",
        "semhooks.d": "X = 1\n",  # too small to need a test
    }
    tests = ["import semhooks as sh\n\ndef test_a():\n    sh.used()\n"]
    assert _untested(sources, {"semhooks"}, tests) == ["semhooks.b", "semhooks.c"]
    tests.append("from semhooks import Other\nfrom semhooks.c import helper\n")
    assert _untested(sources, {"semhooks"}, tests) == []
