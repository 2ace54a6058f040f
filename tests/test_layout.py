"""The package's shape: ROS-free cores, namespaced sub-packages, consistent metadata."""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROS_FREE = ["vsre_ros/core", "training", "sim_data"]


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant):
                names.add(str(node.args[0].value))
    return names


@pytest.mark.parametrize("folder", ROS_FREE)
def test_ros_free_folders_never_import_rclpy(folder):
    offenders = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        bad = {m for m in _imported_modules(path) if m.split(".")[0] in ("rclpy", "launch_ros")}
        if bad:
            offenders.append(f"{path.relative_to(ROOT)}: {sorted(bad)}")
    assert not offenders, "ROS-free code imports ROS:\n" + "\n".join(offenders)


def test_import_scan_sees_rclpy(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import numpy\nfrom rclpy.node import Node\n")
    assert "rclpy.node" in _imported_modules(probe)


def test_top_level_folders_are_vsre_ros_subpackages():
    import vsre_ros.sim_data
    import vsre_ros.training

    assert Path(vsre_ros.training.__file__).parent == ROOT / "training"
    assert Path(vsre_ros.sim_data.__file__).parent == ROOT / "sim_data"


def test_generated_interfaces_import_beside_source_package():
    from vsre_ros.action import AskSpatial as AskSpatialAction
    from vsre_ros.msg import SpatialAnswer, SpatialQuery
    from vsre_ros.srv import AskSpatial

    assert SpatialAnswer.OVERLOADED != SpatialAnswer.OK
    assert SpatialQuery.KIND_NUMBER == 2
    assert AskSpatial.Request().query.question == ""
    assert AskSpatialAction.Goal().queries == []


def test_every_interface_file_is_generated_and_documented():
    cmake = (ROOT / "CMakeLists.txt").read_text()
    for folder in ("msg", "srv", "action"):
        for path in sorted((ROOT / folder).glob("*.*")):
            assert f'"{folder}/{path.name}"' in cmake, f"{path.name} missing from CMakeLists"
            for line in path.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#") and line != "---":
                    assert "#" in line, f"{path.name}: field without a comment: {line!r}"


def test_package_xml_is_format_3_ament_cmake_with_interface_dependencies():
    root = ET.parse(ROOT / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.findtext("name") == "vsre_ros"
    assert root.find("export").findtext("build_type") == "ament_cmake"
    deps = {e.text for e in root if e.tag.endswith("depend")}
    cmake = (ROOT / "CMakeLists.txt").read_text()
    interface_deps = re.search(r"DEPENDENCIES ([\w ]+)", cmake).group(1).split()
    assert set(interface_deps) <= deps
    assert {"rclpy", "rosidl_default_runtime", "ament_cmake_python"} <= deps


def test_version_agrees_everywhere():
    import vsre_ros

    xml_version = ET.parse(ROOT / "package.xml").getroot().findtext("version")
    setup_version = re.search(r'version="([^"]+)"', (ROOT / "setup.py").read_text()).group(1)
    assert vsre_ros.__version__ == xml_version == setup_version
