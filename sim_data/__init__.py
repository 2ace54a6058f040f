"""Simulated scenes with exact ground truth, spatial relation predicates and questions.

Installed as `vsre_ros.sim_data`; never imports rclpy. Modules:
- `catalog`: object categories (built from MuJoCo primitive parts) and named colours;
- `scene`: the `Scene` data model and the layout sampler;
- `render`: `Simulator`, the pooled-model MuJoCo renderer (RGB, depth, segmentation, K, pose);
- `relations`: VSR's relations by meta-category and the predicates that decide them;
- `questions`: items for VSR, Sparkle, SpatialVLM and MMRA-style tasks;
- `dataset`: the parallel generator and the dataset directory format;
- `splits`, `contact_sheet`, `cli` (`vsre generate`), `camera` (`SimCamera`).

`SimCamera` is imported lazily: importing this package does not start MuJoCo.
"""

from __future__ import annotations


def __getattr__(name: str):
    if name in ("SimCamera", "SimFrame", "restyle"):
        from . import camera

        return getattr(camera, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SimCamera", "SimFrame", "restyle"]
