"""The VSRE model and its inference engine. ROS-free: nothing here imports rclpy."""
