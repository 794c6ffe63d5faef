"""Attention probe on stock transformers: the model's own attention rows, captured where supervised.

The probe registers one attention function in transformers' ``AttentionInterface`` (and the base
kernel's mask function under the same name in ``AttentionMaskInterface``) and switches only the
language model to it. That function always calls the base kernel the model was built with (SDPA,
eager or FlashAttention-2), so every layer's output is exactly the stock one. While a
:meth:`AttentionProbe.capture` block is armed, in the supervised layers only, it also recomputes the
softmax of the requested query rows over their full causal row, in fp32, from the rotary-embedded
queries and keys the kernel received: the probabilities the model really uses.

Memory is ``O(R x L x heads)`` per supervised layer (``R`` requested rows, ``L`` sequence length),
never ``O(L^2)``.

Packed rows (several samples in one row, ``swim.data.packing``): a supervised row's softmax runs
over its own sample's causal keys only, read from what the kernel itself received: the
block-causal mask under SDPA and eager, the varlen boundaries under FlashAttention-2
(``cu_seq_lens_q`` when given, else derived from the packed text ``position_ids`` exactly as
transformers' FlashAttention path does). A non-causal (reference) row is limited to its
sample's span ``ProbeRequest.row_span``.

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
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor, nn
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface
from transformers.utils.generic import is_flash_attention_requested

from swim.data.batch import Supervision
from swim.losses.fusion import upcast
from swim.model.families import family_of

PROBE_PREFIX = "swim_probe"
QUERY_CONVENTIONS = ("predicting", "token")
_probe_ids = itertools.count()


@dataclass
class ProbeRequest:
    """Which attention rows and keys to capture in one forward.

    Attributes:
        row_sample: ``(R,)`` long, batch index (row of ``input_ids``) of each row.
        row_query: ``(R,)`` long, sequence position of each row's query.
        key_index: ``(R, K)`` long, sequence positions of the row's sample's visual tokens
            (``Supervision.visual_keys``), padded with 0 up to ``K`` (the most keys of the rows).
        key_valid: ``(R, K)`` bool, which entries of ``key_index`` are real.
        causal: softmax over each row's causal keys (what the model computes); ``False``: over the
            whole row, future keys included (the reference code's recomputation).
        key_mask: ``(B, L)`` the batch's padding mask (1 = real token); the only mask of a
            non-causal row (``None``: no padding).
        row_span: ``(R, 2)`` long ``[start, end)`` columns of each row's sample in a packed batch
            (limits a non-causal row to its sample), or ``None`` (one sample per row).
    """

    row_sample: Tensor
    row_query: Tensor
    key_index: Tensor
    key_valid: Tensor
    causal: bool = True
    key_mask: Tensor | None = None
    row_span: Tensor | None = None

    @property
    def num_rows(self) -> int:
        return int(self.row_query.numel())

    def to(self, device: torch.device | str) -> ProbeRequest:
        moved = {
            f.name: value.to(device) if isinstance(value := getattr(self, f.name), Tensor) else value
            for f in fields(self)
        }
        return ProbeRequest(**moved)


def probe_request(
    supervision: Supervision,
    *,
    query: str | None = None,
    causal: bool = True,
    key_mask: Tensor | None = None,
) -> ProbeRequest:
    """The probe request of a batch's supervision.

    Args:
        supervision: the batch's attention supervision (``R`` rows).
        query: ``None`` uses ``supervision.row_query`` as given; ``predicting`` uses the row before
            the tagged token (``row_token - 1``), ``token`` the tagged token's own row.
        causal: see :class:`ProbeRequest`.
        key_mask: ``(B, L)`` padding mask, needed for non-causal rows of a padded batch.

    Returns:
        A request whose row ``r`` has the keys ``visual_keys[s]`` of its sample ``s`` (``T*h*w``
        positions in grid order, ``grid[s] = (T, h, w)``); ``K`` is the most keys of one sample
        (0 without rows). In a packed batch a row's batch index is its sample's
        ``sample_row`` and its span the sample's ``[offset, offset + length)``.
    """
    if query is None:
        row_query = supervision.row_query
    elif query == "predicting":
        row_query = supervision.row_token - 1
    elif query == "token":
        row_query = supervision.row_token
    else:
        raise ValueError(f"loss.query={query!r}: expected one of {QUERY_CONVENTIONS}")
    row_sample = supervision.row_sample
    table, valid = supervision.key_table()
    sizes = valid.sum(dim=-1)[row_sample]
    no_video = sizes <= 0
    if bool(no_video.any()):
        rows = no_video.nonzero().flatten().tolist()
        raise ValueError(
            f"supervision rows {rows} belong to samples without a video (no visual keys): "
            "rows need a video to attend to"
        )
    if bool((row_query < 0).any()):
        rows = (row_query < 0).nonzero().flatten().tolist()
        raise ValueError(
            f"supervision rows {rows} have a negative query position (a tag on the first token?)"
        )
    num_keys = int(sizes.max()) if row_sample.numel() else 0
    key_index = table[row_sample, :num_keys]
    key_valid = valid[row_sample, :num_keys]
    row_span = None
    if supervision.sample_row is not None:
        if supervision.sample_offset is None or supervision.sample_length is None:
            raise ValueError("a packed supervision (sample_row set) needs sample_offset and sample_length")
        start = supervision.sample_offset[row_sample]
        row_span = torch.stack([start, start + supervision.sample_length[row_sample]], dim=-1)
        row_sample = supervision.sample_row[row_sample]
    return ProbeRequest(
        row_sample=row_sample,
        row_query=row_query,
        key_index=key_index,
        key_valid=key_valid,
        causal=causal,
        key_mask=key_mask,
        row_span=row_span,
    )


def row_attention(
    query: Tensor,
    key: Tensor,
    attention_mask: Tensor | None,
    row_sample: Tensor,
    row_query: Tensor,
    row_slot: Tensor,
    max_rows: int,
    scaling: float,
    causal: bool = True,
    key_mask: Tensor | None = None,
    cu_seq_lens: Tensor | None = None,
    row_span: Tensor | None = None,
) -> Tensor:
    """Softmax attention probabilities of selected query rows over their full causal row, in fp32.

    Args:
        query: ``(B, Hq, L, D)`` rotary-embedded queries of one layer.
        key: ``(B, Hkv, L, D)`` rotary-embedded keys; ``Hq`` is a multiple of ``Hkv`` (grouped-query
            attention: query head ``h`` reads key head ``h // (Hq / Hkv)``, as ``repeat_kv`` does).
        attention_mask: what the base kernel received: ``None`` (causal, no padding), ``(B, L)``
            padding mask (FlashAttention), ``(B or 1, 1, L, L)`` bool (True attends, SDPA) or float
            additive (eager).
        row_sample: ``(R,)`` long batch index of each row.
        row_query: ``(R,)`` long query position of each row.
        row_slot: ``(R,)`` long rank of the row among its sample's rows (``< max_rows``).
        max_rows: the largest number of rows of one sample.
        scaling: the score scale (``head_dim ** -0.5``).
        causal: ``False`` ignores ``attention_mask`` and takes the softmax over every unpadded key
            of the row, future ones included (the reference code's rows).
        key_mask: ``(B, L)`` padding mask (1 = real) of a non-causal row; ``None``: no padding.
        cu_seq_lens: ``(S + 1,)`` cumulative sequence starts of a packed ``B = 1`` row
            (FlashAttention-2's varlen boundaries) with ``attention_mask=None``: a causal row sees
            only keys of its own sequence. ``None``: one sequence per row.
        row_span: ``(R, 2)`` ``[start, end)`` of each non-causal row's sample in a packed row.

    Returns:
        ``(R, Hq, L)`` fp32 probabilities; entries outside the causal (or, with ``causal=False``,
        the whole), unpadded row are 0.
    """
    batch, num_heads, length, head_dim = query.shape
    num_kv_heads = key.shape[1]
    groups = num_heads // num_kv_heads
    if key.shape[2] != length:
        raise RuntimeError(
            f"the attention probe captures full-sequence forwards only: query length {length} differs from "
            f"key length {key.shape[2]} (a KV cache is in use)"
        )
    num_rows = row_query.numel()
    rows = upcast(query[row_sample, :, row_query])
    padded = query.new_zeros(batch, max_rows, num_heads, head_dim, dtype=rows.dtype)
    padded = padded.index_put((row_sample, row_slot), rows)
    grouped = padded.view(batch, max_rows, num_kv_heads, groups, head_dim).permute(0, 2, 3, 1, 4)
    grouped = grouped.reshape(batch, num_kv_heads, groups * max_rows, head_dim)
    scores = torch.matmul(grouped, upcast(key).transpose(-1, -2)) * scaling
    scores = scores.view(batch, num_kv_heads, groups, max_rows, length).permute(0, 3, 1, 2, 4)
    scores = scores[row_sample, row_slot].reshape(num_rows, num_heads, length)

    positions = torch.arange(length, device=query.device)
    if not causal:
        if key_mask is not None:
            allowed = key_mask[row_sample].bool()
            scores = scores.masked_fill(~allowed[:, None, :], torch.finfo(torch.float32).min)
        if row_span is not None:
            inside = (positions[None, :] >= row_span[:, :1]) & (positions[None, :] < row_span[:, 1:])
            scores = scores.masked_fill(~inside[:, None, :], torch.finfo(torch.float32).min)
    elif attention_mask is None or attention_mask.dim() == 2:
        allowed = positions[None, :] <= row_query[:, None]
        if cu_seq_lens is not None:
            if batch != 1:
                raise ValueError(f"cu_seq_lens describe one packed row, got a batch of {batch}")
            bounds = cu_seq_lens.to(device=query.device, dtype=torch.long)
            start = bounds[torch.bucketize(row_query, bounds, right=True) - 1]
            allowed = allowed & (positions[None, :] >= start[:, None])
        if attention_mask is not None:
            allowed = allowed & attention_mask[row_sample].bool()
        scores = scores.masked_fill(~allowed[:, None, :], torch.finfo(torch.float32).min)
    elif attention_mask.dim() == 4:
        mask_sample = row_sample if attention_mask.shape[0] > 1 else torch.zeros_like(row_sample)
        mask_rows = attention_mask[mask_sample, 0, row_query]
        if mask_rows.dtype == torch.bool:
            scores = scores.masked_fill(~mask_rows[:, None, :], torch.finfo(torch.float32).min)
        else:
            scores = scores + mask_rows.to(scores.dtype)[:, None, :]
    else:
        raise ValueError(f"unexpected attention mask of shape {tuple(attention_mask.shape)}")
    return torch.softmax(scores, dim=-1)


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


def _varlen_bounds(attention_mask: Tensor | None, kwargs: dict[str, object]) -> Tensor | None:
    """The ``(S + 1,)`` packed-sequence boundaries a mask-free (FlashAttention-2) kernel uses, or ``None``.

    ``cu_seq_lens_q`` when the caller passed it; else, with packed text ``position_ids`` ``(1, L)``
    (the model passes them to every attention call), the boundaries transformers derives from them.
    """
    given = kwargs.get("cu_seq_lens_q")
    if isinstance(given, Tensor):
        return given
    position_ids = kwargs.get("position_ids")
    if attention_mask is not None or not isinstance(position_ids, Tensor) or position_ids.dim() != 2:
        return None
    if position_ids.shape[0] != 1:
        return None
    (cu_seq_lens, _), _ = prepare_fa_kwargs_from_position_ids(position_ids)
    return cu_seq_lens


def _row_slots(row_sample: Tensor) -> tuple[Tensor, int]:
    """``(R,)`` rank of each row among its sample's rows, and the largest rows-per-sample count."""
    if row_sample.numel() == 0:
        return row_sample.clone(), 0
    counts = torch.bincount(row_sample)
    order = torch.argsort(row_sample, stable=True)
    first = torch.cumsum(counts, dim=0) - counts
    slot = torch.empty_like(row_sample)
    slot[order] = torch.arange(row_sample.numel(), device=row_sample.device) - first[row_sample[order]]
    return slot, int(counts.max())


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
                cu_seq_lens=_varlen_bounds(attention_mask, kwargs) if request.causal else None,
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
        row_slot, max_rows = _row_slots(request.row_sample)
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
