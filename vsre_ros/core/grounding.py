"""Grounding: which part of the image each object phrase of a question names, as a 2D box.

`GroundingHead` is a small exported head of a `VSREModel`. It reads the image tokens the model
already computed for a frame (the fused grid and the SAM-branch object tokens, `encode_images`),
the colours within each grid cell (`cell_colours`) and a phrase's embedding (the mean of the
LM's input embeddings of its tokens), and gives a box: every image token proposes a box for the
phrase and a score, and the answer is the proposals' average under the softmax of the scores.
Grid tokens propose boxes around their own cell, the object tokens anywhere; each token's
proposal also sees a summary of what the phrase matched in the whole image. It runs after the
answer, once per object phrase, outside the LM.

It is saved beside the model's weights as `grounding.safetensors` (with its sizes in the file's
metadata), so a model directory with or without it reads the same `model.safetensors`;
`VSREModel.from_pretrained` loads it when present (`model.heads["grounding"]`). It is trained
on the simulator's masks either inside a training run (the `grounding` loss of
`training.losses.LOSSES`) or afterwards on a frozen model (`vsre grounding fit`).

`object_phrases` finds the object phrases of a question ("the red cup", "the green side table").
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from vsre_ros.core.answers import GroundedObject
from vsre_ros.core.tokenizer import VSR_RELATIONS

GROUNDING_FILE = "grounding.safetensors"
GROUNDING_FORMAT = "vsre-grounding/1"
SUB_CELLS = 4  # colours per grid cell side that the head reads


def cell_colours(images: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """RGB images [N, 3, H, W] in 0..1 -> [N, rows * cols, 3 * SUB_CELLS**2]: the mean colours of
    each grid cell's SUB_CELLS x SUB_CELLS blocks (cells in token order)."""
    rows, cols, sub = grid[0], grid[1], SUB_CELLS
    small = F.interpolate(
        images.float(), size=(rows * sub, cols * sub), mode="bilinear", antialias=True
    )
    n = small.shape[0]
    blocks = small.reshape(n, 3, rows, sub, cols, sub).permute(0, 2, 4, 1, 3, 5)
    return blocks.reshape(n, rows * cols, 3 * sub * sub)


def image_colours(images: Sequence[np.ndarray], grid: tuple[int, int]) -> torch.Tensor:
    """`cell_colours` of HxWx3 uint8 images (of any sizes)."""
    return torch.cat(
        [
            cell_colours(
                torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None] / 255.0, grid
            )
            for im in images
        ]
    )


def pixel_colours(model, pixel_values: dict[str, torch.Tensor], grid) -> torch.Tensor:
    """`cell_colours` of a batch's images from the pixels an encoder of `model` was given
    (its normalisation undone; an encoder with its own processor steps cannot be read back)."""
    for name, enc in model.encoders.items():
        if enc.prep is None:
            return cell_colours(
                (pixel_values[name].float() * enc.std + enc.mean).clamp(0, 1), grid
            )
    raise ValueError("grounding needs an encoder without processor steps to read colours from")


class GroundingHead(nn.Module):
    """Phrase + image tokens -> a normalised box [x0, y0, x1, y1] (see the module docstring)."""

    def __init__(self, hidden: int, grid: tuple[int, int], object_tokens: int, width: int = 128):
        super().__init__()
        self.hidden, self.grid, self.object_tokens, self.width = (
            int(hidden),
            (int(grid[0]), int(grid[1])),
            int(object_tokens),
            int(width),
        )
        n_tokens = self.grid[0] * self.grid[1] + self.object_tokens
        self.phrase = nn.Sequential(nn.Linear(hidden, width), nn.GELU(), nn.Linear(width, width))
        self.token = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, width))
        # Each grid cell's colours at SUB_CELLS x SUB_CELLS: finer than the tokens, so that a
        # colour word finds a small object within its cell (`cell_colours`).
        self.colour = nn.Sequential(
            nn.Linear(3 * SUB_CELLS * SUB_CELLS, width), nn.GELU(), nn.Linear(width, width)
        )
        self.position = nn.Parameter(torch.zeros(n_tokens, width))
        self.mix = nn.Sequential(nn.GELU(), nn.Linear(width, width), nn.GELU())
        # A first look: every token's share of a pooled summary, fed back to each token, so a
        # proposal knows what the phrase matched elsewhere in the image.
        self.pool = nn.Linear(width, 1)
        self.context = nn.Linear(width, width)
        self.out = nn.Linear(width, 5)  # score, centre offset (2), size (2)
        rows, cols = self.grid
        ys, xs = torch.meshgrid(
            (torch.arange(rows) + 0.5) / rows, (torch.arange(cols) + 0.5) / cols, indexing="ij"
        )
        anchors = torch.stack([xs.flatten(), ys.flatten()], 1)
        anchors = torch.cat([anchors, torch.full((self.object_tokens, 2), 0.5)])
        reach = torch.cat(
            [torch.full((rows * cols, 1), 2.0 / max(rows, cols)), torch.ones(object_tokens, 1)]
        )
        self.register_buffer("anchors", anchors, persistent=False)
        self.register_buffer("reach", reach * 0.5, persistent=False)

    @property
    def sizes(self) -> dict[str, object]:
        return {
            "hidden": self.hidden,
            "grid": list(self.grid),
            "object_tokens": self.object_tokens,
            "width": self.width,
        }

    def forward(
        self, image_tokens: torch.Tensor, phrases: torch.Tensor, colours: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_tokens [N, T, hidden], phrase embeddings [N, hidden] and the image's
        `cell_colours` [N, cells, 3 * SUB_CELLS**2] -> boxes [N, 4] (normalised x0, y0, x1, y1)
        and scores [N] (the largest token weight, in (0, 1])."""
        t = self.token(image_tokens.float()) + self.position
        t = t + F.pad(self.colour(colours.float()), (0, 0, 0, self.object_tokens))
        p = self.phrase(phrases.float())[:, None]
        h = self.mix(t * p + t + p)
        summary = (self.pool(h).softmax(1) * h).sum(1, keepdim=True)
        out = self.out(h + F.gelu(self.context(summary) * h))  # [N, T, 5]
        weights = out[..., 0].softmax(-1)
        centre = self.anchors + self.reach * torch.tanh(out[..., 1:3])
        size = torch.sigmoid(out[..., 3:5])
        boxes = torch.cat([centre - size / 2, centre + size / 2], -1)
        box = (weights[..., None] * boxes).sum(1).clamp(0.0, 1.0)
        return box, weights.max(-1).values

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / GROUNDING_FILE
        state = {k: v.detach().float().contiguous().cpu() for k, v in self.state_dict().items()}
        meta = {"format": GROUNDING_FORMAT, "sizes": json.dumps(self.sizes)}
        save_file(state, str(path), metadata=meta)
        return path


class GroundingLoadError(ValueError):
    """A grounding file is corrupt or does not fit its model."""


def load_grounding(directory: str | Path, hidden: int, n_tokens: int) -> GroundingHead | None:
    """The grounding head saved in a model directory, or None when it has none; a file that
    does not fit a model of `hidden` size and `n_tokens` image tokens raises
    GroundingLoadError saying why."""
    path = Path(directory) / GROUNDING_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            if meta.get("format") != GROUNDING_FORMAT:
                raise GroundingLoadError(
                    f"{path}: format {meta.get('format')!r}, expected {GROUNDING_FORMAT!r}"
                )
            sizes = json.loads(meta["sizes"])
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as err:
        raise GroundingLoadError(f"{path} is corrupt: {err}") from None
    head = GroundingHead(sizes["hidden"], tuple(sizes["grid"]), sizes["object_tokens"])
    if head.hidden != hidden or head.position.shape[0] != n_tokens:
        raise GroundingLoadError(
            f"{path} was fitted for hidden {head.hidden} and {head.position.shape[0]} image "
            f"tokens; this model has hidden {hidden} and {n_tokens}"
        )
    try:
        head.load_state_dict(state)
    except RuntimeError as err:
        raise GroundingLoadError(f"{path} does not match its sizes: {err}") from None
    return head.eval()


def for_model(model) -> GroundingHead:
    """A new (untrained) head sized for a VSREModel's image tokens."""
    grids = _grids(model)
    if len(grids) != 1:
        raise ValueError(
            f"grounding reads one grid of image tokens; this model's fusion has {len(grids)}"
        )
    return GroundingHead(model.hidden_size, grids[0], model.num_object_tokens)


def _grids(model) -> list[tuple[int, int]]:
    fusion = model.fusion
    if hasattr(fusion, "grids"):  # sequence fusion: one block per encoder
        return [tuple(fusion.grids[name]) for name in model.encoders]
    return [tuple(fusion.grid)]


def phrase_ids(model, phrase: str) -> list[int]:
    """The token ids of an object phrase as it reads inside a question (after "the ")."""
    return list(model.tokenizer.encode(" " + phrase.strip(), add_special_tokens=False))


def phrase_embeddings(model, phrases: Sequence[str]) -> torch.Tensor:
    """[P, hidden]: the mean of each phrase's token embeddings in the model's LM."""
    table = model.lm.get_input_embeddings()
    rows = []
    for phrase in phrases:
        ids = torch.tensor(phrase_ids(model, phrase) or [model.pad_token_id], device=model.device)
        rows.append(table(ids).float().mean(0))
    return torch.stack(rows)


def box_loss(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """L1 plus generalised-IoU loss of normalised boxes [N, 4] (the fit and the registry's
    `grounding` term train with this)."""
    return F.l1_loss(pred, truth) * 4 + (1 - giou(pred, truth)).mean()


def giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Generalised IoU of paired boxes [N, 4] (x0, y0, x1, y1)."""
    inter_lo = torch.maximum(a[:, :2], b[:, :2])
    inter_hi = torch.minimum(a[:, 2:], b[:, 2:])
    inter = (inter_hi - inter_lo).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    union = area_a + area_b - inter
    iou = inter / union.clamp(min=1e-9)
    hull = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-9)


def iou(a, b) -> float:
    """IoU of two boxes [x0, y0, x1, y1]."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# -- object phrases in a question -----------------------------------------------------------

# Relation words that contain "the" and are not objects ("at the left side of").
_RELATION_THE = re.compile(
    r"\b(?:at|on|to|in) the (?:left |right )?(?:side|edge|back|middle|front|top|bottom)\b"
)
# Words that end an object phrase or, right after "the", are no object at all: function words,
# words about the image and the answer, and every word of a relation name ("side" is not one:
# "side table" is an object; `_RELATION_THE` takes "at the left side of" out first).
_STOP = frozenset(
    """a an the is are was were be of from and or but to in on at by with than as that this
    it its which what where how far apart left right above below behind top bottom center
    centre near close closer nearer farther further not no yes true false correct incorrect
    image picture photo scene camera view shown statement first case whole caption following
    claim report reference operator sentence appear appears look looks seem seems stand
    stands sit sits lie lies located placed positioned situated do does has have could would
    should second third one two other each order route path shortest robot options option
    answer metres meters metre meter wide tall high big bigger taller wider distance between
    relative up down starts start must visit visits once gives being containing""".split()
) | (frozenset(VSR_RELATIONS.replace(",", " ").split()) - {"side"})
_WORD = re.compile(r"[a-z]+")
MAX_PHRASE_WORDS = 3  # "green side table": a colour and a two-word category
_LIST = frozenset({",", "and", "or"})  # "visits the red cup, blue box and green ball"


def object_phrases(question: str, subj: str = "", obj: str = "") -> list[str]:
    """The object phrases a question names, in order, each once: its structured `subj` and
    `obj` when given, else every "the <words>" of the question (and the list it may start:
    "the red cup, blue box and green ball") that is not a relation word or a word about the
    image ("the left side of", "the camera")."""
    given = [p.strip() for p in (subj, obj) if p and p.strip()]
    if given:
        return list(dict.fromkeys(given))
    text = _RELATION_THE.sub(" ; ", (question or "").lower())
    out: list[str] = []
    for match in re.finditer(r"\bthe\s+", text):
        words: list[str] = []
        for token in re.findall(r"[a-z]+|[^a-z\s]", text[match.end() :]):
            if _WORD.fullmatch(token) and token not in _STOP and len(words) < MAX_PHRASE_WORDS:
                words.append(token)
                continue
            if words and token in _LIST:  # a list of objects goes on after the first
                out.append(" ".join(words))
                words = []
                continue
            break
        if words:
            out.append(" ".join(words))
    return list(dict.fromkeys(out))


def ground(
    model,
    head: GroundingHead,
    image_tokens: torch.Tensor,
    image: np.ndarray,
    phrases: Sequence[str],
) -> list[GroundedObject]:
    """Boxes for `phrases` in one image (HxWx3 uint8) whose tokens [T, hidden] the model
    computed."""
    if not phrases:
        return []
    with torch.inference_mode():
        emb = phrase_embeddings(model, phrases)
        n = len(phrases)
        tokens = image_tokens.to(emb.device)[None].expand(n, -1, -1)
        colours = image_colours([image], head.grid).to(emb.device).expand(n, -1, -1)
        boxes, scores = head(tokens, emb, colours)
    boxes_np, scores_np = boxes.cpu().numpy(), scores.cpu().numpy()
    return [
        GroundedObject(p, tuple(float(v) for v in b), float(s))
        for p, b, s in zip(phrases, boxes_np, scores_np, strict=True)
    ]
