"""The wheel a user installs holds the configs, the installed package finds them from any folder, and
pyproject.toml declares every package that mrrcnn imports, where the code importing it needs it."""

import ast
import functools
import importlib.metadata
import os
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from mrrcnn.config import CONFIG_DIR
from mrrcnn.engine import export

ROOT = CONFIG_DIR.parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    command = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        str(ROOT),
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (path,) = out.glob("mrrcnn-*.whl")
    return path


def test_wheel_holds_every_config_and_no_tests(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(str(p.relative_to(ROOT)) for p in CONFIG_DIR.rglob("*.yaml"))
    assert shipped and set(shipped) <= set(names)
    assert not [n for n in names if n.startswith(("tests/", "bench/"))]


def test_installed_wheel_resolves_configs_by_name_from_another_folder(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), str(wheel)],
        check=True,
        timeout=600,
    )
    code = (
        "import mrrcnn.config as c, mrrcnn.engine.demo as d; "
        f"assert str(c.CONFIG_DIR).startswith({str(target)!r}), c.CONFIG_DIR; "
        "c.load_config('coco/mrrcnn_r50_fpn'); "
        "assert all((d.CONFIGS / name).is_file() for _, _, name, _ in d.RUNS); print('ok')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        # The wheel first; the rest of PYTHONPATH for its dependencies where they live there.
        env={"PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.stdout.strip() == "ok", result.stderr[-3000:]


# What mrrcnn imports, against what pyproject.toml declares. The imports are read with ast from the source,
# so an import that only a rarely taken path runs (inside a function, a CUDA kernel module) counts too.

try:  # Python 3.11+; tomli (the test extra) before it
    import tomllib
except ImportError:
    import tomli as tomllib

PACKAGE = ROOT / "mrrcnn"
# Distributions a module of mrrcnn needs without importing them itself: torch.utils.tensorboard writes
# through tensorboard. (torch.onnx.export, an attribute, not an import, needs export._PACKAGES' packages.)
INDIRECT = {"torch.utils.tensorboard": {"tensorboard"}}
# Imported by mrrcnn but installed by another dependency where it applies: Triton comes with torch on
# Linux, and only mrrcnn/ops/triton_kernels.py (CUDA) imports it, which mrrcnn imports lazily, falling back
# to the gather without it.
PROVIDED_BY = {"triton": "torch"}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normalize(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)[0])


def declared() -> dict[str, set[str]]:
    """Distribution names by where pyproject.toml declares them: "core" (dependencies) or the extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {"core": project["dependencies"], **project["optional-dependencies"]}
    return {group: {_requirement_name(r) for r in requirements} for group, requirements in groups.items()}


@dataclass(frozen=True)
class Import:
    """One import statement of a third-party module: the dotted module, its file, and whether it runs
    when the file is imported (False: inside a function, so only when that function is called)."""

    module: str
    path: Path
    eager: bool


def _imports(tree: ast.AST, path: Path, eager: bool = True):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import):
            yield from (Import(alias.name, path, eager) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            yield Import(node.module, path, eager)
        inner = eager and not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        yield from _imports(node, path, inner)


def third_party_imports(root: Path, local: set[str] = frozenset()) -> list[Import]:
    """Every import in ``root/**/*.py`` of a module neither of the standard library, nor mrrcnn, nor one
    of ``local`` (top-level names that the folder's scripts import from beside them)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for imp in _imports(ast.parse(path.read_text(), str(path)), path.relative_to(ROOT)):
            top = imp.module.split(".")[0]
            if top not in sys.stdlib_module_names and top != "mrrcnn" and top not in local:
                found.append(imp)
    return found


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()  # reads every installed distribution: once


def distributions(module: str) -> set[str]:
    """The distributions that install ``module`` (its top-level name), plus those it needs indirectly."""
    top = module.split(".")[0]
    # A module not installed here (tomli on 3.11) is taken as its own distribution's name.
    names = {_normalize(d) for d in _packages_distributions().get(top, [top])}
    for prefix, needed in INDIRECT.items():
        if module == prefix or module.startswith(prefix + "."):
            names |= needed
    return names


def _undeclared(imports: list[Import], allowed: set[str]) -> list[str]:
    return sorted(
        f"{imp.path}: {imp.module} -> {dist}"
        for imp in imports
        for dist in distributions(imp.module) - allowed
        if PROVIDED_BY.get(dist) not in allowed
    )


def test_mrrcnn_imports_at_module_level_only_core_dependencies():
    groups = declared()
    eager = [imp for imp in third_party_imports(PACKAGE) if imp.eager and imp.path.stem != "triton_kernels"]
    assert not _undeclared(eager, groups["core"])


def test_mrrcnn_imports_in_functions_only_what_core_or_the_export_extra_declares():
    groups = declared()
    lazy = [imp for imp in third_party_imports(PACKAGE) if not imp.eager]
    assert not _undeclared(lazy, groups["core"] | groups["export"])
    # And what only the extra declares, mrrcnn imports only lazily: `import mrrcnn` works without it.
    extra_only = groups["export"] - groups["core"]
    eager = [imp for imp in third_party_imports(PACKAGE) if imp.eager]
    assert not [imp for imp in eager if distributions(imp.module) & extra_only]


def test_triton_is_torchs_and_mrrcnn_imports_its_kernels_lazily():
    requires = importlib.metadata.requires("torch") or []
    assert any(_requirement_name(r) == "triton" for r in requires)
    for path in PACKAGE.rglob("*.py"):
        for node in _toplevel_statements(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = {node.module or ""} | {f"{node.module or ''}.{a.name}" for a in node.names}
                assert not [n for n in names if n.endswith("triton_kernels")], path


def _toplevel_statements(tree: ast.AST):
    for node in ast.iter_child_nodes(tree):
        yield node
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from _toplevel_statements(node)


def test_the_export_extra_has_what_each_format_needs_and_the_test_extra_all_of_it():
    groups = declared()
    needed = {_normalize(p) for packages in export._PACKAGES.values() for p in packages}
    assert needed | {"onnxruntime"} <= groups["export"] <= groups["test"]


def test_the_tests_and_bench_import_only_what_their_extras_declare():
    groups = declared()
    local = {p.stem for p in (ROOT / "bench").rglob("*.py")} | {"reproduction", "tests"}
    assert not _undeclared(third_party_imports(ROOT / "tests", local), groups["core"] | groups["test"])
    assert not _undeclared(third_party_imports(ROOT / "bench", local), groups["core"] | groups["bench"])
    # The tests run bench/reproduction's code: what it imports, the test extra has too.
    reproduction = third_party_imports(ROOT / "bench" / "reproduction", local)
    assert not _undeclared(reproduction, groups["core"] | groups["test"])


def install_messages() -> list[tuple[Path, str]]:
    """Every string literal (f-strings by their literal parts) in mrrcnn/ that tells the user to pip install."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        # An f-string's literal parts are read with it, not alone.
        parts = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
        for node in ast.walk(tree):
            if id(node) in parts:
                continue
            if isinstance(node, ast.JoinedStr):
                text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
            else:
                continue
            if "pip install" in text:
                found.append((path.relative_to(ROOT), text))
    return found


def test_every_install_message_names_an_extra_that_declares_the_package_it_says_is_missing():
    groups = declared()
    messages = install_messages()
    assert len(messages) >= 2  # export's two: grep "pip install" mrrcnn/
    for path, text in messages:
        # "... needs [the] PACKAGE [package]: pip install 'mrrcnn[EXTRA]'"; {} is export._PACKAGES' package.
        match = re.search(r"needs (?:the )?(\S+?)(?: package)?: pip install '(\w+)\[(\w+)\]'$", text)
        assert match, f"{path}: {text!r} does not say what to install as 'mrrcnn[extra]'"
        package, project, extra = match.groups()
        assert project == "mrrcnn" and extra in groups, f"{path}: {text!r}"
        missing = (
            {_normalize(p) for ps in export._PACKAGES.values() for p in ps}
            if package == "{}"
            else {_normalize(package)}
        )
        assert missing <= groups[extra], f"{path}: {text!r}"


def test_print_what_mrrcnn_imports_and_where_it_is_declared(capsys):
    """Not a check: the table (pytest -s shows it), module -> distribution -> where declared."""
    groups = declared()
    needs = {
        (imp.module.split(".")[0], dist)
        for imp in third_party_imports(PACKAGE)
        for dist in distributions(imp.module) - set().union(*INDIRECT.values())
    }
    needs |= {(module, dist) for module, dists in INDIRECT.items() for dist in dists}
    needs |= {("torch.onnx.export", _normalize(p)) for ps in export._PACKAGES.values() for p in ps}
    rows = []
    for module, dist in sorted(needs):
        where = ", ".join(g for g, names in groups.items() if dist in names)
        rows.append(f"{module:<24} {dist:<18} {where or f'none: comes with {PROVIDED_BY[dist]}'}")
    print("\n".join(rows))
    assert rows
