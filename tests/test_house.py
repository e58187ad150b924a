"""The house rules of dslab/, checked from the source (parsed, never imported): small modules and functions, imports
that flow one way from the ground floor up, and one definition of each piece of training plumbing."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dslab"
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 500, 60
FLOORS = {  # top-level module (or package) -> floor; a module may import only from its own floor or below
    **dict.fromkeys(("configs", "data", "nn", "validate", "plots", "widgets", "runtime", "checkpoint", "rewards"), 0),
    **dict.fromkeys(("accounting", "moe", "dispatch", "mla", "attention", "mtp", "fp8", "sampling"), 1),
    **dict.fromkeys(("model", "systems", "expert_parallel"), 2),
    **dict.fromkeys(("train", "sft", "grpo", "evals", "capstone"), 3),
    "labs": 4, "bench": 5, "course": 5, "__main__": 5, "__init__": 5,
}
# The plumbing every trainer shares, each defined exactly once in the package.
ONE_DEFINITION = ("lr_at", "micro_batches", "save_checkpoint", "load_checkpoint", "write_metrics", "read_metrics",
                  "init_distributed", "smooth", "timeit", "num_threads", "held_out_questions")


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def top_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def imported(path: Path) -> set[str]:
    """The top-level dslab modules ``path`` imports, anywhere in the file (inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("dslab"):
            parts = node.module.split(".")
            names |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("dslab.")}
    return names


def test_every_top_level_module_has_a_floor():
    missing = {top_name(p) for p in modules()} - FLOORS.keys()
    assert not missing, f"add {sorted(missing)} to FLOORS (and to the floor list in dslab/__init__.py)"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_and_functions_fit_on_a_few_screens(path):
    source = path.read_text(encoding="utf-8")
    assert len(source.splitlines()) <= MAX_MODULE_LINES
    long = [(n.name, n.end_lineno - n.lineno + 1) for n in ast.walk(ast.parse(source))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno >= MAX_FUNCTION_LINES]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_flow_from_the_ground_up(path):
    me = top_name(path)
    above = {m for m in imported(path) - {me} if FLOORS.get(m, 0) > FLOORS[me]}
    if me == "labs":  # a lab registers its exercises with the course tooling and may time itself with a benchmark
        above -= {"course", "bench"}
    assert not above, f"{path.relative_to(PACKAGE)} imports {sorted(above)} from a floor above its own"
    if me == "bench":
        assert "labs" not in imported(path), "benchmarks depend on components, never on a lab"


def test_the_training_plumbing_is_defined_once():
    defs = Counter(n.name for p in modules() for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
                   if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.col_offset == 0)
    assert {name: defs[name] for name in ONE_DEFINITION} == dict.fromkeys(ONE_DEFINITION, 1)
