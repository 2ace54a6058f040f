"""The thin rclpy layer: parameters, message conversions, nodes and the in-process bring-up."""
