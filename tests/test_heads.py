"""The training-free baseline of the demo ablation: the best attention heads of a model."""

from __future__ import annotations

import torch
from module_fixtures import make_batch, tiny_module

from swim.eval.heads import best_heads, head_mass_in_mask, heads_grounding, heads_map
from swim.losses import pair_groups
from swim.losses.mask_loss import mass_in_mask
from swim.model.probe import AttentionProbe, probe_request


def test_best_heads_and_their_map_by_hand():
    scores = torch.tensor([[0.1, 0.7], [0.5, 0.2], [0.9, 0.0]])
    assert best_heads(scores, 3) == [(2, 0), (0, 1), (1, 0)]
    maps = torch.zeros(3, 2, 1, 4)
    maps[2, 0, 0] = torch.tensor([0.2, 0.2, 0.0, 9.0])
    maps[0, 1, 0] = torch.tensor([0.1, 0.3, 0.0, 9.0])
    valid = torch.tensor([[True, True, True, False]])
    expected = torch.tensor([[0.375, 0.625, 0.0, 0.0]])
    torch.testing.assert_close(heads_map(maps, [(2, 0), (0, 1)], valid), expected)


def test_head_scores_are_each_heads_mass_in_mask_on_a_tiny_model():
    module = tiny_module()
    batch = make_batch(module.processor)
    scores = head_mass_in_mask(module, [batch], "predicting")
    num_layers = len(module.model.model.language_model.layers)
    heads = module.model.config.text_config.num_attention_heads
    assert scores.shape == (num_layers, heads)
    probe = AttentionProbe(module.model, [2], keep_heads=True)
    with torch.no_grad(), probe.capture(probe_request(batch.supervision, query="predicting")) as maps:
        module.model.model(**batch.model_inputs(), use_cache=False)
    probe.remove()
    (group,) = pair_groups(batch.supervision)
    expected = mass_in_mask(group.gather(maps[2].transpose(0, 1)), group.cell_masks).mean(dim=-1)
    torch.testing.assert_close(scores[2], expected)
    metrics = heads_grounding(module, [batch], best_heads(scores, 3), "predicting")
    assert 0.0 <= metrics["pointing_game"] <= 1.0 and metrics["num_pairs"] == group.num_pairs
