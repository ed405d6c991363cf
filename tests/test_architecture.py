"""The package's shape: one import name, dependencies that point one way, no global side effects on import."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# lower layers never import higher ones (the top level: fit, Posterior, targets, data)
LAYERS = {"core": 0, "priors": 1, "constraints": 1, "paths": 2, "samplers": 3, "diffusion": 3, "objectives": 4,
          "evaluation": 5, "baselines": 5, "training": 6}
TOP = 7
FOLDERS = {"posterior": ROOT / "posterior", "posterior.priors": ROOT / "priors",
           "posterior.constraints": ROOT / "constraints"}


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], TOP) if len(parts) > 1 else TOP


def _runtime_imports(path: Path) -> list[str]:
    """Modules imported at run time (imports under ``if TYPE_CHECKING:`` are for annotations only)."""
    tree = ast.parse(path.read_text())
    skipped = {id(node) for stmt in ast.walk(tree) if isinstance(stmt, ast.If)
               and getattr(stmt.test, "id", None) == "TYPE_CHECKING" for node in ast.walk(stmt)}
    names = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return [n for n in names if n == "posterior" or n.startswith("posterior.")]


def test_dependencies_point_one_way():
    wrong = []
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            module = ".".join([package, *path.relative_to(folder).with_suffix("").parts]).removesuffix(".__init__")
            if _layer(module) == TOP:
                continue
            wrong += [f"{module} imports {target}" for target in _runtime_imports(path) if _layer(target) > _layer(module)]
    assert not wrong, wrong


def test_no_relative_imports_and_no_old_top_level_names():
    for folder in FOLDERS.values():
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    assert node.level == 0, f"{path}: relative import"
                    assert node.module.split(".")[0] not in ("priors", "constraints"), f"{path}: {node.module}"


def test_importing_the_library_changes_nothing_global():
    code = ("import torch; torch.manual_seed(5); a = torch.rand(2); torch.manual_seed(5); "
            "import posterior, posterior.priors, posterior.constraints; "
            "assert torch.equal(torch.rand(2), a), 'import moved the global RNG'; "
            "import importlib.util as u; assert u.find_spec('priors') is None and u.find_spec('constraints') is None")
    result = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
