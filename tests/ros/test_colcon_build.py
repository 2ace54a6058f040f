"""`colcon build` of this package in a fresh workspace, then its messages used from install/.

The workspace lives in a temporary directory outside the source tree (CMake refuses a venv or a
build inside the tree it builds). The environment is the one the tests run in: the ROS 2 wheels
in this venv stand in for a ROS installation (AMENT_PREFIX_PATH points at the venv).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vsre_ros.ros.bringup import NODES

ROOT = Path(__file__).resolve().parents[2]
# What CMakeLists.txt reads or installs; anything else (tests, build/, .git) stays out.
PACKAGE_PARTS = [
    "CMakeLists.txt",
    "package.xml",
    "msg",
    "srv",
    "action",
    "launch",
    "config",
    "vsre_ros",
    "training",
    "sim_data",
]
BUILD_TIMEOUT_S = 300


def _colcon_env() -> dict[str, str]:
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join((bin_dir, env.get("PATH", "")))
    for var in ("AMENT_PREFIX_PATH", "CMAKE_PREFIX_PATH"):
        env[var] = os.pathsep.join(p for p in (sys.prefix, env.get(var, "")) if p)
    env.pop("PYTHONPATH", None)
    # colcon's default make flags add "-l<cores>" (no new job while the load is above the core
    # count), which builds serially on a shared CI box; explicit MAKEFLAGS replace them.
    env["MAKEFLAGS"] = f"-j{os.cpu_count() or 2}"
    return env


@pytest.mark.slow
def test_colcon_builds_the_package_and_install_space_imports(tmp_path):
    colcon = shutil.which("colcon", path=str(Path(sys.executable).parent))
    assert colcon, "colcon is not installed in this venv (pip install -r requirements.txt)"
    src = tmp_path / "ws" / "src" / "vsre_ros"
    src.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for part in PACKAGE_PARTS:
        path = ROOT / part
        if path.is_dir():
            shutil.copytree(path, src / part, ignore=ignore)
        else:
            shutil.copy2(path, src / part)
    build = subprocess.run(
        [
            colcon,
            "build",
            "--packages-select",
            "vsre_ros",
            "--event-handlers",
            "console_direct-",
            "--cmake-args",
            f"-DPython3_EXECUTABLE={sys.executable}",
            "-DBUILD_TESTING=OFF",
        ],
        cwd=tmp_path / "ws",
        env=_colcon_env(),
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    log = build.stdout + build.stderr
    assert build.returncode == 0, f"colcon build failed:\n{log[-4000:]}"

    install = tmp_path / "ws" / "install" / "vsre_ros"
    site = next(install.glob("lib/python*/site-packages"))
    assert (install / "share" / "vsre_ros" / "package.xml").is_file()
    console_scripts = dict(re.findall(r'"(\w+) = ([\w.]+:\w+)"', (ROOT / "setup.py").read_text()))
    for spec in NODES:  # `ros2 run vsre_ros <executable>` runs the same entry point as pip's
        exe = install / "lib" / "vsre_ros" / spec.executable
        assert exe.is_file() and os.access(exe, os.X_OK), f"{exe} not installed"
        module, _, func = console_scripts[spec.executable].partition(":")
        assert f"from {module} import {func}" in exe.read_text()
    probe = (
        "import vsre_ros.msg, vsre_ros.srv, vsre_ros.action\n"
        "from rclpy.serialization import serialize_message, deserialize_message\n"
        "q = vsre_ros.msg.SpatialQuery(query_id='x', question='Is it left?')\n"
        "back = deserialize_message(serialize_message(q), vsre_ros.msg.SpatialQuery)\n"
        "assert back.question == 'Is it left?'\n"
        "assert vsre_ros.srv.AskSpatial.Request().query.question == ''\n"
        "assert vsre_ros.action.AskSpatial.Feedback().total == 0\n"
        "maps = open('/proc/self/maps').read()\n"
        "print(vsre_ros.msg.__file__)\n"
        "print('install typesupport loaded:', '" + str(install) + "' in maps)\n"
    )
    env = _colcon_env()
    env["PYTHONPATH"] = str(site)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        p for p in (str(install / "lib"), env.get("LD_LIBRARY_PATH", "")) if p
    )
    run = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    first, second = run.stdout.splitlines()[:2]
    assert first.startswith(str(site)), f"imported {first}, not the install space"
    assert second.endswith("True"), "serialisation did not use the install space's libraries"
