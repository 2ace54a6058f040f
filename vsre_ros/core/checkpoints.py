"""Checks on a local Hugging Face checkpoint directory before anything is loaded from it.

One place says what a usable directory is: a `config.json` whose `model_type` is one the
caller expects, and weights in safetensors (pickled `.bin` files can run code when loaded, so
they are refused with the command that converts them). The dtype policy's names live here too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Rewrites a pickled checkpoint as safetensors in its own directory (with its own class, so
# nothing is dropped); the tokenizer and processor files stay where they are.
CONVERT_COMMAND = (
    'python -c "import json, sys, transformers as t; '
    "a = json.load(open(sys.argv[1] + '/config.json'))['architectures'][0]; "
    "getattr(t, a).from_pretrained(sys.argv[1], dtype='auto', use_safetensors=False)"
    '.save_pretrained(sys.argv[1])" {src}'
)


def dtype_of(name: str) -> torch.dtype | None:
    """'auto' -> None (keep the checkpoint's own dtype); else the named torch dtype."""
    if name == "auto":
        return None
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; known: auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def read_checkpoint_config(path: str | Path, what: str, model_types: Sequence[str]) -> dict:
    """The config.json of checkpoint directory `path`, checked to hold a `what` checkpoint.

    Raises FileNotFoundError without a config.json and ValueError naming what was found and
    what was expected for another family's directory or weights that are not safetensors.
    """
    root = Path(path)
    config_file = root / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"{what} directory {root} has no config.json; expected a Hugging Face checkpoint "
            f"directory (model_type one of {list(model_types)})"
        )
    try:
        data: dict[str, Any] = json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_file} is not valid JSON: {err}") from None
    found = data.get("model_type")
    if found not in model_types:
        raise ValueError(
            f"{root} holds a {found!r} checkpoint (config.json model_type), but it was given "
            f"as {what}, which expects model_type {' or '.join(map(repr, model_types))}"
        )
    check_safetensors(root, what)
    return data


def check_safetensors(root: Path, what: str) -> None:
    """Refuse a directory whose weights exist only as pickles (`*.bin`, `*.pt`, `*.pth`)."""
    if any(root.glob("*.safetensors")):
        return
    pickles = sorted(p.name for ext in ("*.bin", "*.pt", "*.pth") for p in root.glob(ext))
    if pickles:
        raise ValueError(
            f"{what} checkpoint {root} has only pickled weights {pickles[:3]}; VSRE loads "
            "safetensors only (a pickle can run code when loaded). Convert it once, on a "
            "machine where you trust the file:\n  " + CONVERT_COMMAND.format(src=root)
        )
    raise ValueError(f"{what} checkpoint {root} has no *.safetensors weights")


def checkpoint_dtype(data: dict) -> torch.dtype | None:
    """The dtype a config.json records (`dtype`, or `torch_dtype` in older files)."""
    name = data.get("dtype") or data.get("torch_dtype")
    return DTYPES.get(str(name)) if name else None
