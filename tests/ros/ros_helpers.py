"""Helpers shared by the ROS tests (a plain module: conftest modules are not importable)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def overrides(values: dict):
    """rclpy Parameter overrides from a plain dict (lists become string arrays)."""
    from rclpy.parameter import Parameter

    out = []
    for name, value in values.items():
        if isinstance(value, list):
            out.append(Parameter(name, Parameter.Type.STRING_ARRAY, value))
        else:
            out.append(Parameter(name, value=value))
    return out
