"""Server parameters: per-camera lists, validation messages, the EngineConfig mapping."""

from __future__ import annotations

import pytest

from vsre_ros.ros.params import ServerParams


def test_per_camera_lists_expand_and_one_qos_applies_to_all():
    params = ServerParams(
        cameras=["/a", "/b"],
        camera_transports=["raw", "compressed"],
        depth_topics=["/a_depth", ""],
        camera_qos=["reliable"],
    )
    a, b = params.camera_specs()
    assert (a.topic, a.transport, a.qos, a.depth_topic, a.info_topic) == (
        "/a",
        "raw",
        "reliable",
        "/a_depth",
        "",
    )
    assert (b.transport, b.qos, b.depth_topic) == ("compressed", "reliable", "")


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"cameras": []}, "cameras is empty"),
        ({"cameras": ["/a", "/b"], "depth_topics": ["/d"]}, "depth_topics has 1 entries for 2"),
        ({"camera_transports": ["theora"]}, "unknown camera transport 'theora'"),
        ({"camera_qos": ["fast"]}, "unknown camera_qos 'fast'"),
        ({"queue_size": 0}, "queue_size must be >= 1"),
        ({"max_frame_age": -1.0}, "max_frame_age must be a finite number >= 0"),
        ({"stamp_tolerance": float("nan")}, "stamp_tolerance must be a finite number >= 0"),
        ({"max_options": 1}, "max_options must be >= 2"),
        ({"max_option_chars": 0}, "max_option_chars must be >= 1"),
        ({"intake_depth": -1}, "intake_depth must be >= 0"),
        ({"service_depth": 0}, "service_depth must be >= 1"),
        ({"max_goals": 0}, "max_goals must be >= 1"),
        ({"model": ""}, "model is empty"),
    ],
)
def test_bad_parameters_are_named(fields, match):
    with pytest.raises(ValueError, match=match):
        ServerParams(**fields).validate()


def test_engine_config_takes_the_model_side_parameters():
    config = ServerParams(
        device="cpu", threads=2, batch_size=4, max_question_chars=50
    ).engine_config()
    assert (config.device, config.threads, config.max_batch, config.max_question_chars) == (
        "cpu",
        2,
        4,
        50,
    )


def test_node_command_line_becomes_ros_args_in_order():
    import argparse

    from vsre_ros.ros.params import add_ros_cli_arguments, ros_cli_args

    parser = argparse.ArgumentParser()
    add_ros_cli_arguments(parser)
    args = parser.parse_args(
        ["--params-file", "a.yaml", "--ros-args", "-p", "queue_size:=3", "-r", "x:=y"]
    )
    assert ros_cli_args(args, model="/ckpt", lora="") == [
        "--ros-args",
        "--params-file",
        "a.yaml",
        "-p",
        "model:=/ckpt",
        "-p",
        "queue_size:=3",
        "-r",
        "x:=y",
    ]
    assert ros_cli_args(parser.parse_args([])) == ["--ros-args"]
