"""The architecture's rules, checked on the source: the platform (cl/) names no method, and every transfer
method package is found and registered without being named anywhere else."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UPPER_FLOORS = ("strategies", "transfer", "benchmarks")


def test_the_platform_imports_and_names_no_method_module():
    problems = []
    for path in sorted((ROOT / "cl").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = re.findall(r"\b(?:strategies|transfer|benchmarks)\.[a-z_]+\b|\b(?:strategies|transfer|benchmarks)/",
                                   node.value)
            else:
                continue
            problems += [f"{path.name}:{node.lineno}: {n}" for n in names if n.split(".")[0].split("/")[0] in UPPER_FLOORS
                         and not re.match(r"transfer\.(name|options|target|tasks|skills|datasets)\b", n)]
    assert not problems, "cl/ must not name a method module:\n" + "\n".join(problems)


def test_every_transfer_package_with_params_is_registered():
    from cl.registry import TRANSFERS

    packages = sorted(p.parent.name for p in (ROOT / "transfer").glob("*/params.py"))
    assert packages, "no transfer packages found"
    registered = {entry.target.split(":")[0].split(".")[1] for entry in TRANSFERS.entries()
                  if isinstance(entry.target, str) and entry.target.startswith("transfer.")}
    assert set(packages) == registered
