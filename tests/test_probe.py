"""The attention probe against stock transformers: eager parity, unchanged outputs, gradient parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.video_utils import VideoMetadata

from swim.data.batch import Supervision
from swim.losses import LossConfig, attention_mask_loss
from swim.model.backbone import BackboneConfig, build_backbone
from swim.model.probe import AttentionProbe, ProbeRequest, probe_request, row_attention
from swim.model.tokenizer import QWEN_SPECIAL_IDS

VIDEO_PAD = QWEN_SPECIAL_IDS["<|video_pad|>"]
FAMILIES = ["qwen2_5_vl", "qwen2_vl", "qwen3_vl"]
# (frames, height, width in tokens, prompt): two videos of different grids and prompts of different lengths.
CLIPS = [
    (4, 2, 3, "Describe the red circle."),
    (2, 2, 2, "What is the blue square doing right now in this video?"),
]


def _inputs(processor, padding_side: str, clips=CLIPS) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    texts, videos, metadata = [], [], []
    px = processor.video_processor.patch_size * processor.video_processor.merge_size
    for frames, rows, cols, prompt in clips:
        height, width = rows * px, cols * px
        messages = [
            {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": prompt}]},
            {"role": "assistant", "content": "It moves to the left."},
        ]
        texts.append(processor.apply_chat_template(messages, tokenize=False))
        videos.append(rng.integers(0, 255, size=(frames, height, width, 3), dtype=np.uint8))
        metadata.append(VideoMetadata(total_num_frames=frames, fps=2.0, frames_indices=list(range(frames))))
    processor.tokenizer.padding_side = padding_side
    inputs = processor(
        text=texts,
        videos=videos,
        videos_kwargs={"video_metadata": metadata},
        padding=True,
        return_tensors="pt",
    )
    return dict(inputs)


def _supervision(inputs: dict[str, torch.Tensor], with_masks: bool = True, clips=CLIPS) -> Supervision:
    """Rows on the last real tokens of each sample (answer words, end of turn), one instance each."""
    ids, attention = inputs["input_ids"], inputs["attention_mask"]
    batch = ids.shape[0]
    visual_keys = [(ids[b] == VIDEO_PAD).nonzero().flatten() for b in range(batch)]
    grid = inputs["video_grid_thw"].clone()
    grid[:, 1:] //= 2
    last = torch.tensor([int(attention[b].nonzero()[-1]) for b in range(batch)])
    row_sample = torch.tensor([0, 0, 0, 1, 1])
    row_token = last[row_sample] - torch.tensor([0, 3, 6, 0, 2])
    generator = torch.Generator().manual_seed(1)
    cell_masks, cell_valid, pixel_masks = [], [], []
    for (t, h, w), (_, rows, cols, _) in zip(grid.tolist(), clips, strict=True):
        assert (h, w) == (rows, cols)
        pixel = (torch.rand(t, 28 * h, 28 * w, generator=generator) > 0.6).float()
        pixel_masks.append(pixel)
        cell_masks.append(torch.nn.functional.adaptive_avg_pool2d(pixel, (h, w)))
        cell_valid.append(torch.arange(t) % 2 == 0)
    return Supervision(
        row_sample=row_sample,
        row_query=row_token - 1,
        row_token=row_token,
        row_instance=row_sample.clone(),
        row_phrase=row_sample.clone(),
        visual_keys=visual_keys,
        grid=grid,
        instance_sample=torch.arange(batch),
        cell_masks=cell_masks if with_masks else [],
        cell_valid=cell_valid if with_masks else [],
        pixel_masks=pixel_masks if with_masks else None,
    )


@pytest.fixture(scope="module", params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def backbone(family):
    model, processor = build_backbone(BackboneConfig(family=family))
    return model.eval(), processor


@pytest.fixture(scope="module")
def eager_model(family):
    model, _ = build_backbone(BackboneConfig(family=family, attn_implementation="eager"))
    return model.eval()


def _expected_maps(attentions: tuple[torch.Tensor, ...], layer: int, request: ProbeRequest) -> torch.Tensor:
    weights = attentions[layer].float().mean(dim=1)
    rows = weights[request.row_sample[:, None], request.row_query[:, None], request.key_index]
    return rows * request.key_valid


@pytest.mark.parametrize("padding_side", ["right", "left", "none"])
def test_probe_matches_eager_attention_weights(backbone, eager_model, padding_side):
    """Right and left padding give SDPA a 4D boolean mask; equal lengths give it none (causal implied)."""
    model, processor = backbone
    clips = [CLIPS[0], CLIPS[0]] if padding_side == "none" else CLIPS
    inputs = _inputs(processor, "right" if padding_side == "none" else padding_side, clips)
    assert bool(inputs["attention_mask"].all()) == (padding_side == "none")
    supervision = _supervision(inputs, clips=clips)
    with torch.no_grad():
        reference = eager_model(**inputs, output_attentions=True)
    assert model.model.language_model.config._attn_implementation == "sdpa"
    probe = AttentionProbe(model, [0, 2, 3])
    try:
        for query in ("predicting", "token"):
            request = probe_request(supervision, query=query)
            offset = 1 if query == "predicting" else 0
            assert torch.equal(request.row_query, supervision.row_token - offset)
            with torch.no_grad(), probe.capture(request) as maps:
                model(**inputs)
            assert sorted(maps) == [0, 2, 3]
            for layer in (0, 2, 3):
                assert maps[layer].dtype == torch.float32
                assert maps[layer].shape == request.key_index.shape
                expected = _expected_maps(reference.attentions, layer, request)
                torch.testing.assert_close(maps[layer], expected, atol=1e-5, rtol=0)
                assert float(maps[layer].sum()) > 0
    finally:
        probe.remove()


def test_probe_keeps_heads_and_works_over_eager_kernel(backbone, eager_model):
    _, processor = backbone
    inputs = _inputs(processor, "right")
    request = probe_request(_supervision(inputs))
    with torch.no_grad():
        reference = eager_model(**inputs, output_attentions=True)
    probe = AttentionProbe(eager_model, [1], keep_heads=True)
    try:
        with torch.no_grad(), probe.capture(request) as maps:
            output = eager_model(**inputs)
    finally:
        probe.remove()
    weights = reference.attentions[1].float()
    rows = weights[request.row_sample, :, request.row_query]
    expected = rows.gather(-1, request.key_index[:, None, :].expand(-1, rows.shape[1], -1))
    expected = expected * request.key_valid[:, None, :]
    assert maps[1].shape == (request.num_rows, 4, request.key_index.shape[1])
    torch.testing.assert_close(maps[1], expected, atol=1e-5, rtol=0)
    assert torch.equal(output.logits, reference.logits)


def test_outputs_identical_without_probe_and_with_probe_disarmed_or_armed(backbone):
    model, processor = backbone
    inputs = _inputs(processor, "right")
    request = probe_request(_supervision(inputs))
    with torch.no_grad():
        plain = model(**inputs, output_hidden_states=True)
        probe = AttentionProbe(model, [1, 2, 3])
        try:
            assert probe.name in ALL_ATTENTION_FUNCTIONS and probe.name in ALL_MASK_ATTENTION_FUNCTIONS
            assert model.model.visual.config._attn_implementation == "sdpa"
            disarmed = model(**inputs, output_hidden_states=True)
            with probe.capture(request) as maps:
                armed = model(**inputs, output_hidden_states=True)
            assert sorted(maps) == [1, 2, 3]
        finally:
            probe.remove()
        removed = model(**inputs)
    assert model.model.language_model.config._attn_implementation == "sdpa"
    assert probe.name not in ALL_ATTENTION_FUNCTIONS and probe.name not in ALL_MASK_ATTENTION_FUNCTIONS
    for other in (disarmed, armed):
        assert torch.equal(other.logits, plain.logits)
        for mine, theirs in zip(other.hidden_states, plain.hidden_states, strict=True):
            assert torch.equal(mine, theirs)
    assert torch.equal(removed.logits, plain.logits)


def test_row_attention_reads_every_mask_format_the_kernels_receive():
    """``None`` (causal), a 2D padding mask (FlashAttention), 4D bool (SDPA) and 4D float (eager)."""
    generator = torch.Generator().manual_seed(0)
    batch, heads, kv_heads, length, dim = 2, 4, 2, 7, 8
    query = torch.randn(batch, heads, length, dim, generator=generator)
    key = torch.randn(batch, kv_heads, length, dim, generator=generator)
    padding = torch.ones(batch, length, dtype=torch.bool)
    padding[1, 5:] = False
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    allowed = causal[None, None] & padding[:, None, None, :]
    additive = torch.zeros(batch, 1, length, length).masked_fill(~allowed, torch.finfo(torch.float32).min)
    row_sample, row_query = torch.tensor([0, 1, 1, 0]), torch.tensor([6, 4, 2, 3])
    slot, max_rows = torch.tensor([0, 0, 1, 1]), 2

    expanded = key.repeat_interleave(heads // kv_heads, dim=1)
    scores = query @ expanded.transpose(-1, -2) * dim**-0.5
    reference = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    expected = reference[row_sample, :, row_query]
    for mask in (padding.long(), allowed, additive):
        probs = row_attention(query, key, mask, row_sample, row_query, slot, max_rows, dim**-0.5)
        assert probs.shape == (4, heads, length)
        torch.testing.assert_close(probs, expected, atol=1e-6, rtol=0)
    first = row_sample == 0
    probs = row_attention(
        query, key, None, row_sample[first], row_query[first], torch.tensor([0, 1]), 2, dim**-0.5
    )
    torch.testing.assert_close(probs, expected[first], atol=1e-6, rtol=0)


def _attention_grads(model, probe, inputs, supervision, cfg, *, checkpointing: bool, backward_inside: bool):
    model.zero_grad(set_to_none=True)
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.activation_checkpointing_disable()
    with probe.capture(probe_request(supervision)) as maps:
        model(**inputs, use_cache=False)
        result = attention_mask_loss(maps, supervision, cfg)
        if backward_inside:
            result.loss.backward()
    if not backward_inside:
        result.loss.backward()
    layers = model.model.language_model.layers
    grads = {}
    for index, layer in enumerate(layers):
        for name in ("q_proj", "k_proj"):
            grad = getattr(layer.self_attn, name).weight.grad
            grads[index, name] = None if grad is None else grad.clone()
    return result, grads


def test_mask_loss_gradients_match_with_and_without_gradient_checkpointing(family):
    model, processor = build_backbone(BackboneConfig(family=family))
    model.train()
    inputs = _inputs(processor, "right")
    supervision = _supervision(inputs)
    cfg = LossConfig(layers=[1, 2])
    probe = AttentionProbe(model, cfg.layers)
    try:
        plain, reference = _attention_grads(
            model, probe, inputs, supervision, cfg, checkpointing=False, backward_inside=False
        )
        assert model.model.language_model.layers[1].gradient_checkpointing is False
        runs = [
            _attention_grads(
                model, probe, inputs, supervision, cfg, checkpointing=True, backward_inside=inside
            )
            for inside in (False, True)
        ]
        assert model.model.language_model.layers[1].gradient_checkpointing is True
    finally:
        model.activation_checkpointing_disable()
        probe.remove()
    assert plain.num_pairs > 0 and torch.isfinite(plain.loss)
    for layer in (0, 1, 2):
        for name in ("q_proj", "k_proj"):
            assert reference[layer, name] is not None and float(reference[layer, name].abs().max()) > 0
    for name in ("q_proj", "k_proj"):
        grad = reference[3, name]
        assert grad is None or not bool(grad.any()), (
            "layers above the highest supervised layer get no gradient"
        )
    for result, grads in runs:
        assert torch.equal(result.loss, plain.loss)
        for key, grad in reference.items():
            if grad is None:
                assert grads[key] is None or not bool(grads[key].any())
            else:
                torch.testing.assert_close(grads[key], grad, atol=1e-7, rtol=1e-5)


def test_probe_computes_fp32_under_bf16_autocast(backbone):
    model, processor = backbone
    inputs = _inputs(processor, "right")
    request = probe_request(_supervision(inputs))
    probe = AttentionProbe(model, [2])
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), probe.capture(request) as maps:
            model(**inputs)
    finally:
        probe.remove()
    assert maps[2].dtype == torch.float32
    assert bool((maps[2] >= 0).all()) and float(maps[2].sum(dim=-1).max()) <= 1.0 + 1e-5


def test_probe_with_no_rows_gives_empty_connected_maps(backbone):
    model, processor = backbone
    inputs = _inputs(processor, "right")
    request = probe_request(Supervision.empty(2))
    assert request.key_index.shape == (0, 0)
    probe = AttentionProbe(model, [1, 3])
    try:
        with probe.capture(request) as maps:
            model(**inputs)
    finally:
        probe.remove()
    assert maps[1].shape == (0, 0) and maps[1].requires_grad
    result = attention_mask_loss(maps, Supervision.empty(2), LossConfig(layers=[1, 3]))
    assert result.num_pairs == 0 and float(result.loss.detach()) == 0.0
    result.loss.backward()


def test_probe_request_layout_and_errors(backbone):
    _, processor = backbone
    inputs = _inputs(processor, "right")
    supervision = _supervision(inputs)
    request = probe_request(supervision)
    sizes = [int(size) for size in supervision.grid.prod(dim=-1)]
    assert request.key_index.shape == (5, max(sizes))
    for row in range(5):
        sample = int(supervision.row_sample[row])
        count = int(request.key_valid[row].sum())
        assert count == sizes[sample]
        assert request.key_index[row, :count].tolist() == supervision.visual_keys[sample].tolist()
        assert bool((request.key_index[row, count:] == 0).all())
        assert bool((inputs["input_ids"][sample, request.key_index[row, :count]] == VIDEO_PAD).all())
    no_video = _supervision(inputs)
    no_video.visual_keys[1] = torch.zeros(0, dtype=torch.long)
    with pytest.raises(ValueError, match=r"rows \[3, 4\] belong to samples without a video"):
        probe_request(no_video)
    with pytest.raises(ValueError, match=r"loss\.query"):
        probe_request(supervision, query="previous")


def test_probe_validates_layers_nesting_and_reentrant_checkpointing(backbone):
    model, processor = backbone
    with pytest.raises(ValueError, match=r"0\.\.3.*out of range: \[4\]"):
        AttentionProbe(model, [1, 4])
    with pytest.raises(ValueError, match="distinct"):
        AttentionProbe(model, [1, 1])
    probe = AttentionProbe(model, [1])
    try:
        with pytest.raises(ValueError, match="already carries an attention probe"):
            AttentionProbe(model, [2])
        inputs = _inputs(processor, "right")
        request = probe_request(_supervision(inputs))
        with probe.capture(request), pytest.raises(RuntimeError, match="cannot nest"), probe.capture(request):
            pass
        beyond = ProbeRequest(
            request.row_sample, request.row_query + 1000, request.key_index, request.key_valid
        )
        with pytest.raises(ValueError, match=r"rows \[0, 1, 2, 3, 4\] lie outside"), probe.capture(beyond):
            model(**inputs)
        model.train()
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
        with pytest.raises(RuntimeError, match="reentrant"), probe.capture(request):
            pass
    finally:
        model.activation_checkpointing_disable()
        model.eval()
        probe.remove()
    with pytest.raises(RuntimeError, match="removed"), probe.capture(request):
        pass
