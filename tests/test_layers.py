"""The tree's layering: lower layers never import higher ones, and pure logic never imports I/O libraries."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: layer of each package; a module may import only its own layer or lower ones
LAYER = {
    "surgegate": 0,  # the package's own __init__ only (prefixes below decide the rest)
    "surgegate.schemas": 0,
    "surgegate.telemetry": 1, "surgegate.forecast": 1, "surgegate.control": 1, "surgegate.admission": 1,
    "surgegate.llm": 1,
    "surgegate.sim": 1, "surgegate.plan": 1, "surgegate.checks": 1, "surgegate.errors": 0, "surgegate.settings": 1,
    "surgegate.children": 1,
    "surgegate.streams": 2, "surgegate.devtools": 2, "surgegate.logs": 2,
    "surgegate.agents": 3, "surgegate.api": 3, "surgegate.edge": 3, "surgegate.gpu": 3,
    # the whole loop on one host: a pool, edges and load together
    "surgegate.devtools.live": 4, "surgegate.devtools.compare": 4,
    "surgegate.cli": 4,
}
#: pure logic never imports these
IO_LIBRARIES = ("faust", "aiohttp", "confluent_kafka", "redis", "aiokafka", "mode", "grpc")


def _modules() -> list[tuple[str, Path]]:
    """Every module under the name it is imported by (surgegate/ links the card's top-level folders)."""
    out = []
    base = ROOT / "surgegate"
    for folder, _, files in os.walk(base, followlinks=True):
        for name in sorted(f for f in files if f.endswith(".py")):
            path = Path(folder, name)
            parts = path.relative_to(base).with_suffix("").parts
            out.append((".".join(("surgegate", *parts)).removesuffix(".__init__"), path))
    return sorted(out)


def _layer(module: str) -> int | None:
    best = None
    for prefix, layer in LAYER.items():
        matches = module == prefix or (prefix != "surgegate" and module.startswith(prefix + "."))
        if matches and (best is None or len(prefix) > len(best[0])):
            best = (prefix, layer)
    return None if best is None else best[1]


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


MODULES = _modules()


def test_every_module_has_a_layer():
    assert [m for m, _ in MODULES if _layer(m) is None] == []


@pytest.mark.parametrize(("module", "path"), MODULES, ids=[m for m, _ in MODULES])
def test_a_module_never_imports_a_higher_layer(module, path):
    mine = _layer(module)
    higher = [name for name in _imports(path) if name.startswith("surgegate.") and (_layer(name) or 0) > mine]
    assert higher == [], f"{module} (layer {mine}) imports {higher}"


PURE = [(m, p) for m, p in MODULES if (_layer(m) or 0) <= 1]


@pytest.mark.parametrize(("module", "path"), PURE, ids=[m for m, _ in PURE])
def test_pure_logic_never_imports_kafka_faust_aiohttp_or_redis(module, path):
    io = [name for name in _imports(path) if name.split(".")[0] in IO_LIBRARIES]
    assert io == [], f"{module} is pure logic but imports {io}"
