"""Grounding: which part of the image each object phrase of a question names, as a 2D box.

Two kinds of head, each a small exported head of a `VSREModel` that runs after the answers,
outside the LM, with the same parts: `image_part` once per frame, `phrase_part` once per phrase
(the mean of the LM's input embeddings of its tokens), and `decode` per pair.
- `MaskHead` (the embedded model's): a small convolutional network reads the frame's pixels at
  128x128, joined by the model's grid of fused image tokens; each phrase conditions a light
  decoder that gives each pixel's probability of being its object. The mask's main pieces
  (`mask_box`) give the box, and the mask goes on to geometry.
- `GroundingHead` (the box head): reads the image tokens the model already computed (the fused
  grid and the SAM-branch object tokens) and the colours within each grid cell (`cell_colours`);
  every image token proposes a box and a score, and the answer is the proposals' average under
  the softmax of the scores. The training loop's `grounding` loss trains this kind.
`Grounder` keeps what a head computed per frame and per phrase, so a frame's questions share
one head call.

A head is saved beside the model's weights as `grounding.safetensors` (its format and sizes in
the file's metadata), so a model directory with or without it reads the same
`model.safetensors`; `VSREModel.from_pretrained` loads it when present
(`model.heads["grounding"]`). Heads are fitted on the simulator's masks on a frozen model
(`vsre grounding fit`), or, the box head, inside a training run (`training.losses.LOSSES`).

`object_phrases` finds the object phrases of a question ("the red cup", "the green side table").
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Hashable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from vsre_ros.core import geometry
from vsre_ros.core.answers import GroundedObject
from vsre_ros.core.tokenizer import VSR_RELATIONS

GROUNDING_FILE = "grounding.safetensors"
GROUNDING_FORMAT = "vsre-grounding/2"  # 2: `sub_cells` in the sizes
# Format 1 heads (before `sub_cells`) read 4x4 colours per cell, then of bilinear resizes: they
# load reading area means (vsre-tiny's first head: IoU >= 0.5 for 66.7% of 285 named objects
# against 67.7% with its own colours, docs/grounding.md).
FORMAT_1_SUB_CELLS = 4
SUB_CELLS = 4  # colours per grid cell side that a new head reads
COLOUR_OVERSAMPLE = 2  # colours read a camera frame at most this many pixels per colour block


def cell_colours(images: torch.Tensor, grid: tuple[int, int], sub: int) -> torch.Tensor:
    """RGB images [N, 3, H, W] in 0..1 -> [N, rows * cols, 3 * sub**2]: the mean colour of
    each grid cell's sub x sub blocks (area means; cells in token order)."""
    rows, cols = grid
    small = F.adaptive_avg_pool2d(images.float(), (rows * sub, cols * sub))
    n = small.shape[0]
    blocks = small.reshape(n, 3, rows, sub, cols, sub).permute(0, 2, 4, 1, 3, 5)
    return blocks.reshape(n, rows * cols, 3 * sub * sub)


def image_colours(images: Sequence[np.ndarray], grid: tuple[int, int], sub: int) -> torch.Tensor:
    """`cell_colours` of HxWx3 uint8 images (of any sizes). A frame larger than
    COLOUR_OVERSAMPLE pixels per block is read at every n-th pixel (a 640x480 frame's area
    means cost about 8 ms, its strided pixels' 0.1 ms)."""
    size = (grid[0] * sub * COLOUR_OVERSAMPLE, grid[1] * sub * COLOUR_OVERSAMPLE)
    return torch.cat([cell_colours(strided_pixels(im, size), grid, sub) for im in images])


def strided_pixels(image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """An HxWx3 uint8 frame as [1, 3, h, w] floats in 0..1, read at every n-th pixel so that
    it keeps at least `size` (rows, columns) where it has them. A new array, so a read-only
    frame (a message's buffer) is never shared."""
    h, w = image.shape[:2]
    sy, sx = max(1, h // size[0]), max(1, w // size[1])
    pixels = np.ascontiguousarray(image[::sy, ::sx], dtype=np.float32) / 255.0
    return torch.from_numpy(pixels).permute(2, 0, 1)[None]


def _save_head(head: nn.Module, directory: str | Path, meta: dict[str, str]) -> Path:
    """Write `head`'s weights (float32) with `meta` as `grounding.safetensors` in `directory`."""
    path = Path(directory) / GROUNDING_FILE
    state = {k: v.detach().float().contiguous().cpu() for k, v in head.state_dict().items()}
    save_file(state, str(path), metadata=meta)
    return path


def pixel_colours(model, pixel_values: dict[str, torch.Tensor], head) -> torch.Tensor:
    """`cell_colours` for `head` of a batch's images from the pixels an encoder of `model` was
    given (its normalisation undone; an encoder with its own processor steps cannot be read
    back)."""
    for name, enc in model.encoders.items():
        if enc.prep is None:
            pixels = (pixel_values[name].float() * enc.std + enc.mean).clamp(0, 1)
            return cell_colours(pixels, head.grid, head.sub_cells)
    raise ValueError("grounding needs an encoder without processor steps to read colours from")


class GroundingHead(nn.Module):
    """Phrase + image tokens -> a normalised box [x0, y0, x1, y1] (see the module docstring).

    `forward` is `decode(image_part(...), phrase_part(...))`: the image's part is computed once
    per frame and each phrase's once, whatever asks about them (`FrameGrounding`)."""

    def __init__(
        self,
        hidden: int,
        grid: tuple[int, int],
        object_tokens: int,
        width: int = 128,
        sub_cells: int = SUB_CELLS,
    ):
        super().__init__()
        self.hidden, self.grid, self.object_tokens, self.width, self.sub_cells = (
            int(hidden),
            (int(grid[0]), int(grid[1])),
            int(object_tokens),
            int(width),
            int(sub_cells),
        )
        n_tokens = self.grid[0] * self.grid[1] + self.object_tokens
        self.phrase = nn.Sequential(nn.Linear(hidden, width), nn.GELU(), nn.Linear(width, width))
        self.token = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, width))
        # Each grid cell's colours at sub_cells x sub_cells: finer than the tokens, so that a
        # colour word finds a small object within its cell (`cell_colours`).
        self.colour = nn.Sequential(
            nn.Linear(3 * self.sub_cells**2, width), nn.GELU(), nn.Linear(width, width)
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
            "sub_cells": self.sub_cells,
        }

    def colours(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """The `image_colours` this head reads, of HxWx3 uint8 images."""
        return image_colours(images, self.grid, self.sub_cells)

    frame_inputs = colours  # what `image_part` reads of a frame besides its tokens

    def forward(
        self, image_tokens: torch.Tensor, phrases: torch.Tensor, colours: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """image_tokens [N, T, hidden], phrase embeddings [N, hidden] and the image's
        `cell_colours` [N, cells, 3 * sub_cells**2] -> boxes [N, 4] (normalised x0, y0, x1, y1)
        and scores [N] (the largest token weight, in (0, 1])."""
        return self.decode(self.image_part(image_tokens, colours), self.phrase_part(phrases))

    def image_part(self, image_tokens: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
        """What the head reads of images: [N, T, width]."""
        return self.join(image_tokens, self.pixel_part(colours))

    def pixel_part(self, colours: torch.Tensor) -> torch.Tensor:
        """The part of `image_part` that reads the frame's colours alone, not its tokens."""
        return self.colour(colours.to(self.position.device, torch.float32))

    def join(self, image_tokens: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """`image_part` from the frame's tokens and its `pixel_part`."""
        t = self.token(image_tokens.float()) + self.position
        return t + F.pad(pixels, (0, 0, 0, self.object_tokens))

    def phrase_part(self, phrases: torch.Tensor) -> torch.Tensor:
        """What the head reads of phrase embeddings [P, hidden]: [P, width]."""
        return self.phrase(phrases.float())

    def decode(
        self, image: torch.Tensor, phrase: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Boxes [N, 4] and scores [N] of image parts [N or 1, T, width] and phrase parts
        [N, width]."""
        t, p = image, phrase[:, None]
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
        return _save_head(
            self, directory, {"format": GROUNDING_FORMAT, "sizes": json.dumps(self.sizes)}
        )


MASK_FORMAT = "vsre-grounding-mask/1"
MASK_SIDE = 128  # a frame is read at MASK_SIDE x MASK_SIDE; its masks come at half that
MASK_WIDTHS = (16, 32, 64, 96)  # channels at 1/2, 1/4, 1/8 and 1/16 of MASK_SIDE
MASK_THRESHOLD = 0.5  # a pixel is the phrase's object above this probability
MASK_KEEP = 0.25  # pieces of a mask kept beside its surest: this share of its mass or more,
MASK_GAP = 1 / 32  # and this share of the map's side or less away from it (`mask_box`)


def nearest(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """`F.interpolate(x, size)` (nearest), bit for bit; an exact 2x (the mask head's every
    step) as one strided copy, cheaper than interpolate's kernel on this head's small maps."""
    n, c, h, w = x.shape
    if tuple(size) == (h, w):
        return x
    if tuple(size) != (2 * h, 2 * w):
        return F.interpolate(x, tuple(size), mode="nearest")
    return x[:, :, :, None, :, None].expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.GELU()
    )


def frame_pixels(images: Sequence[np.ndarray], side: int) -> torch.Tensor:
    """HxWx3 uint8 images of any sizes -> [N, 3, side, side] in -0.5..0.5: area means of a
    larger frame (read at every n-th pixel down to twice `side`), bilinear for a smaller one."""
    out = []
    for im in images:
        t = strided_pixels(im, (2 * side, 2 * side))
        if t.shape[-2] >= side and t.shape[-1] >= side:
            t = F.adaptive_avg_pool2d(t, (side, side))
        else:
            t = F.interpolate(t, (side, side), mode="bilinear", align_corners=False)
        out.append(t - 0.5)
    return torch.cat(out)


class MaskHead(nn.Module):
    """Phrase + frame -> the phrase's object as a mask, and its box: a small convolutional
    network reads the frame's pixels at MASK_SIDE (an encoder to 1/16 of it, where the model's
    own grid of image tokens joins), and each phrase conditions a light decoder back to 1/2
    (FiLM at every scale) whose output is each pixel's probability of being the phrase's object.
    The box is what the mask's main piece spans (`boxes_of`).

    Where `GroundingHead` reads the 64x64 input through 8x8 tokens and a few colours per cell,
    this reads the frame at twice that and draws the object's outline: small objects and
    neighbours of one colour were that head's misses (docs/grounding.md). It has the same
    parts: `image_part` once per frame, `phrase_part` once per phrase, `decode` per pair."""

    kind = "mask"

    def __init__(
        self,
        hidden: int,
        grid: tuple[int, int],
        object_tokens: int,
        side: int = MASK_SIDE,
        widths: Sequence[int] = MASK_WIDTHS,
    ):
        super().__init__()
        self.hidden, self.grid, self.object_tokens, self.side = (
            int(hidden),
            (int(grid[0]), int(grid[1])),
            int(object_tokens),
            int(side),
        )
        self.widths = tuple(int(c) for c in widths)
        c1, c2, c3, c4 = self.widths
        self.enc = nn.ModuleList(
            [
                nn.Sequential(_conv(3, c1, 2), _conv(c1, c1)),
                nn.Sequential(_conv(c1, c2, 2), _conv(c2, c2)),
                nn.Sequential(_conv(c2, c3, 2), _conv(c3, c3)),
                _conv(c3, c4, 2),
            ]
        )
        self.tokens = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, c4))
        self.context = _conv(c4, c4)
        self.lateral = nn.ModuleList(
            [nn.Conv2d(c4, c3, 1), nn.Conv2d(c2, c2, 1), nn.Conv2d(c1, c1, 1)]
        )
        # Per phrase: a scale and shift of every channel at 1/8, 1/4 and 1/2 (FiLM).
        self.film = (c3, c2, c1)
        self.phrase = nn.Sequential(
            nn.Linear(hidden, 128), nn.GELU(), nn.Linear(128, 2 * sum(self.film))
        )
        self.up = nn.ModuleList([nn.Conv2d(c3, c2, 3, 1, 1), nn.Conv2d(c2, c1, 3, 1, 1)])
        self.out = nn.Conv2d(c1, 1, 1)
        self.fitted: dict = {}  # how it was fitted (`training.grounding`), saved with it

    @property
    def sizes(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "hidden": self.hidden,
            "grid": list(self.grid),
            "object_tokens": self.object_tokens,
            "side": self.side,
            "widths": list(self.widths),
        }

    @property
    def n_tokens(self) -> int:
        return self.grid[0] * self.grid[1] + self.object_tokens

    def frame_inputs(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """What `image_part` reads of HxWx3 uint8 frames besides their tokens: their pixels."""
        return frame_pixels(images, self.side)

    def image_part(self, image_tokens: torch.Tensor, pixels: torch.Tensor) -> tuple:
        """Frames' tokens [N, T, hidden] and `frame_inputs` -> their feature maps at 1/8, 1/4
        and 1/2 of MASK_SIDE."""
        return self.join(image_tokens, self.pixel_part(pixels))

    def pixel_part(self, pixels: torch.Tensor) -> tuple:
        """The part of `image_part` that reads the frame's pixels alone, not its tokens: the
        encoder's maps at 1/2, 1/4, 1/8 and 1/16 of MASK_SIDE."""
        x = pixels.to(self.out.weight)
        f2 = self.enc[0](x)
        f4 = self.enc[1](f2)
        f8 = self.enc[2](f4)
        return f2, f4, f8, self.enc[3](f8)

    def join(self, image_tokens: torch.Tensor, pixels: tuple) -> tuple:
        """`image_part` from the frames' tokens and their `pixel_part`."""
        f2, f4, f8, f16 = pixels
        rows, cols = self.grid
        grid = self.tokens(image_tokens[:, : rows * cols].to(f16.dtype))
        grid = grid.transpose(1, 2).reshape(len(f16), -1, rows, cols)
        f16 = self.context(f16 + nearest(grid, f16.shape[-2:]))
        g8 = f8 + nearest(self.lateral[0](f16), f8.shape[-2:])
        return g8, self.lateral[1](f4), self.lateral[2](f2)

    def phrase_part(self, phrases: torch.Tensor) -> torch.Tensor:
        """Phrase embeddings [P, hidden] -> their FiLM scales and shifts [P, 2 * channels]."""
        return self.phrase(phrases.to(self.out.weight.dtype))

    def logits(self, image: tuple, phrase: torch.Tensor) -> torch.Tensor:
        """[P, side/2, side/2] mask logits of image parts (of P frames, or one for all) and
        phrase parts [P, ...]."""
        films = torch.split(phrase, [2 * c for c in self.film], dim=1)
        h = None
        for k, (feature, film) in enumerate(zip(image, films, strict=True)):
            scale, shift = film[:, :, None, None].chunk(2, dim=1)
            x = feature if h is None else feature + nearest(h, feature.shape[-2:])
            h = F.gelu(x * (1 + scale) + shift)
            if k < len(self.up):
                h = F.gelu(self.up[k](h))
        return self.out(h)[:, 0]

    def forward(
        self, image_tokens: torch.Tensor, phrases: torch.Tensor, pixels: torch.Tensor
    ) -> torch.Tensor:
        """Mask logits [N, side/2, side/2] of N (frame, phrase) pairs."""
        return self.logits(self.image_part(image_tokens, pixels), self.phrase_part(phrases))

    def decode_masks(
        self, image: tuple, phrase: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[np.ndarray]]:
        """Boxes [P, 4], scores [P] and masks (side x side bool) of phrase parts [P, ...] in
        one frame's image part."""
        probs = torch.sigmoid(
            F.interpolate(
                self.logits(image, phrase)[:, None].float(),
                (self.side, self.side),
                mode="bilinear",
                align_corners=False,
            )[:, 0]
        )
        found = [mask_box(p) for p in probs.cpu().numpy()]
        boxes = torch.tensor([box for box, _, _ in found], dtype=torch.float32)
        scores = torch.tensor([score for _, score, _ in found], dtype=torch.float32)
        return boxes, scores, [mask for _, _, mask in found]

    def decode(self, image: tuple, phrase: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        boxes, scores, _ = self.decode_masks(image, phrase)
        return boxes, scores

    def save(self, directory: str | Path) -> Path:
        """Write `grounding.safetensors` into `directory`, with the sizes and `fitted` (how the
        head was fitted: the command and its seconds, read back by the model card)."""
        meta = {
            "format": MASK_FORMAT,
            "sizes": json.dumps(self.sizes),
            "fitted": json.dumps(self.fitted),
        }
        return _save_head(self, directory, meta)


def mask_box(prob: np.ndarray) -> tuple[tuple[float, float, float, float], float, np.ndarray]:
    """A probability map [H, W] -> the normalised box, score and mask of its object: the
    connected piece above MASK_THRESHOLD that holds the map's peak (the object the head is
    surest of), with the pieces within MASK_GAP of it whose mass is at least MASK_KEEP of its
    own (one object cut in two by a thin one in front of it stays whole; another object of its
    colour further off stays out of its box). With no pixel above the threshold, the piece
    above half the peak. The score is the peak probability."""
    from scipy import ndimage

    peak = float(prob.max())
    mask = prob > min(MASK_THRESHOLD, peak / 2)
    labels, n = ndimage.label(mask)
    if n > 1:
        mass = np.bincount(labels.ravel(), weights=prob.ravel(), minlength=n + 1)[1:]
        main = int(labels.flat[np.argmax(prob)]) or 1 + int(np.argmax(mass))  # holds the peak
        gap = max(1, round(MASK_GAP * max(prob.shape)))  # pixels between two pieces, at most
        ys, xs = ndimage.find_objects(labels)[main - 1]  # the main piece's box, widened
        around = labels[
            max(0, ys.start - gap - 1) : ys.stop + gap + 1,
            max(0, xs.start - gap - 1) : xs.stop + gap + 1,
        ]
        near = np.unique(around[ndimage.binary_dilation(around == main, iterations=gap + 1)])
        kept = [p for p in near if p and mass[p - 1] >= MASK_KEEP * mass[main - 1]]
        mask = np.isin(labels, kept)
    rows, cols = np.nonzero(mask)
    if not len(rows):  # a map of NaNs: nothing is found, and nothing is claimed
        return (0.0, 0.0, 1.0, 1.0), 0.0, mask
    h, w = prob.shape
    box = (cols.min() / w, rows.min() / h, (cols.max() + 1) / w, (rows.max() + 1) / h)
    return tuple(float(v) for v in box), peak, mask


class GroundingLoadError(ValueError):
    """A grounding file is corrupt or does not fit its model."""


def load_grounding(
    directory: str | Path, hidden: int, n_tokens: int
) -> GroundingHead | MaskHead | None:
    """The grounding head saved in a model directory (a `MaskHead` or a `GroundingHead`, as its
    file's format says), or None when it has none; a file that does not fit a model of
    `hidden` size and `n_tokens` image tokens raises GroundingLoadError saying why."""
    path = Path(directory) / GROUNDING_FILE
    if not path.is_file():
        return None
    formats = (MASK_FORMAT, GROUNDING_FORMAT, "vsre-grounding/1")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            if meta.get("format") not in formats:
                raise GroundingLoadError(
                    f"{path}: format {meta.get('format')!r}, expected one of {formats}"
                )
            sizes = json.loads(meta["sizes"])
            state = {key: handle.get_tensor(key) for key in handle.keys()}
        if meta["format"] == MASK_FORMAT:
            head: GroundingHead | MaskHead = MaskHead(
                sizes["hidden"],
                tuple(sizes["grid"]),
                sizes["object_tokens"],
                sizes["side"],
                sizes["widths"],
            )
            tokens = head.n_tokens
            head.fitted = json.loads(meta.get("fitted", "{}"))
        else:
            if meta["format"] == "vsre-grounding/1":
                sizes["sub_cells"] = FORMAT_1_SUB_CELLS
            head = GroundingHead(
                sizes["hidden"],
                tuple(sizes["grid"]),
                sizes["object_tokens"],
                sizes["width"],
                sizes["sub_cells"],
            )
            tokens = head.position.shape[0]
    except (SafetensorError, OSError, KeyError, TypeError, json.JSONDecodeError) as err:
        raise GroundingLoadError(f"{path} is corrupt: {err}") from None
    if head.hidden != hidden or tokens != n_tokens:
        raise GroundingLoadError(
            f"{path} was fitted for hidden {head.hidden} and {tokens} image "
            f"tokens; this model has hidden {hidden} and {n_tokens}"
        )
    try:
        head.load_state_dict(state)
    except RuntimeError as err:
        raise GroundingLoadError(f"{path} does not match its sizes: {err}") from None
    return head.eval()


def for_model(model, sub_cells: int = SUB_CELLS) -> GroundingHead:
    """A new (untrained) box head sized for a VSREModel's image tokens."""
    grid = _grid(model)
    return GroundingHead(model.hidden_size, grid, model.num_object_tokens, sub_cells=sub_cells)


def mask_head_for(model, widths: Sequence[int] = MASK_WIDTHS) -> MaskHead:
    """A new (untrained) `MaskHead` sized for a VSREModel's image tokens."""
    return MaskHead(model.hidden_size, _grid(model), model.num_object_tokens, widths=widths)


def _grid(model) -> tuple[int, int]:
    grids = _grids(model)
    if len(grids) != 1:
        raise ValueError(
            f"grounding reads one grid of image tokens; this model's fusion has {len(grids)}"
        )
    return grids[0]


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
    `obj` when given, then every other object phrase of its text (`text_phrases`), such as
    the reference of "which is closer to the chair: the cup or the box?" whose query names
    the two options. A text phrase that names a given one again ("red cup" beside the given
    "cup", or the reverse) is left out."""
    given = list(dict.fromkeys(p.strip() for p in (subj, obj) if p and p.strip()))
    found = text_phrases(question)
    if not given:
        return found
    known = [set(p.lower().split()) for p in given]
    rest = [p for p in found if not any(set(p.split()) <= k or k <= set(p.split()) for k in known)]
    return given + rest


def text_phrases(question: str) -> list[str]:
    """Every "the <words>" of a question (and the list it may start: "the red cup, blue box
    and green ball") that is not a relation word or a word about the image ("the left side
    of", "the camera"), in order, each once."""
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


class FrameGrounding:
    """One frame's grounding, each part computed once however many questions ask about it:
    the head's part of its pixels (`pixel_part`, before its tokens exist), its image part (once
    they do: `read`), each phrase's box (all new phrases in one head call) and mask (a
    `MaskHead`'s), and, with a depth image and K, its `geometry.FrameGeometry` and each
    phrase's 3D place."""

    def __init__(self, grounder: Grounder, image: np.ndarray):
        self.grounder = grounder
        head = grounder.head
        self.rgb = image  # its colours separate touching objects in depth (`locate`)
        self.pixels = head.pixel_part(head.frame_inputs([image]))
        self.image = None  # the head's image part, once the frame's tokens are read
        self.boxes: dict[str, tuple[tuple[float, float, float, float], float]] = {}
        self.masks: dict[str, np.ndarray] = {}  # a MaskHead's, at its side x side
        self.depth_key: Hashable = None
        self._depth: np.ndarray | None = None  # the depth array last given, and its digest
        self._depth_digest: Hashable = None
        self.geometry: geometry.FrameGeometry | None = None
        self.places: dict[str, geometry.Located | None] = {}

    def read(self, image_tokens: torch.Tensor) -> FrameGrounding:
        """Join the frame's tokens [T, hidden] to its pixels' part (once)."""
        if self.image is None:
            self.image = self.grounder.head.join(image_tokens[None], self.pixels)
        return self

    def objects(self, phrases: Sequence[str]) -> list[GroundedObject]:
        """Each phrase's box and score (new objects each call: answers may change theirs)."""
        new = [p for p in dict.fromkeys(phrases) if p not in self.boxes]
        if new:
            if self.image is None:
                raise RuntimeError("the frame's tokens are not read yet (`read`)")
            head, parts = self.grounder.head, self.grounder.phrase_parts(new)
            if isinstance(head, MaskHead):
                boxes, scores, masks = head.decode_masks(self.image, parts)
                self.masks.update(zip(new, masks, strict=True))
            else:
                boxes, scores = head.decode(self.image, parts)
            for phrase, box, score in zip(new, boxes.tolist(), scores.tolist(), strict=True):
                self.boxes[phrase] = (tuple(box), score)
        return [GroundedObject(p, *self.boxes[p]) for p in phrases]

    def locate(
        self, phrases: Sequence[str], depth: np.ndarray, k: geometry.Intrinsics
    ) -> list[geometry.Located | None]:
        """Each phrase's 3D place in this frame's `depth` seen by camera `k` (ValueError for an
        unusable depth image). The depth image is known by its digest; the array last given
        is taken unchanged (0.8 ms of hashing a 640x480 one, each time a batch asks)."""
        if depth is not self._depth:
            self._depth, self._depth_digest = depth, _digest(depth)
        key = (self._depth_digest, k)
        if key != self.depth_key:
            self.geometry = geometry.FrameGeometry(depth, k, self.rgb.shape[:2], self.rgb)
            self.depth_key, self.places = key, {}
        assert self.geometry is not None
        for obj in self.objects([p for p in phrases if p not in self.places]):
            self.places[obj.phrase] = self.geometry.locate(obj.box, self.masks.get(obj.phrase))
        return [self.places[p] for p in phrases]


class Grounder:
    """A model's grounding head with its caches: each phrase's part (`GroundingHead.phrase_part`)
    and each frame's `FrameGrounding`, by the engine's image key, in the LRU dicts given."""

    def __init__(self, model, head: GroundingHead, frames, phrases):
        self.model, self.head = model, head
        self._frames, self._phrases = frames, phrases

    def frame(
        self, key: Hashable, image_tokens: torch.Tensor | None, image: np.ndarray
    ) -> FrameGrounding:
        """The grounding of the frame `key` whose tokens [T, hidden] the model computed (None:
        not yet; its pixels' part and its geometry need none)."""
        found = self._frames.get_fresh(key)
        if found is None:
            found = FrameGrounding(self, image)
            self._frames.put(key, found)
        return found if image_tokens is None else found.read(image_tokens)

    def forget_frames(self) -> None:
        """Drop every frame's grounding; the phrases' parts stay (they are the model's)."""
        self._frames.clear()

    def has(self, key: Hashable, depth: np.ndarray | None = None, k: object = None) -> bool:
        """Whether the frame `key` is grounded (and, with a depth image and K, measured)."""
        found = self._frames.get_fresh(key)
        if found is None:
            return False
        return depth is None or k is None or found.geometry is not None

    def phrase_parts(self, phrases: Sequence[str]) -> torch.Tensor:
        """[P, width]: the head's part of each phrase (the new ones in one call)."""
        new = [p for p in dict.fromkeys(phrases) if self._phrases.get_fresh(p) is None]
        if new:
            parts = self.head.phrase_part(phrase_embeddings(self.model, new))
            for phrase, part in zip(new, parts, strict=True):
                self._phrases.put(phrase, part)
        return torch.stack([self._phrases.get_fresh(p) for p in phrases])


def _digest(array: np.ndarray) -> Hashable:
    arr = np.ascontiguousarray(array)
    return (arr.shape, arr.dtype.str, hashlib.sha256(arr.data).hexdigest())
