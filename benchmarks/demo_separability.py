"""What the tiny model's frozen visual tokens tell about the demo's objects: colour, yes; shape, no.

The demo's referring phrases name a target by colour and shape (``swim.data.demo.sample``). The
attention loss can only teach the language model to find the target if the visual tokens carry the
attribute that tells it from its distractors. This script renders ``--scenes`` demo scenes, takes
the first temporal cell (frames 0-1) of each scene whose frame is a multiple of 28 px, runs the
tiny model's frozen, random-init vision tower and merger on it (``conf/model/tiny.yaml``, the
weights every demo run starts from and never changes), and keeps each token covered at least half
by one object on both frames, labelled with that object's colour and shape. A linear probe
(softmax regression on standardised features, AdamW, 70/30 split of the tokens) is fitted for each
attribute from two inputs: the visual tokens and, as a reference, the token's mean RGB.
Reported: held-out accuracy next to the majority class's share of the held-out tokens.

    .venv/bin/python benchmarks/demo_separability.py --scenes 300
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table
from torch import Tensor

from swim.data.demo.sample import sample_scene
from swim.data.demo.spec import COLOURS, SHAPES
from swim.model.backbone import BackboneConfig, build_backbone
from swim.model.structured import to_dataclass

TOKEN_PX = 28
MIN_COVER = 0.5
TINY = "conf/model/tiny.yaml"


def labelled_tokens(scenes: int, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Visual tokens of object-covered cells and their labels.

    Returns:
        ``(N, D)`` visual tokens, ``(N, 3)`` mean RGB in [0, 1], ``(N,)`` colour index into
        :data:`COLOURS`, ``(N,)`` shape index into :data:`SHAPES`.
    """
    backbone = OmegaConf.load(TINY).backbone
    model, processor = build_backbone(to_dataclass(BackboneConfig, backbone, "model.backbone"))
    model.eval()
    tokens, rgb, colour, shape = [], [], [], []
    for i in range(scenes):
        rendered = sample_scene(f"probe_{i}", seed + i)
        spec = rendered.spec
        if spec.height % TOKEN_PX or spec.width % TOKEN_PX:
            continue
        frames = rendered.frames[:2]
        inputs = processor.video_processor(videos=[list(frames)], return_tensors="pt")
        with torch.no_grad():
            features = model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
        embedded = torch.cat(list(features.pooler_output))
        h, w = spec.height // TOKEN_PX, spec.width // TOKEN_PX
        for row in range(h):
            for col in range(w):
                rows = slice(TOKEN_PX * row, TOKEN_PX * (row + 1))
                cols = slice(TOKEN_PX * col, TOKEN_PX * (col + 1))
                window = np.s_[:, :2, rows, cols]
                cover = rendered.visible[window].mean(axis=(2, 3)).min(axis=1)
                k = int(cover.argmax())
                if cover[k] < MIN_COVER:
                    continue
                obj = spec.objects[k]
                tokens.append(embedded[row * w + col])
                pixels = frames[:, window[2], window[3]].reshape(-1, 3).mean(axis=0) / 255
                rgb.append(torch.as_tensor(pixels, dtype=torch.float32))
                colour.append(list(COLOURS).index(obj.colour))
                shape.append(SHAPES.index(obj.shape))
    return torch.stack(tokens), torch.stack(rgb), torch.tensor(colour), torch.tensor(shape)


def probe_accuracy(features: Tensor, labels: Tensor, classes: int, steps: int = 1500) -> tuple[float, float]:
    """Held-out accuracy of a linear probe and the majority class's held-out share.

    Args:
        features: ``(N, D)``.
        labels: ``(N,)`` long in ``[0, classes)``.
    """
    features = (features - features.mean(dim=0)) / (features.std(dim=0) + 1e-6)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    cut = int(0.7 * len(labels))
    train, test = order[:cut], order[cut:]
    probe = torch.nn.Linear(features.shape[1], classes)
    optimiser = torch.optim.AdamW(probe.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(steps):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(probe(features[train]), labels[train]).backward()
        optimiser.step()
    with torch.no_grad():
        accuracy = (probe(features[test]).argmax(dim=1) == labels[test]).float().mean().item()
    majority = (labels[test] == labels[train].mode().values).float().mean().item()
    return accuracy, majority


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scenes", type=int, default=300, help="scenes drawn (those off the 28 px grid are skipped)"
    )
    parser.add_argument("--seed", type=int, default=1000, help="seed of the first scene")
    args = parser.parse_args()
    torch.manual_seed(0)
    tokens, rgb, colour, shape = labelled_tokens(args.scenes, args.seed)
    table = Table(title=f"Linear probes on {len(colour)} object tokens of {args.scenes} drawn scenes")
    for column in ("attribute", "input", "held-out accuracy", "majority class"):
        table.add_column(column)
    for attribute, labels, classes in (("colour", colour, len(COLOURS)), ("shape", shape, len(SHAPES))):
        for name, features in (("visual tokens", tokens), ("mean RGB", rgb)):
            accuracy, majority = probe_accuracy(features, labels, classes)
            table.add_row(attribute, name, f"{accuracy:.3f}", f"{majority:.3f}")
    Console().print(table)


if __name__ == "__main__":
    main()
