"""``task=visualize`` and ``task=predict``: heatmaps of the tagged words' attention over the frames.

``visualize`` builds chosen benchmark or validation samples as for training, captures the fused
attention of each tagged phrase (the mean over the phrase's supervised rows), and draws one PNG per
(sample, phrase): the frames with the ground-truth outline, then one heatmap row per model, so two
checkpoints (e.g. before and after SWIM training) appear side by side. ``predict`` answers one
prompt about one video and, on request, draws its tagged words' attention (no ground truth).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from swim.data.collate import collate
from swim.data.media import load_video_clip
from swim.data.sample import DataConfig, SampleBuilder
from swim.data.schema import Record
from swim.eval.attention import capture_maps, phrase_maps, prompt_rows
from swim.eval.generate import Prompt, clean_prompt, generate
from swim.eval.heatmaps import HeatmapRow, heatmap_figure, save_figure
from swim.eval.loading import LoadedModel
from swim.model.probe import AttentionProbe, probe_request

log = logging.getLogger(__name__)


@dataclass
class PhraseMap:
    """One tagged phrase of a sample, as a model attends to it.

    Attributes:
        phrase: the tagged words.
        cells: ``(T, h, w)`` the fused map, mean over the phrase's rows.
        masks: ``(T, H, W)`` the phrase's instance's ground truth per temporal cell.
        valid: ``(T,)`` bool, cells with ground truth.
    """

    phrase: str
    cells: torch.Tensor
    masks: torch.Tensor
    valid: torch.Tensor


def select_records(
    records: Sequence[Record], builder: SampleBuilder, ids: Sequence[str] | None, count: int
) -> list[Record]:
    """The records named by ``ids`` (all must exist), else the first ``count`` with supervised rows.

    Raises:
        KeyError: an id that is not among ``records``.
    """
    if ids:
        by_id = {str(record.id): record for record in records}
        missing = [i for i in ids if str(i) not in by_id]
        if missing:
            raise KeyError(f"task.ids {missing} are not in the evaluated sources")
        return [by_id[str(i)] for i in ids]
    chosen = []
    for record in records:
        if len(chosen) == count:
            break
        if record.video is not None and record.annotation and len(builder.build(record).rows):
            chosen.append(record)
    return chosen


def phrase_maps_of(
    loaded: LoadedModel, records: Sequence[Record], builder: SampleBuilder, layers: Sequence[int], fusion: str
) -> dict[str, list[PhraseMap]]:
    """Per record id, the fused map of each tagged phrase with supervised rows (one sample at a time)."""
    probe = AttentionProbe(loaded.model, layers)
    out: dict[str, list[PhraseMap]] = {}
    try:
        for record in records:
            sample = builder.build(record)
            batch = collate([sample], loaded.processor.tokenizer.pad_token_id)
            supervision = batch.supervision
            request = probe_request(supervision)
            fused = capture_maps(loaded.model, probe, batch.model_inputs(), request, fusion=fusion).fused
            grid = supervision.grid[0].tolist()
            cells = phrase_maps(fused, supervision.row_phrase, grid)
            entries = []
            for phrase, phrase_cells in enumerate(cells):
                instance = int(supervision.row_instance[supervision.row_phrase == phrase][0])
                masks = supervision.pixel_masks[instance] if supervision.pixel_masks else None
                if masks is None:
                    raise ValueError("visualize needs pixel masks: data.pixel_masks must be true")
                valid = supervision.cell_valid[instance]
                entries.append(PhraseMap(sample.phrases[phrase], phrase_cells, masks, valid))
            out[str(record.id)] = entries
    finally:
        probe.remove()
    return out


def draw_samples(
    records: Sequence[Record],
    builder: SampleBuilder,
    models: Sequence[tuple[str, dict[str, list[PhraseMap]]]],
    out_dir: Path,
    prefix: str,
) -> list[Path]:
    """One PNG per (record, phrase): frames with the ground-truth outline, then each model's heatmap."""
    paths = []
    for record in records:
        visual = builder.load_visual(record)
        if visual.frames is None:
            continue
        first = models[0][1][str(record.id)]
        for phrase, reference in enumerate(first):
            masks = [
                (reference.masks[k // 2] > 0.5).numpy() if bool(reference.valid[k // 2]) else None
                for k in range(visual.frames.shape[0])
            ]
            rows = [HeatmapRow(label, maps[str(record.id)][phrase].cells) for label, maps in models]
            figure = heatmap_figure(
                visual.frames,
                masks,
                rows,
                title=f"{prefix} {record.id}: <{reference.phrase}>",
                frame_labels=[f"frame {i}" for i in visual.frame_indices],
            )
            paths.append(save_figure(figure, out_dir, f"{prefix}_{record.id}_{phrase}_{reference.phrase}"))
    return paths


def predict(
    loaded: LoadedModel,
    video: str,
    prompt: str,
    data: DataConfig,
    *,
    max_new_tokens: int,
    heatmaps: str | None,
    layers: Sequence[int],
    fusion: str,
    query: str,
) -> dict[str, object]:
    """Answer ``prompt`` (``<ins>`` tags allowed) about ``video``; with ``heatmaps`` a folder, draw
    each tagged phrase's attention there (a row for the fused map, then one per layer).

    Raises:
        SampleError: the video cannot be read (``input.video``).
        ValueError: ``heatmaps`` is set but the prompt has no tag.
    """
    clip = load_video_clip(video, data, file="input.video", index=0, factor=loaded.spec.token_px)
    answer = generate(
        loaded.model,
        loaded.processor,
        [Prompt("input", clean_prompt(prompt), clip)],
        max_new_tokens=max_new_tokens,
        system_prompt=data.system_prompt,
    )[0]
    result: dict[str, object] = {"video": video, "prompt": prompt, "answer": answer, "heatmaps": []}
    if heatmaps is None:
        return result
    rows = prompt_rows(loaded.processor, prompt, clip, system_prompt=data.system_prompt, query=query)
    probe = AttentionProbe(loaded.model, layers)
    try:
        captured = capture_maps(loaded.model, probe, rows.inputs, rows.request, fusion=fusion)
    finally:
        probe.remove()
    fused = phrase_maps(captured.fused, rows.row_phrase, rows.grid)
    per_layer = {k: phrase_maps(v, rows.row_phrase, rows.grid) for k, v in captured.layers.items()}
    paths = []
    for phrase, text in enumerate(rows.phrases):
        figure_rows = [HeatmapRow("fused", fused[phrase])]
        figure_rows += [HeatmapRow(f"layer {k}", maps[phrase]) for k, maps in per_layer.items()]
        figure = heatmap_figure(
            clip.frames,
            [None] * clip.frames.shape[0],
            figure_rows,
            title=f"{Path(video).name}: <{text}>",
            frame_labels=[f"frame {i}" for i in clip.frame_indices],
        )
        paths.append(str(save_figure(figure, heatmaps, f"phrase{phrase}_{text}")))
    result["heatmaps"] = paths
    return result
