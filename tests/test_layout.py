"""The layout by pipeline stage: imports run one way, down the stages, so that no module can
need one of a later stage (the way import circles start)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "histoclass"

# Lowest first. A module may import its own stage and the stages before it. Modules at the top
# of the package (errors, fileio, config) are the base every stage stands on.
STAGES = ["base", "stain", "data", "models", "synth", "evaluation", "explain", "runs", "inference",
          "training", "crossval", "export", "report", "slides", "cluster", "serve", "cli"]
BASE = {"errors", "fileio", "config", "progress"}
TOP = {"cli", "demo", "__main__", "__init__"}  # the API and the command: above every stage


def stage_of(parts: list[str]) -> str:
    head = parts[0]
    if head in BASE:
        return "base"
    if head in TOP:
        return "cli"
    assert head in STAGES, f"histoclass.{head} belongs to no stage; add it to STAGES in {__file__}"
    return head


def imported_histoclass_modules(path: Path) -> list[tuple[list[str], int]]:
    """(module path parts below histoclass, line) of every import, at any depth of the file."""
    module_parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    package_parts = module_parts[:-1] if path.name != "__init__.py" else module_parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package_parts[:len(package_parts) - (node.level - 1)] if node.level > 1 else package_parts
                target = [*base, *(node.module.split(".") if node.module else [])]
                names = [[*target, alias.name] for alias in node.names] if not node.module else [target]
            elif node.module and node.module.split(".")[0] == "histoclass":
                names = [node.module.split(".")[1:]]
            else:
                continue
        elif isinstance(node, ast.Import):
            names = [a.name.split(".")[1:] for a in node.names if a.name.split(".")[0] == "histoclass"]
        else:
            continue
        found += [(name, node.lineno) for name in names if name]
    return found


def test_imports_run_down_the_stages():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = stage_of(list(path.relative_to(PACKAGE).with_suffix("").parts))
        for target, line in imported_histoclass_modules(path):
            if target[0] in ("CLASS_NAMES", "__version__"):
                continue  # the package's constants
            theirs = stage_of(target)
            if STAGES.index(theirs) > STAGES.index(own):
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} ({own}) imports histoclass."
                             f"{'.'.join(target)} ({theirs})")
    assert not wrong, "\n".join(wrong)


def test_every_module_says_what_it_owns():
    silent = [str(p.relative_to(PACKAGE)) for p in sorted(PACKAGE.rglob("*.py"))
              if p.stat().st_size and ast.get_docstring(ast.parse(p.read_text())) is None]
    assert not silent, f"modules without an opening docstring: {silent}"
