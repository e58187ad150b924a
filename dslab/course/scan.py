"""The grader's static scan: what in a submission's code cells an honest exercise answer never needs.

The grader runs it in its own process before the notebook is executed: the cells are parsed with ``ast`` (IPython
syntax turned into Python first), never run, so nothing in the submission can switch the scan off. One rule per
construct (``RULES``):

- grader code: importing or reaching into the grader's own modules (``dslab.course``) or the grading cell's names;
- kernel hook: IPython events, transformers and shell internals, trace/profile/audit hooks, and reading the
  grader's frames or objects (``sys._getframe``, ``f_back``, ``gc.get_objects``);
- code object: building functions from code objects (``FunctionType``, ``__code__``, ``.replace(co_...)``);
- module write: writing to a module of dslab, to ``builtins`` or ``sys.modules`` (the modules the answers pass
  through);
- dynamic code: ``exec``/``eval``/``compile``/``__import__``/``importlib`` on a string that is not a literal.

Code inside a literal handed to ``exec`` or to a magic (``%time``, ``%%capture``) is scanned as well. A flag names
the cell, the line and the construct: it tells the instructor where to look, it is not a verdict by itself.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from dslab.course.delegation import without_magics

RULES = {
    "grader code": "imports or reaches into the grader's own modules (dslab.course) or the grading cell's names",
    "kernel hook": "hooks the kernel (IPython events, transformers, trace/profile/audit hooks) or reads the "
                   "grader's frames and objects",
    "code object": "builds a function from a code object (FunctionType, __code__, .replace(co_...))",
    "module write": "writes to a module of dslab, to builtins or to sys.modules",
    "dynamic code": "runs code built at run time (exec, eval, compile, __import__, importlib on a non-literal)",
}
GRADER = re.compile(r"^(dslab\.course(\.\w+)*|_dslab_\w*)$")
HOOK_ATTRS = {"settrace", "setprofile", "settrace_all_threads", "setprofile_all_threads", "addaudithook",
              "input_transformers_cleanup", "input_transformers_post", "ast_transformers", "register_post_execute",
              "set_custom_exc", "run_cell", "run_cell_async", "run_ast_nodes", "run_code", "transform_cell",
              "_getframe", "f_back", "f_locals", "f_globals", "tb_frame", "gi_frame", "cr_frame"}
HOOK_NAMES = {"sys.monitoring", "inspect.currentframe", "inspect.stack", "inspect.getouterframes", "inspect.trace",
              "gc.get_objects", "gc.get_referrers", "gc.get_referents", "ctypes"}
EVENTS = {"register", "unregister", "callbacks", "trigger"}  # ``<shell>.events.<this>``
SHELL_OK = {"run_line_magic", "run_cell_magic", "system", "getoutput", "magic", "display_formatter"}
CODE_ATTRS = {"__code__", "__globals__", "__closure__", "FunctionType", "CodeType", "LambdaType"}
SYS_OK = {"stdout", "stderr", "stdin", "argv", "path", "ps1", "ps2", "tracebacklimit"}  # honest writes to sys
WRITE_ROOTS = {"dslab", "builtins", "__builtins__", "json", "zlib", "base64", "signal", "importlib", "contextlib",
               "types", "threading"}  # dslab, and the modules the answering code relies on
MUTATORS = {"append", "extend", "insert", "clear", "pop", "popitem", "update", "setdefault", "remove",
            "__setitem__", "__delitem__", "__setattr__"}
DYNAMIC = {"exec", "eval", "compile", "__import__"}
BUILTINS = {"__builtins__", "vars", "get_ipython", "getattr", "setattr", "delattr", "hasattr", *DYNAMIC}
MAX_DEPTH = 3  # literals inside literals handed to exec


@dataclass(frozen=True)
class Flag:
    """One construct the scan found: its rule, where it is (cell index, line), its code, and the top-level function
    or class it sits in (None at module level), which tells which exercise it can touch."""

    rule: str
    cell: int
    line: int
    construct: str
    function: str | None = None

    def __str__(self) -> str:
        return f"{self.rule}: cell {self.cell} line {self.line}: {self.construct}"


def python_source(source: str) -> str:
    """A cell's source as the kernel runs it: IPython syntax (magics, ``!``) turned into the Python it stands for."""
    if not isinstance(source, str):
        raise TypeError(f"source must be a str, got {type(source).__name__}")
    try:
        from IPython.core.inputtransformer2 import TransformerManager
        return TransformerManager().transform_cell(source)
    except Exception:  # noqa: BLE001 - IPython missing or confused: blank the magics, as the delegation check does
        return without_magics(source)


def scan(cells: list[tuple[int, str]]) -> list[Flag]:
    """Flags for the code cells ``[(cell index, source), ...]``, in notebook order, at most one per rule and line.

    Imports and simple aliases (``A = dslab.course.answers``) carry from one cell to the next, as in the kernel.
    """
    if not isinstance(cells, list) or not all(isinstance(c, tuple) and len(c) == 2 for c in cells):
        raise TypeError("cells must be a list of (cell index, source) pairs")
    visitor = _Visitor()
    for index, source in cells:
        code = python_source(source)
        # IPython drops a cell's leading blank lines: count them back, so that a line number is the cell's own
        visitor.source_of(code, index, _blank_lead(source) - _blank_lead(code), None)
    seen, flags = set(), []
    for flag in visitor.flags:
        if (flag.cell, flag.line, flag.rule) not in seen:
            seen.add((flag.cell, flag.line, flag.rule))
            flags.append(flag)
    return flags


def _blank_lead(text: str) -> int:
    lines = text.splitlines()
    return next((i for i, line in enumerate(lines) if line.strip()), len(lines))


def _literal(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


class _Visitor(ast.NodeVisitor):
    """Walks the cells in order, keeping what each imported or aliased name stands for."""

    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}
        self.flags: list[Flag] = []
        self.cell, self.offset, self.function, self.text, self.depth = 0, 0, None, "", 0

    # -------------------------------------------------------------------------------------------- plumbing
    def source_of(self, text: str, cell: int, offset: int, function: str | None) -> None:
        """Scan ``text`` as code of ``cell`` starting ``offset`` lines down (a literal inside that cell)."""
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            return  # it fails in the kernel too (or is not code at all)
        saved = self.cell, self.offset, self.function, self.text
        self.cell, self.offset, self.function, self.text = cell, offset, function, text
        self.depth += 1
        try:
            self.visit(tree)
        finally:
            self.depth -= 1
            self.cell, self.offset, self.function, self.text = saved

    def flag(self, rule: str, node: ast.AST) -> None:
        code = ast.get_source_segment(self.text, node) or type(node).__name__
        code = " ".join(code.split())
        line = self.offset + getattr(node, "lineno", 1)
        self.flags.append(Flag(rule, self.cell, line, code if len(code) <= 80 else code[:77] + "...", self.function))

    def dotted(self, node: ast.AST | None, items: bool = False) -> str | None:
        """"module.attr..." that a Name/Attribute chain stands for, through imports and aliases; a call of
        ``get_ipython`` stands for "get_ipython()"; ``vars(x)`` and ``x.__dict__`` stand for x; with ``items``,
        ``x[k]`` stands for x too (what a write into an item changes)."""
        parts = []
        while isinstance(node, ast.Attribute) or items and isinstance(node, ast.Subscript):
            if isinstance(node, ast.Attribute) and node.attr != "__dict__":
                parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Call):
            func = self.dotted(node.func)
            if func and func.split(".")[-1] == "get_ipython":
                root = "get_ipython()"
            elif func == "vars" and len(node.args) == 1:
                root = self.dotted(node.args[0])
            else:
                return None
        elif isinstance(node, ast.Name):
            root = self.aliases.get(node.id, node.id if node.id in BUILTINS else None)
        else:
            return None
        return ".".join([root, *reversed(parts)]) if root else None

    # ------------------------------------------------------------------------------------------ bindings
    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> None:
        outer = self.function
        if outer is None and self.depth == 1:
            self.function = node.name
        self.generic_visit(node)
        self.function = outer
        self.aliases.pop(node.name, None)

    visit_AsyncFunctionDef = visit_ClassDef = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self._imported(node, a.name)
            self.aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module and not node.level:
            for a in node.names:
                self._imported(node, f"{node.module}.{a.name}")
                if a.name != "*":
                    self.aliases[a.asname or a.name] = f"{node.module}.{a.name}"

    def _imported(self, node: ast.AST, name: str) -> None:
        if GRADER.match(name) or name.startswith("dslab.course."):
            self.flag("grader code", node)
        last = name.split(".")[-1]
        if name in HOOK_NAMES or name.split(".")[0] == "ctypes" or last in HOOK_ATTRS:
            self.flag("kernel hook", node)
        if last in CODE_ATTRS or name.split(".")[0] == "marshal":
            self.flag("code object", node)
        if last in DYNAMIC and name.startswith("builtins."):
            self.flag("dynamic code", node)

    def visit_Assign(self, node: ast.Assign | ast.AugAssign | ast.AnnAssign) -> None:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for target in targets:
            self._written(target, node)
        origin = self.dotted(node.value) if node.value is not None else None
        for target in targets:
            if isinstance(target, ast.Name):
                if origin and isinstance(node, ast.Assign):
                    self.aliases[target.id] = origin
                else:
                    self.aliases.pop(target.id, None)
        self.generic_visit(node)

    visit_AugAssign = visit_AnnAssign = visit_Assign

    def visit_Delete(self, node: ast.Delete) -> None:
        for target in node.targets:
            self._written(target, node)
        self.generic_visit(node)

    def _written(self, target: ast.AST, node: ast.AST) -> None:
        """Flag an assignment to (or deletion of) an attribute or item of a module the answers pass through."""
        for t in target.elts if isinstance(target, (ast.Tuple, ast.List)) else [target]:
            if isinstance(t, ast.Starred):
                t = t.value
            if isinstance(t, (ast.Attribute, ast.Subscript)):
                if _watched(self.dotted(t, items=True)):
                    self.flag("module write", node)

    # ------------------------------------------------------------------------------------------- the rules
    def visit_Attribute(self, node: ast.Attribute) -> None:
        whole, inner = self.dotted(node), self.dotted(node.value)
        if whole and whole.startswith("dslab.course") and not (inner or "").startswith("dslab.course"):
            self.flag("grader code", node)
        if (node.attr in HOOK_ATTRS or whole in HOOK_NAMES or (isinstance(node.value, ast.Attribute)
                                                              and node.value.attr == "events" and node.attr in EVENTS)
                or (inner == "get_ipython()" and node.attr not in SHELL_OK)):
            self.flag("kernel hook", node)
        if node.attr in CODE_ATTRS or node.attr.startswith("co_"):
            self.flag("code object", node)
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if GRADER.match(node.id):
            self.flag("grader code", node)
        if node.id in CODE_ATTRS:
            self.flag("code object", node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str):
            if GRADER.match(node.value) or node.value.startswith("dslab.course."):
                self.flag("grader code", node)
            if node.value in CODE_ATTRS:  # getattr(f, "__code__")
                self.flag("code object", node)
            if node.value in HOOK_ATTRS:
                self.flag("kernel hook", node)

    def visit_Call(self, node: ast.Call) -> None:
        func = self.dotted(node.func)
        name = func.split(".")[-1] if func else getattr(node.func, "attr", None)
        first = node.args[0] if node.args else None
        if any((k.arg or "").startswith("co_") for k in node.keywords):
            self.flag("code object", node)
        if func in ("setattr", "delattr") and len(node.args) > 1 and _watched(
                f"{self.dotted(first)}.{_literal(node.args[1]) or '?'}" if self.dotted(first) else None):
            self.flag("module write", node)
        if func in ("getattr", "setattr", "delattr", "hasattr") and len(node.args) > 1:
            self._named_attribute(node)
        if isinstance(node.func, ast.Attribute) and name in MUTATORS and _watched(self.dotted(node.func.value, True)):
            self.flag("module write", node)
        if func and (func.endswith("patch") or ".patch." in func) and any(
                (_literal(a) or "").startswith("dslab.") or _watched(self.dotted(a), "dslab") for a in node.args):
            self.flag("module write", node)
        self._dynamic(node, func, name, first)
        self.generic_visit(node)

    def _named_attribute(self, node: ast.Call) -> None:
        """``getattr(dslab, "course")`` and the like: an attribute named by a literal is still an attribute."""
        owner, attr = self.dotted(node.args[0]), _literal(node.args[1])
        if owner and attr and f"{owner}.{attr}".startswith("dslab.course"):
            self.flag("grader code", node)

    def _dynamic(self, node: ast.Call, func: str | None, name: str | None, first: ast.AST | None) -> None:
        """exec/eval/compile/__import__/importlib/runpy on a non-literal; a literal's code is scanned in place."""
        text = _literal(first)
        builtin = func in DYNAMIC or func in {f"builtins.{d}" for d in DYNAMIC}
        loader = func is not None and func.split(".")[0] in ("importlib", "runpy") and name != "reload"
        if (builtin or loader) and first is not None:
            if text is None:
                self.flag("dynamic code", node)
            elif name in ("exec", "eval", "compile") and self.depth <= MAX_DEPTH:
                self.source_of(text, self.cell, self.offset + node.lineno - 1, self.function)
        elif name in ("run_line_magic", "run_cell_magic") and len(node.args) >= 2 and self.depth <= MAX_DEPTH:
            self._magic(node)

    def _magic(self, node: ast.Call) -> None:
        """The code a magic runs (``%time CODE``, ``%%capture`` + a body) is code of this cell too."""
        texts = [_literal(a) for a in node.args[1:]]
        if any(t is None for t in texts):
            self.flag("dynamic code", node)
        for k, text in enumerate(texts):
            words = (text or "").split()
            while words and words[0].startswith("-"):  # options such as %timeit -n 3 -r 1
                words = words[2:] if len(words) > 1 and words[1].isdigit() else words[1:]
            below = int(k == 1)  # a cell magic's body starts on the line after the magic
            for candidate in {text or "", " ".join(words)}:
                self.source_of(candidate, self.cell, self.offset + node.lineno - 1 + below, self.function)


def _watched(dotted: str | None, only: str | None = None) -> bool:
    """Whether writing into ``dotted`` changes a module the answers pass through (dslab, builtins, sys.modules, ...);
    ``only``: that root alone."""
    parts = dotted.split(".") if dotted else []
    if not parts or only:
        return bool(parts) and parts[0] == only
    if parts[0] == "sys":
        return len(parts) > 1 and parts[1] not in SYS_OK
    return parts[0] in WRITE_ROOTS


__all__ = ["Flag", "RULES", "python_source", "scan"]
