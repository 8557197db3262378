"""The wheel a user installs holds the configs, and the installed package finds them from any folder."""

import os
import subprocess
import sys
import zipfile

import pytest

from mrrcnn.config import CONFIG_DIR

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
