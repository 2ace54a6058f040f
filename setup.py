"""Build vsre_ros with pip on a machine that has only the ROS 2 Python wheels.

`pip install --no-build-isolation .` runs the package's CMakeLists.txt (the same one colcon
uses): rosidl generates the interface modules and libraries, CMake installs them with the
hand-written Python sources into a staging prefix, and this file packs that prefix into the
wheel. Python modules go to site-packages; libraries, share/vsre_ros (package.xml, launch,
config, interface definitions) and the ament index go under the environment's prefix, where the
ROS wheels' loader already looks (`<prefix>/lib` is on its LD_LIBRARY_PATH).

The CMake build directory (build/cmake) is kept between runs: an unchanged tree rebuilds in
seconds, and CMake re-configures by itself when CMakeLists.txt or an interface changes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from distutils.command.install_data import install_data
from pathlib import Path

from setuptools import Distribution, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
BUILD_DIR = ROOT / "build" / "cmake"
STAGING = ROOT / "build" / "cmake-install"


def _cmake_env() -> dict[str, str]:
    env = dict(os.environ)
    prefix = sys.prefix
    for var in ("AMENT_PREFIX_PATH", "CMAKE_PREFIX_PATH"):
        env[var] = os.pathsep.join(p for p in (prefix, env.get(var, "")) if p)
    env["PATH"] = os.pathsep.join((os.path.join(prefix, "bin"), env.get("PATH", "")))
    return env


def cmake_build_and_stage() -> Path:
    """Configure (once), build and install the CMake project into STAGING; return STAGING."""
    env = _cmake_env()
    cmake = shutil.which("cmake", path=env["PATH"])
    if cmake is None:
        raise SystemExit("vsre_ros: cmake not found; `pip install cmake ninja` first")
    if not (BUILD_DIR / "CMakeCache.txt").exists():
        generator = ["-G", "Ninja"] if shutil.which("ninja", path=env["PATH"]) else []
        subprocess.run(
            [
                cmake,
                "-S",
                str(ROOT),
                "-B",
                str(BUILD_DIR),
                *generator,
                f"-DCMAKE_INSTALL_PREFIX={STAGING}",
                f"-DPython3_EXECUTABLE={sys.executable}",
                "-DBUILD_TESTING=OFF",
                "-DCMAKE_BUILD_TYPE=Release",
            ],
            check=True,
            env=env,
        )
    jobs = str(os.cpu_count() or 2)
    subprocess.run([cmake, "--build", str(BUILD_DIR), "-j", jobs], check=True, env=env)
    if STAGING.exists():
        shutil.rmtree(STAGING)  # a file removed from the sources must not linger in the wheel
    subprocess.run([cmake, "--install", str(BUILD_DIR)], check=True, env=env)
    return STAGING


def _staged_package_dir(staging: Path) -> Path:
    found = sorted(staging.glob("lib/python*/site-packages/vsre_ros"))
    if not found:
        raise SystemExit(f"vsre_ros: CMake installed no Python package under {staging}")
    return found[0]


class CMakeBuildPy(build_py):
    """Build the Python package by running CMake and copying what it installed."""

    def run(self) -> None:
        staging = cmake_build_and_stage()
        target = Path(self.build_lib) / "vsre_ros"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(_staged_package_dir(staging), target)


class CMakeInstallData(install_data):
    """Install CMake's non-Python output (libraries, share/) under the environment prefix."""

    def run(self) -> None:
        files: dict[str, list[str]] = {}
        for path in sorted(STAGING.rglob("*")):
            rel = path.relative_to(STAGING)
            if path.is_dir() or rel.parts[:1] == ("lib",) and "site-packages" in rel.parts:
                continue
            files.setdefault(str(rel.parent), []).append(str(path))
        self.data_files = sorted(files.items())
        super().run()


class BinaryDistribution(Distribution):
    """The wheel carries compiled typesupport libraries, so it is not pure Python."""

    def has_ext_modules(self) -> bool:
        return True


setup(
    name="vsre_ros",
    version="0.1.0",
    description="Visual spatial reasoning expert (VSRE) for ROS 2",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=["vsre_ros"],
    # Placeholder so that install_data runs; CMakeInstallData replaces the list.
    data_files=[("share/vsre_ros", ["package.xml"])],
    distclass=BinaryDistribution,
    cmdclass={"build_py": CMakeBuildPy, "install_data": CMakeInstallData},
    entry_points={
        "console_scripts": [
            "vsre = vsre_ros.cli:main",
            "vsre_server = vsre_ros.ros.server:main",
            "vsre_sim_camera = vsre_ros.ros.sim_camera:main",
            "vsre_demo_client = vsre_ros.ros.demo:client_main",
        ],
    },
    zip_safe=False,
)
