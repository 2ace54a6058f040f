"""Shared pytest setup: every test session gets its own DDS domain, limited to localhost."""

from __future__ import annotations

import os
import random

# Set before anything imports rclpy, so parallel test sessions on one machine never meet.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ["ROS_DOMAIN_ID"] = os.environ.get("VSRE_TEST_DOMAIN_ID") or str(random.randint(1, 101))
os.environ.setdefault("MUJOCO_GL", "egl")
