"""The VSRE server alone: `ros2 launch vsre_ros vsre_server.launch.py [preset:=vsre-tiny]`.

Nodes come from `vsre_ros.ros.bringup.NODES` (those listing "server"); parameters from
config/<preset>.yaml, or `params_file:=/path/to.yaml`. The server configures and activates
itself; run `vsre_server --no-activate` under a lifecycle manager instead.
"""

from vsre_ros.ros.bringup import make_launch_description


def generate_launch_description():
    return make_launch_description("server")
