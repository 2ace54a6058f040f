"""Pieces of the embedded default model's recipe: training-only targets and the curriculum.

- `targets`: dense per-patch targets from the simulator's masks, depth and scene files, word
  spans of the objects named in a question, and the attention targets of the two binding hops;
- `curriculum`: the stage list and the training loop that adds those losses to the answer loss.

Nothing here is used at inference: the shipped model sees only images and questions.
"""
