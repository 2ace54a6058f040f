"""Offline training for VSRE: datasets, expansion, two-stage tuning and evaluation.

Installed as `vsre_ros.training`; never imports rclpy.
"""
