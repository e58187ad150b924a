"""Static side of the delegation check: does a submission's exercise function *name* a reference it may not use?

Each exercise lists the callables an answer may not delegate to (``Exercise.forbidden``: the reference and the
components it wraps). The grader reads the notebook's code, follows its imports and simple aliases, and looks at the
last binding of each exercise's target: a ``def`` whose body names a forbidden callable (or the class whose forbidden
method it would call), or a plain rebinding such as ``route = dslab.moe.route``. The run-time side (which forbidden
functions actually ran during each hidden call) is in ``answers.call``. Neither side can see a reference copied by
hand; README's grading section says so.
"""

from __future__ import annotations

import ast

from dslab.course.answers import lookup


def without_magics(source: str) -> str:
    """Cell source with IPython-only lines (magics, shell escapes) blanked, so it parses as Python."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def definitions_only(source: str) -> str | None:
    """The imports, functions and classes of a cell, without its other statements (None if it does not parse):
    what the grader keeps of a cell that killed or hung the kernel, so the exercises it defined still count."""
    try:
        tree = ast.parse(without_magics(source))
    except SyntaxError:
        return None
    keep = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    kept = [ast.get_source_segment(source, n, padded=True) for n in tree.body if isinstance(n, keep)]
    return "\n".join(k for k in kept if k) or None


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """"package.module.attr" for a Name/Attribute chain rooted in an imported (or aliased) name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name) or node.id not in aliases:
        return None
    return ".".join([aliases[node.id], *reversed(parts)])


def _is_class(qualname: str) -> bool:
    return isinstance(lookup(qualname), type)


class _Scan:
    def __init__(self, forbidden: tuple[str, ...]):
        self.forbidden = set(forbidden)
        # a class named in code whose forbidden method calling it would run (e.g. Gate -> Gate.forward)
        self.owners = {f.rsplit(".", 1)[0]: f for f in forbidden if "." in f and _is_class(f.rsplit(".", 1)[0])}
        self.aliases: dict[str, str] = {}
        self.bindings: dict[str, ast.AST] = {}

    def module(self, tree: ast.Module) -> None:
        for stmt in tree.body:
            self.statement(stmt)

    def statement(self, stmt: ast.stmt) -> None:
        if isinstance(stmt, ast.Import):
            for a in stmt.names:
                self.aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
                self.bindings.pop(a.asname or a.name.split(".")[0], None)
        elif isinstance(stmt, ast.ImportFrom) and stmt.module and not stmt.level:
            for a in stmt.names:
                if a.name != "*":
                    self.aliases[a.asname or a.name] = f"{stmt.module}.{a.name}"
                    self.bindings[a.asname or a.name] = stmt
        elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            self.bindings[stmt.name] = stmt
            self.aliases.pop(stmt.name, None)
        elif isinstance(stmt, ast.Assign):
            origin = _dotted(stmt.value, self.aliases)
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    self.bindings[target.id] = stmt
                    if origin:
                        self.aliases[target.id] = origin
                    else:
                        self.aliases.pop(target.id, None)
        elif isinstance(stmt, (ast.If, ast.Try, ast.With, ast.For, ast.While)):
            for child in ast.iter_child_nodes(stmt):
                if isinstance(child, ast.stmt):
                    self.statement(child)

    def uses(self, node: ast.AST) -> list[str]:
        """Forbidden callables named anywhere inside ``node``."""
        found = []
        for sub in ast.walk(node):
            if isinstance(sub, ast.ImportFrom) and sub.module and not sub.level:
                names = [f"{sub.module}.{a.name}" for a in sub.names]
            elif isinstance(sub, (ast.Name, ast.Attribute)):
                names = [_dotted(sub, self.aliases)]
            else:
                continue
            for name in names:
                if name in self.forbidden:
                    found.append(name)
                elif name in self.owners:
                    found.append(self.owners[name])
        return sorted(set(found))


def static_delegation(sources: list[str], target: str, forbidden: tuple[str, ...]) -> list[str]:
    """Forbidden callables that the last binding of ``target`` in these code cells is, or names.

    sources: the notebook's code cells in order. Cells that do not parse are skipped (they fail at run time anyway).
    """
    if not forbidden:
        return []
    scan = _Scan(tuple(forbidden))
    for source in sources:
        try:
            scan.module(ast.parse(without_magics(source)))
        except SyntaxError:
            continue
    binding = scan.bindings.get(target)
    if binding is None:
        return []
    if isinstance(binding, ast.ImportFrom):
        origin = scan.aliases.get(target)
        return [origin] if origin in scan.forbidden else []
    if isinstance(binding, ast.Assign):
        return scan.uses(binding.value)
    return scan.uses(binding)
