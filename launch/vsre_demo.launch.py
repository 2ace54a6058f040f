"""The full demo: `ros2 launch vsre_ros vsre_demo.launch.py [preset:=vsre-tiny]`.

Sim camera, VSRE server and demo client, from `vsre_ros.ros.bringup.NODES` (those listing
"demo"), with config/<preset>.yaml: the same nodes and file `vsre demo` runs in one process.
"""

from vsre_ros.ros.bringup import make_launch_description


def generate_launch_description():
    return make_launch_description("demo")
