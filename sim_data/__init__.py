"""Simulated scenes with exact ground truth, spatial relation predicates and questions.

Installed as `vsre_ros.sim_data`; never imports rclpy.
"""
