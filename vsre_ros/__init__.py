"""vsre_ros: a visual spatial reasoning expert for ROS 2.

The installed package merges hand-written modules with the interface modules that rosidl
generates (`vsre_ros.msg`, `vsre_ros.srv`, `vsre_ros.action`). The repository's top-level
`training/` and `sim_data/` folders install as `vsre_ros.training` and `vsre_ros.sim_data`.

In a source checkout two things make the same imports work without reinstalling:
- `extend_path` adds the installed `vsre_ros` directory, where the generated interface modules
  live, behind this source directory;
- the repository root is put second on `__path__`, so `vsre_ros.training` and
  `vsre_ros.sim_data` resolve to the top-level source folders before any installed copy.
"""

from __future__ import annotations

import os
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isfile(os.path.join(_REPO_ROOT, "package.xml")) and os.path.isdir(
    os.path.join(_REPO_ROOT, "sim_data")
):
    __path__.insert(1, _REPO_ROOT)

__version__ = "0.1.0"
