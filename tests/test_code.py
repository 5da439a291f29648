"""The code's map: docs/code.md names every module of sam/ with what it imports from sam (inside functions too),
and no import goes up a level, so the graph has no cycle."""

import ast
import re

from tests.helpers import ROOT

SAM = ROOT / "sam"


def sam_imports(module: str) -> set[str]:
    """The sam modules `module` imports anywhere in its file (top level and inside functions)."""
    modules = {path.stem for path in SAM.glob("*.py")}
    found = set()
    for node in ast.walk(ast.parse((SAM / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "sam":
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sam."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("sam.")}
    return found - {module, "__init__"}


def documented() -> dict[str, tuple[int, set[str]]]:
    rows = re.findall(r"^\| (\d+) \| `(\w+)` \| [^|]+ \|([^|]*)\|$", (ROOT / "docs" / "code.md").read_text(), flags=re.M)
    return {module: (int(level), set(re.findall(r"`(\w+)`", imports))) for level, module, imports in rows}


def test_docs_name_every_module_with_what_it_imports():
    table = documented()
    assert set(table) == {path.stem for path in SAM.glob("*.py")} - {"__init__"}
    assert {module: imports for module, (_, imports) in table.items()} == {module: sam_imports(module) for module in table}


def test_every_import_goes_down_a_level():
    table = documented()
    upward = [(module, imported) for module, (level, imports) in table.items() for imported in imports
              if table[imported][0] >= level]
    assert not upward
