"""The whole user flow on hub-layout checkpoints, on CPU, through the real entry points:
load -> `vsre ask` -> `vsre train` stage 1 -> stage 2 with LoRA -> save -> reload (identical
logits) -> Engine. The preset's arguments travel by a model file, `--preset-arg` and the
training config, each with paths relative to the file that names them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from hub_fixture import write_dataset
from PIL import Image

from vsre_ros.cli import main
from vsre_ros.core.answers import Query, Status
from vsre_ros.core.config import EngineConfig
from vsre_ros.core.engine import Engine
from vsre_ros.core.model import VSREModel

INPUTS = ("pixel_values", "input_ids", "attention_mask")


@pytest.fixture(scope="module")
def flow(hub, tmp_path_factory):
    """Files a user writes: a model file, a training config (relative paths) and data."""
    configs = hub["paper_paths"].parent
    model_file = configs / "vsre-paper-model.yaml"
    model_file.write_text(
        yaml.safe_dump({"preset": "vsre-paper", "paths_file": "vsre-paper-paths.yaml"})
    )
    root = tmp_path_factory.mktemp("flow")
    write_dataset(root / "data")
    stage = {"steps": 2, "batch_size": 2, "warmup_steps": 0}
    train = {
        "model": "vsre-paper",
        "model_overrides": {"paths_file": "vsre-paper-paths.yaml"},  # relative to this file
        "data": str(root / "data"),
        "output": str(root / "run"),
        "threads": 1,
        "log_every": 1,
        "eval_every": 0,
        "stages": [
            {"name": "stage1", "freeze": "stage1", "lr": 1e-3, **stage},
            {
                "name": "stage2",
                "freeze": "stage2",
                "lr": 1e-3,
                "aux_losses": {"verdict": 1.0},
                **stage,
            },
        ],
    }
    (configs / "train.yaml").write_text(yaml.safe_dump(train))
    frame = np.random.default_rng(1).integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    Image.fromarray(frame).save(root / "frame.png")
    return {"model_file": model_file, "train": configs / "train.yaml", "root": root}


def test_ask_takes_a_model_file_and_preset_args(hub, flow, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # relative paths must not depend on the working directory
    image = str(flow["root"] / "frame.png")
    question = "Is the cup left of the box?"
    assert main(["ask", "--model", str(flow["model_file"]), "--image", image, question]) == 0
    by_file = capsys.readouterr()
    assert by_file.out.split()[0] in ("yes", "no") and "p=" in by_file.out
    assert "projectors are RANDOM" in by_file.err
    args = ["ask", "--model", "vsre-paper", "--preset-arg", f"paths_file={hub['paper_paths']}"]
    assert main([*args, "--image", image, question]) == 0
    assert capsys.readouterr().out.split()[0] in ("yes", "no")
    bad = ["ask", "--model", "vsre-paper", "--preset-arg", "paths_file", "--image", image, "Q?"]
    assert main(bad) == 2
    assert "not KEY=VALUE" in capsys.readouterr().err


def test_train_two_stages_save_reload_and_serve(flow, capsys, tmp_path):
    code = main(["train", "--config", str(flow["train"]), "--no-progress"])
    out = capsys.readouterr()
    assert code == 0, out.err
    stage1, stage2 = (flow["root"] / "run" / s / "final" for s in ("stage1", "stage2"))
    assert (stage2 / "adapter" / "adapter_config.json").is_file()
    resolved = yaml.safe_load((flow["root"] / "run" / "stage1" / "train_config.yaml").read_text())
    assert resolved["model_overrides"]["paths_file"].startswith("/")  # resolved beside train.yaml

    tuned = VSREModel.from_pretrained(stage2).eval()
    first = VSREModel.from_pretrained(stage1)
    assert tuned.has_lora and tuned.dtype == torch.float16  # the frozen LM stays fp16
    moved = [
        not torch.equal(p, dict(first.fusion.named_parameters())[n])
        for n, p in tuned.fusion.named_parameters()
    ]
    assert any(moved)  # stage 2 started from stage 1 and trained the projectors further

    rng = np.random.default_rng(2)
    example = {"images": [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)],
               "question": "Is the cup left of the box?", "answer": "yes"}  # fmt: skip
    batch = tuned.build_batch([example])
    with torch.no_grad():
        before = tuned(**{k: batch[k] for k in INPUTS}).logits
    tuned.save_pretrained(tmp_path / "again")
    again = VSREModel.from_pretrained(tmp_path / "again").eval()
    with torch.no_grad():
        assert torch.equal(again(**{k: batch[k] for k in INPUTS}).logits, before)

    # A stage's output holds what it trained (projectors; LoRA beside), not the frozen base.
    trained = sum(p.numel() * 4 for p in tuned.fusion.parameters())
    assert (stage2 / "model.safetensors").stat().st_size < 1.1 * trained + 65536
    assert (
        main(["export", "--model", str(stage2), "--out", str(tmp_path / "merged"), "--merge"]) == 0
    )
    merged = VSREModel.from_pretrained(tmp_path / "merged").eval()
    assert not merged.has_lora and not merged.source_parts()  # standalone
    with torch.no_grad():
        got = merged(**{k: batch[k] for k in INPUTS}).logits
    assert torch.allclose(got.float(), before.float(), atol=2e-2)  # merged in fp16

    engine = Engine(str(stage2), EngineConfig(device="cpu", threads=1))
    (answer,) = engine.answer([Query("Is the cup left of the box?", example["images"])])
    assert answer.status == Status.OK and answer.verdict in (True, False)
