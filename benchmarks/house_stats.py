"""The house's counts (issue 31): import cycles between the package's parts, imports inside functions,
long functions, long signatures, `# fmt: skip` markers and lines over the configured length.

A "part" is a sub-package of `lumbar` (`lumbar.train`) or a top-level module (`lumbar.cli`); imports inside
functions count for the cycles too, since they only hide them. Run: `python benchmarks/house_stats.py [src]`.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def part_of(module: str) -> str:
    bits = module.split(".")
    return ".".join(bits[:2]) if len(bits) > 1 else bits[0]


def resolve(node: ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        pkg = module.split(".") if is_package else module.split(".")[:-1]
        pkg = pkg[: len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([node.module] if node.module else []))
    if node.module is None:
        return [f"{base}.{alias.name}" for alias in node.names]
    return [base]


def scan(src: Path) -> dict:
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    inner_imports = 0
    long50, long80, params8, params10 = [], [], [], []
    for path in sorted((src / "lumbar").rglob("*.py")):
        module = module_name(path, src)
        tree = ast.parse(path.read_text(), str(path))
        parents: dict[ast.AST, ast.AST] = {}
        for parent in ast.walk(tree):
            for child in ast.iter_child_nodes(parent):
                parents[child] = parent
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                targets = (
                    [alias.name for alias in node.names]
                    if isinstance(node, ast.Import)
                    else resolve(node, module, path.name == "__init__.py")
                )
                inside = False
                up = parents.get(node)
                while up is not None:
                    if isinstance(up, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        inside = True
                    up = parents.get(up)
                for target in targets:
                    if not target.startswith("lumbar"):
                        continue
                    if inside:
                        inner_imports += 1
                    a, b = part_of(module), part_of(target)
                    if a != b and b != "lumbar":
                        edges[(a, b)].append(f"{module} -> {target}{' (in a function)' if inside else ''}")
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{module}.{node.name}"
                length = node.end_lineno - node.lineno + 1
                args = node.args
                count = len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs)
                count += bool(args.vararg) + bool(args.kwarg)
                if args.args and args.args[0].arg in ("self", "cls"):
                    count -= 1
                if length > 50:
                    long50.append((length, name))
                if length > 80:
                    long80.append((length, name))
                if count > 8:
                    params8.append((count, name))
                if count > 10:
                    params10.append((count, name))
    return {
        "edges": edges,
        "inner_imports": inner_imports,
        "long50": sorted(long50, reverse=True),
        "long80": sorted(long80, reverse=True),
        "params8": sorted(params8, reverse=True),
        "params10": sorted(params10, reverse=True),
    }


def cycles(edges: dict[tuple[str, str], list[str]]) -> list[list[str]]:
    """Strongly connected components with more than one part (Tarjan)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
        graph.setdefault(b, set())
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def text_counts(src: Path, line_length: int) -> tuple[int, int]:
    skips = over = 0
    for path in src.rglob("*.py"):
        for line in path.read_text().splitlines():
            skips += "# fmt: skip" in line
            over += len(line) > line_length
    return skips, over


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", nargs="?", default=str(ROOT / "src"))
    parser.add_argument("--verbose", action="store_true", help="list the cycles' edges and the long functions")
    args = parser.parse_args()
    src = Path(args.src)
    line_length = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["line-length"]
    stats = scan(src)
    comps = cycles(stats["edges"])
    skips, over = text_counts(src / "lumbar", line_length)
    n_lines = sum(len(p.read_text().splitlines()) for p in (src / "lumbar").rglob("*.py"))
    n_funcs = sum(
        isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
        for p in (src / "lumbar").rglob("*.py")
        for n in ast.walk(ast.parse(p.read_text()))
    )
    print(f"lines {n_lines}, functions {n_funcs}")
    print(f"import cycles between parts: {len(comps)}" + "".join(f"\n  {' <-> '.join(c)}" for c in comps))
    print(f"imports of lumbar inside functions: {stats['inner_imports']}")
    print(f"functions over 50 lines: {len(stats['long50'])}, over 80: {len(stats['long80'])}")
    print(f"signatures over 8 parameters: {len(stats['params8'])}, over 10: {len(stats['params10'])}")
    print(f"'# fmt: skip' markers: {skips}; lines over {line_length}: {over}")
    if args.verbose:
        members = {p for c in comps for p in c}
        for (a, b), where in sorted(stats["edges"].items()):
            if a in members and b in members:
                print(f"  {a} -> {b}: {where[0]}" + (f" (+{len(where) - 1})" if len(where) > 1 else ""))
        for length, name in stats["long80"]:
            print(f"  {length:4d} lines  {name}")
        for count, name in stats["params10"]:
            print(f"  {count:4d} params {name}")


if __name__ == "__main__":
    main()
