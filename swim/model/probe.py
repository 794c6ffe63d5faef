"""Attention probe on stock transformers: the model's own attention rows, captured where supervised.

The probe registers one attention function in transformers' ``AttentionInterface`` (and the base
kernel's mask function under the same name in ``AttentionMaskInterface``) and switches only the
language model to it. That function always calls the base kernel the model was built with (SDPA,
eager or FlashAttention-2), so every layer's output is exactly the stock one. While a
:meth:`AttentionProbe.capture` block is armed, in the supervised layers only, it also recomputes the
softmax of the requested query rows over their full causal row, in fp32, from the rotary-embedded
queries and keys the kernel received: the probabilities the model really uses.

The rows to capture are a :class:`~swim.model.probe_request.ProbeRequest` (built from a batch's
supervision by :func:`~swim.model.probe_request.probe_request`); the per-layer recomputation,
packed rows included, is :func:`~swim.model.row_attention.row_attention` (``O(R x L x heads)``
memory per supervised layer, never ``O(L^2)``). All three are importable from here.

The probe's own saved tensors bypass activation checkpointing (they are kept, not
recomputed), so a layer recomputed in backward under non-reentrant checkpointing neither needs nor
re-runs the probe, and the maps of the first forward keep their gradient.
"""

from __future__ import annotations

import copy
import functools
import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface
from transformers.utils.generic import is_flash_attention_requested

from swim.losses.fusion import upcast
from swim.model.families import family_of
from swim.model.probe_request import ProbeRequest, probe_request
from swim.model.row_attention import row_attention, row_slots, varlen_bounds

__all__ = ["PROBE_PREFIX", "AttentionProbe", "ProbeRequest", "probe_request", "row_attention"]

PROBE_PREFIX = "swim_probe"
_probe_ids = itertools.count()


@dataclass
class _Armed:
    """One capture: the request, its per-sample row slots, and the maps filled so far."""

    request: ProbeRequest
    row_slot: Tensor
    max_rows: int
    maps: dict[int, Tensor] = field(default_factory=dict)


class _KernelView:
    """An attention module as a flash kernel must see it: its config names the base implementation.

    Flash kernels load their implementation by the module's ``config._attn_implementation``; under
    the probe that name is the probe's, so they get this view with a config copy naming the base.
    """

    def __init__(self, module: nn.Module, config: object) -> None:
        self._module = module
        self.config = config

    def __getattr__(self, name: str) -> object:
        return getattr(self._module, name)


def _keep_saved_tensors() -> torch.autograd.graph.saved_tensors_hooks:
    """Saved-tensor hooks that store tensors as they are (not packed by activation checkpointing)."""
    return torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t)


class AttentionProbe:
    """Captures supervised attention rows of a VLM's language model through transformers' registry.

    Args:
        model: a ``...ForConditionalGeneration`` model of any family (``swim/model/families``); its
            language model's attention is switched to the probe.
        layers: decoder layers to capture (indices into the language model's layers), validated
            by the family's adapter.
        keep_heads: keep per-head maps ``(R, heads, K)`` instead of the head average ``(R, K)``.
    """

    def __init__(self, model: nn.Module, layers: Sequence[int], *, keep_heads: bool = False) -> None:
        family = family_of(model)
        language_model = family.language_model(model)
        wanted = family.check_probe_layers(model, layers)
        configs = {id(layer.self_attn.config): layer.self_attn.config for layer in language_model.layers}
        configs[id(language_model.config)] = language_model.config
        if len(configs) != 1:
            raise ValueError(
                "the language model's layers do not share one config; cannot switch their attention"
            )
        self._config = language_model.config
        base = self._config._attn_implementation or "eager"
        if base.startswith(PROBE_PREFIX) or f":{PROBE_PREFIX}" in base:
            raise ValueError(f"the model already carries an attention probe ({base!r}); remove it first")
        if base not in ALL_MASK_ATTENTION_FUNCTIONS:
            raise ValueError(
                f"attention implementation {base!r} has no mask function in AttentionMaskInterface"
            )

        self.layers = wanted
        self.keep_heads = keep_heads
        self.base_implementation = base
        self.name = f"{base}:{PROBE_PREFIX}{next(_probe_ids)}"
        self._decoder_layers = list(language_model.layers)
        self._base_kernel: Callable[..., tuple[Tensor, Tensor | None]] = (
            ALL_ATTENTION_FUNCTIONS.get_interface(base, family.eager_attention)
        )
        self._kernel_config: object | None = None
        if is_flash_attention_requested(requested_attention_implementation=base):
            self._kernel_config = copy.copy(self._config)
            self._kernel_config._attn_implementation_internal = base
        self._views: dict[int, _KernelView] = {}
        if self._kernel_config is not None:
            self._views = {
                index: _KernelView(layer.self_attn, self._kernel_config)
                for index, layer in enumerate(language_model.layers)
            }
        self._targets: dict[int, _Armed] = {}

        AttentionInterface.register(self.name, self._attention)
        AttentionMaskInterface.register(self.name, ALL_MASK_ATTENTION_FUNCTIONS[base])
        self._config._attn_implementation = self.name
        self._installed = True

    def _attention(
        self,
        module: nn.Module,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        attention_mask: Tensor | None,
        scaling: float | None = None,
        **kwargs: object,
    ) -> tuple[Tensor, Tensor | None]:
        """The registered attention function: the base kernel, plus the probe when armed here.

        Shapes: ``query (B, Hq, L, D)``, ``key`` and ``value (B, Hkv, L, D)``; returns the base
        kernel's ``(B, L, Hq, D)`` output and its weights.
        """
        kernel_module = module if self._kernel_config is None else self._views[module.layer_idx]
        output = self._base_kernel(
            kernel_module, query, key, value, attention_mask, scaling=scaling, **kwargs
        )
        armed = self._targets.get(module.layer_idx)
        if armed is not None and module.layer_idx not in armed.maps:
            armed.maps[module.layer_idx] = self._capture_layer(
                armed, query, key, attention_mask, module.scaling if scaling is None else scaling, kwargs
            )
        return output

    def _capture_layer(
        self,
        armed: _Armed,
        query: Tensor,
        key: Tensor,
        attention_mask: Tensor | None,
        scaling: float,
        kwargs: dict[str, object],
    ) -> Tensor:
        """The maps of one layer: ``(R, K)`` fp32, or ``(R, Hq, K)`` with ``keep_heads``; invalid keys 0."""
        request = armed.request
        num_rows, num_keys = request.key_index.shape
        if not armed.maps and num_rows:
            batch, length = query.shape[0], query.shape[2]
            outside = (request.row_query >= length) | (request.row_sample >= batch)
            if bool(outside.any()):
                rows = outside.nonzero().flatten().tolist()
                raise ValueError(
                    f"probe rows {rows} lie outside the batch ({batch} samples of {length} tokens)"
                )
        with torch.autocast(device_type=query.device.type, enabled=False), _keep_saved_tensors():
            if num_rows == 0:
                anchor = upcast(query.flatten()[:1]).sum() * 0.0
                shape = (0, query.shape[1], num_keys) if self.keep_heads else (0, num_keys)
                return anchor.expand(shape)
            probs = row_attention(
                query,
                key,
                attention_mask,
                request.row_sample,
                request.row_query,
                armed.row_slot,
                armed.max_rows,
                scaling,
                causal=request.causal,
                key_mask=request.key_mask,
                cu_seq_lens=varlen_bounds(attention_mask, kwargs) if request.causal else None,
                row_span=request.row_span,
            )
            if self.keep_heads:
                index = request.key_index[:, None, :].expand(num_rows, probs.shape[1], num_keys)
                return probs.gather(-1, index) * request.key_valid[:, None, :]
            return probs.mean(dim=1).gather(-1, request.key_index) * request.key_valid

    def _check_checkpointing(self) -> None:
        for index, layer in enumerate(self._decoder_layers):
            func = getattr(layer, "_gradient_checkpointing_func", None)
            if not (layer.training and getattr(layer, "gradient_checkpointing", False)):
                continue
            if isinstance(func, functools.partial) and func.keywords.get("use_reentrant") is True:
                raise RuntimeError(
                    f"decoder layer {index} uses reentrant gradient checkpointing, which runs the forward "
                    "without gradients and loses the probe's maps; enable it with "
                    "gradient_checkpointing_kwargs={'use_reentrant': False}"
                )

    @contextmanager
    def capture(self, request: ProbeRequest) -> Iterator[dict[int, Tensor]]:
        """Arm the probe for the forwards run inside the block.

        Yields:
            A dict filled during the forward: ``maps[layer]`` is ``(R, K)`` fp32 (``(R, heads, K)``
            with ``keep_heads``), the head-averaged probabilities of each requested row at its
            ``key_index`` keys (0 where ``key_valid`` is False). Differentiable. Each layer is
            captured once per block: a recomputation (gradient checkpointing) or a second forward
            leaves the first capture in place.
        """
        if not self._installed:
            raise RuntimeError("this attention probe was removed")
        if self._targets:
            raise RuntimeError("the attention probe is already armed; captures cannot nest")
        self._check_checkpointing()
        row_slot, max_rows = row_slots(request.row_sample)
        armed = _Armed(request=request, row_slot=row_slot, max_rows=max_rows)
        self._targets = dict.fromkeys(self.layers, armed)
        try:
            yield armed.maps
        finally:
            self._targets = {}

    def remove(self) -> None:
        """Restore the base attention implementation and unregister the probe's functions."""
        if not self._installed:
            return
        self._targets = {}
        self._config._attn_implementation = self.base_implementation
        AttentionInterface._global_mapping.pop(self.name, None)
        AttentionMaskInterface._global_mapping.pop(self.name, None)
        self._installed = False
