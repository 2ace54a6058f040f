"""The other process of the DDS interface test: serves every vsre_ros interface with echoes.

Run as `python dds_peer.py PREFIX` (names: PREFIX/queries, PREFIX/answers, PREFIX/ask,
PREFIX/ask_batch, so concurrent test sessions never share endpoints); prints READY once its
topic, service and action endpoints exist, and exits when stdin closes (so it never outlives
the test that started it).
"""

from __future__ import annotations

import sys
import threading
import time

import rclpy
from rclpy.action import ActionServer, CancelResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor
from rclpy.node import Node
from vsre_ros.action import AskSpatial as AskSpatialAction
from vsre_ros.msg import SpatialAnswer, SpatialQuery
from vsre_ros.srv import AskSpatial

SLOW_S = 0.3  # seconds per query whose question starts with "slow": room to cancel


def echo(query: SpatialQuery) -> SpatialAnswer:
    """An answer that proves every field crossed: the question and counts come back in it."""
    answer = SpatialAnswer(query_id=query.query_id, status=SpatialAnswer.OK)
    answer.answer = f"{query.question}|{query.subj}|{query.relation}|{query.obj}"
    answer.choice_index = len(query.options)
    answer.value = float(sum(img.width * img.height for img in query.images))
    answer.unit = query.camera
    answer.probability = float(query.max_age)
    answer.header.stamp = query.stamp
    answer.model_id = "echo"
    return answer


class Peer(Node):
    def __init__(self, prefix: str) -> None:
        super().__init__("vsre_dds_peer")
        group = ReentrantCallbackGroup()
        self.pub = self.create_publisher(SpatialAnswer, f"{prefix}/answers", 10)
        self.create_subscription(SpatialQuery, f"{prefix}/queries", self.on_query, 10)
        self.create_service(AskSpatial, f"{prefix}/ask", self.on_ask, callback_group=group)
        self.action = ActionServer(
            self,
            AskSpatialAction,
            f"{prefix}/ask_batch",
            self.execute,
            cancel_callback=lambda _goal: CancelResponse.ACCEPT,
            callback_group=group,
        )

    def on_query(self, query: SpatialQuery) -> None:
        self.pub.publish(echo(query))

    def on_ask(self, request, response):
        response.answer = echo(request.query)
        return response

    def execute(self, goal_handle):
        queries = goal_handle.request.queries
        answers = []
        for query in queries:
            if goal_handle.is_cancel_requested:
                break
            if query.question.startswith("slow"):
                time.sleep(SLOW_S)
            answers.append(echo(query))
            feedback = AskSpatialAction.Feedback(
                answer=answers[-1], answered=len(answers), total=len(queries)
            )
            goal_handle.publish_feedback(feedback)
        for query in queries[len(answers) :]:
            answers.append(SpatialAnswer(query_id=query.query_id, status=SpatialAnswer.CANCELLED))
        if goal_handle.is_cancel_requested:
            goal_handle.canceled()
        else:
            goal_handle.succeed()
        return AskSpatialAction.Result(answers=answers)


def main() -> None:
    rclpy.init()
    node = Peer(sys.argv[1])
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    print("READY", flush=True)
    sys.stdin.read()  # returns when the parent closes our stdin or dies
    executor.shutdown()
    node.destroy_node()
    rclpy.try_shutdown()


if __name__ == "__main__":
    main()
