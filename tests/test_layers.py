"""The import arrows between swim's rooms point one way: data -> model -> metrics -> losses.

Eval and train sit above all of them. Checked on the source (every ``import`` statement, lazy ones
inside functions included), so a wrong arrow fails here before it becomes a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "swim"

# Room -> packages it must never import.
FORBIDDEN = {
    "data": ("swim.model", "swim.metrics", "swim.losses", "swim.eval", "swim.train"),
    "losses": ("swim.model", "swim.metrics", "swim.eval", "swim.train", "lightning"),
    "metrics": ("swim.model", "swim.eval", "swim.train", "lightning"),
    "model": ("swim.eval", "swim.train"),
}

# Known exceptions: the data doctor is a command line (``python -m swim.data.inspect``) that builds
# the chosen family's tiny processor (its adapter) for its ``--deep`` load check; the pipeline itself
# never does.
EXCEPTIONS = {("swim/data/inspect.py", "swim.model.families")}


def imported_modules(path: Path) -> list[str]:
    """Every module named by an import statement of one source file."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("room", sorted(FORBIDDEN))
def test_room_imports_nothing_above_it(room: str) -> None:
    wrong = [
        f"{path.relative_to(ROOT.parent)} imports {name}"
        for path in sorted((ROOT / room).rglob("*.py"))
        for name in imported_modules(path)
        if any(name == banned or name.startswith(banned + ".") for banned in FORBIDDEN[room])
        and (str(path.relative_to(ROOT.parent)), name) not in EXCEPTIONS
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("room", ["data", "losses"])
def test_data_and_losses_name_no_model_family(room: str) -> None:
    """No family's transformers classes below the model (docstrings included): data reads a plain spec."""
    wrong = [
        f"{path.relative_to(ROOT.parent)}: {name}"
        for path in sorted((ROOT / room).rglob("*.py"))
        for name in imported_modules(path)
        if name.startswith("transformers.models.")
    ]
    source_names = [
        f"{path.relative_to(ROOT.parent)}"
        for path in sorted((ROOT / room).rglob("*.py"))
        if any(cls in path.read_text() for cls in ("Qwen2_5_VL", "Qwen3VL", "Qwen2VLFor", "Qwen2VLModel"))
    ]
    assert not wrong and not source_names, "\n".join(wrong + source_names)
