"""Helpers shared by the ROS tests (a plain module: conftest modules are not importable)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def model_server_params(prefix: str, model: str, **extra) -> dict:
    """Parameters of a server answering with the VSRE engine on its own names under `prefix`."""
    return {
        "engine_backend": "vsre",
        "model": model,
        "threads": 1,
        "service_name": f"{prefix}/ask",
        "query_topic": f"{prefix}/queries",
        "answer_topic": f"{prefix}/answers",
        "action_name": f"{prefix}/ask_batch",
        "cameras": [f"{prefix}/image"],
        "diagnostics_period": 0.0,
        **extra,
    }


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
