"""LoRA layers: a frozen base module plus named low-rank updates (Hu et al. 2021, arXiv 2106.09685).

Every layer wraps the original module as ``base_layer`` (so it can be put back untouched) and adds, per
adapter name, ``A`` (r x in) and ``B`` (out x r) with ``h = base(x) + (B A) dropout(x) * scaling``.
The in-memory names (``base_layer``, ``lora_A.<name>``, ``lora_embedding_A.<name>``) follow PEFT's, which
keeps the mapping to PEFT's on-disk format a matter of dropping the adapter name.

Merging adds ``scaling * B A`` to the base weight in place; it only ever happens when asked for
(``merge``), never as a side effect of ``eval()``, and is refused over a quantized base (``lorakit.quant``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D


class RowUpdate(Protocol):
    """What a layer asks of per-row routing (``lora.routing.RowRouting`` implements it). Owned here, so
    that layers know nothing of how routing stores or gathers factors and import nothing from it."""

    @property
    def rows(self) -> Sequence[str | None] | None:
        """The adapter of each row of the next batches (``None``: the base); ``None``: not routing now."""

    def add_delta(self, layer: LoraLayer, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """``result`` (``layer``'s base output for ``x``) plus each row's update."""

    def saved_forward(self, wrapper: ModulesToSave, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``wrapper``'s output, each row through its own adapter's copy."""


def lora_scaling(r: int, alpha: float, use_rslora: bool) -> float:
    """alpha / r as in the paper, or alpha / sqrt(r) (rsLoRA, Kalajdzievski 2023) which keeps the update
    magnitude stable as r grows."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


class LoraLayer(nn.Module):
    """What every LoRA layer shares: adapter bookkeeping, activation, merge and unmerge.

    Subclasses create the per-adapter parameters (``_create``, ``_remove``), compute the update for an input
    (``_delta_output``) and the update as a weight in the base weight's layout (``delta_weight``).
    """

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.training = base_layer.training  # a layer put into an eval() model must not start training
        self.r: dict[str, int] = {}
        self.scaling: dict[str, float] = {}
        self.active_adapters: list[str] = []
        self.merged_adapters: list[str] = []
        self.disabled = False

    routing: RowUpdate | None = None  # set by ``set_row_routing``: per-row adapters instead of the active ones

    # --- attributes of the wrapped module (e.g. ``weight``, ``nf``) stay reachable for model code
    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)

    @property
    def adapter_names(self) -> list[str]:
        return list(self.r)

    def add_adapter(self, name: str, r: int, alpha: float, dropout: float = 0.0,
                    use_rslora: bool = False, init_weights: bool = True) -> None:
        if name in self.r:
            raise ValueError(f"adapter {name!r} already exists in this layer")
        if r <= 0:
            raise ValueError(f"LoRA rank must be positive, got r={r}")
        self.r[name] = r
        self.scaling[name] = lora_scaling(r, alpha, use_rslora)
        self._create(name, r, dropout)
        self.train(self.training)  # new modules (dropout) follow the model's train/eval mode
        self.reset_parameters(name, init_weights)
        dtype, device = weight_spec(self.base_layer)
        for p in self.adapter_parameters(name):
            p.data = p.data.to(device=device, dtype=dtype if dtype.is_floating_point else None)

    def delete_adapter(self, name: str) -> None:
        if name in self.merged_adapters:
            self.unmerge([name])
        self._remove(name)
        del self.r[name], self.scaling[name]
        self.active_adapters = [a for a in self.active_adapters if a != name]

    def set_active(self, names: list[str]) -> None:
        self.active_adapters = [n for n in names if n in self.r]

    def adapter_parameters(self, name: str) -> list[nn.Parameter]:
        return [p for n, p in self.adapter_named_parameters(name)]

    def adapter_named_parameters(self, name: str) -> list[tuple[str, nn.Parameter]]:
        """Parameters of one adapter, named as PEFT saves them relative to this layer
        (``lora_A.weight``, ``lora_embedding_A``)."""
        out = []
        for attr in self._param_containers:
            container = getattr(self, attr)
            if name not in container:
                continue
            item = container[name]
            if isinstance(item, nn.Parameter):
                out.append((attr, item))
            else:
                out.extend((f"{attr}.{pn}", p) for pn, p in item.named_parameters())
        return out

    # --- merging
    @torch.no_grad()
    def merge(self, names: list[str] | None = None) -> None:
        """Fold adapters (default: the active ones) into the base weight; forward then skips them."""
        for name in names if names is not None else self.active_adapters:
            if name in self.merged_adapters or name not in self.r:
                continue
            mode = quant_mode_of(self.base_layer)
            if mode is not None:
                raise RuntimeError(f"cannot merge adapter {name!r} into a {mode}-quantized base layer: keep it "
                                   "unmerged (same outputs) or load the base unquantized to merge")
            weight = self.base_layer.weight
            weight.data += self.delta_weight(name).to(weight.dtype)
            self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self, names: list[str] | None = None) -> None:
        """Subtract merged adapters (default: all) from the base weight, newest first."""
        for name in reversed(list(self.merged_adapters)):
            if names is not None and name not in names:
                continue
            weight = self.base_layer.weight
            weight.data -= self.delta_weight(name).to(weight.dtype)
            self.merged_adapters.remove(name)

    # --- forward
    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        result = self.base_layer(x, *args, **kwargs)
        if self.disabled:
            return result
        routing = self.routing
        if routing is not None and routing.rows is not None:
            return routing.add_delta(self, x, result)
        for name in self.active_adapters:
            if name not in self.merged_adapters:
                result = result + self._delta_output(x, name)
        return result

    # --- per layer type
    _param_containers: tuple[str, ...] = ()

    def _create(self, name: str, r: int, dropout: float) -> None:
        raise NotImplementedError

    def _remove(self, name: str) -> None:
        for attr in (*self._param_containers, "lora_dropout"):
            container = getattr(self, attr, None)
            if container is not None and name in container:
                del container[name]

    def reset_parameters(self, name: str, init_weights: bool = True) -> None:
        raise NotImplementedError

    def _delta_output(self, x: torch.Tensor, name: str) -> torch.Tensor:
        raise NotImplementedError

    def delta_weight(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def row_factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(A: r x in, B: out x r, scaling) of adapter ``name`` as a plain LoRA, its update being
        ``scaling * x A^T B^T``: what per-row routing stacks for a mixed batch."""
        raise NotImplementedError


def quant_mode_of(base: nn.Module) -> str | None:
    """The mode of a base layer quantized by ``lorakit.quant`` (its layers say so in ``quant_mode``; this package
    imports nothing from there), else None. Such a layer's ``weight`` is a dequantized copy, and it takes no
    merge."""
    return getattr(base, "quant_mode", None)


def weight_spec(base: nn.Module) -> tuple[torch.dtype, torch.device]:
    """The (dtype, device) of a base layer's weight, read without building it: a quantized layer reports the
    dtype its dequantized copy has."""
    if quant_mode_of(base) is not None:
        return base.dtype, base.device
    return base.weight.dtype, base.weight.device


def features(base: nn.Module) -> tuple[int, int, bool]:
    """(in_features, out_features, fan_in_fan_out) of a Linear or GPT-2 Conv1D (weight stored as in x out)."""
    if isinstance(base, nn.Linear):
        return base.in_features, base.out_features, False
    if isinstance(base, Conv1D):
        return base.nx, base.nf, True
    raise TypeError(f"LoRA Linear needs nn.Linear or transformers Conv1D, got {type(base).__name__}")


class Linear(LoraLayer):
    """LoRA on ``nn.Linear`` or GPT-2's ``Conv1D`` (``fan_in_fan_out``: the weight is stored transposed)."""

    _param_containers = ("lora_A", "lora_B")

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.in_features, self.out_features, self.fan_in_fan_out = features(base_layer)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_dropout = nn.ModuleDict()

    def _create(self, name: str, r: int, dropout: float) -> None:
        self.lora_A[name] = nn.Linear(self.in_features, r, bias=False)
        self.lora_B[name] = nn.Linear(r, self.out_features, bias=False)
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def reset_parameters(self, name: str, init_weights: bool = True) -> None:
        # A: Kaiming-uniform, B: zero, so a fresh adapter leaves the model's output unchanged.
        nn.init.kaiming_uniform_(self.lora_A[name].weight, a=math.sqrt(5))
        if init_weights:
            nn.init.zeros_(self.lora_B[name].weight)
        else:  # non-zero B: used by tests that must see the adapter act
            nn.init.normal_(self.lora_B[name].weight, std=0.02)

    def _delta_output(self, x: torch.Tensor, name: str) -> torch.Tensor:
        a, b = self.lora_A[name], self.lora_B[name]
        x = x.to(a.weight.dtype)
        return b(a(self.lora_dropout[name](x))) * self.scaling[name]

    def delta_weight(self, name: str) -> torch.Tensor:
        a = self.lora_A[name].weight.float()
        b = self.lora_B[name].weight.float()
        delta = (b @ a) * self.scaling[name]
        return delta.T if self.fan_in_fan_out else delta

    def row_factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor, float]:
        return self.lora_A[name].weight, self.lora_B[name].weight, self.scaling[name]


class FusedLinear(Linear):
    """LoRA on a slice of a fused projection, e.g. GPT-2's ``c_attn`` (q, k, v stacked on the output axis)
    with only q and v adapted, as loralib's ``MergedLinear(enable_lora=[True, False, True])``.

    Each enabled slice ``i`` gets its own ``A_i`` (r x in) and ``B_i`` (out/n x r). They are stored stacked:
    ``lora_A`` is (k*r x in) and ``lora_B`` is (k*out/n x r) for k enabled slices.
    """

    def __init__(self, base_layer: nn.Module, enable_lora: list[bool]) -> None:
        super().__init__(base_layer)
        if not any(enable_lora):
            raise ValueError("enable_lora must enable at least one slice")
        if self.out_features % len(enable_lora):
            raise ValueError(f"out_features={self.out_features} does not split into {len(enable_lora)} "
                             "equal slices")
        self.enable_lora = [bool(e) for e in enable_lora]
        self.slice_size = self.out_features // len(enable_lora)
        self.enabled = [i for i, e in enumerate(self.enable_lora) if e]

    def _create(self, name: str, r: int, dropout: float) -> None:
        k = len(self.enabled)
        self.lora_A[name] = nn.Linear(self.in_features, k * r, bias=False)
        self.lora_B[name] = nn.Linear(r, k * self.slice_size, bias=False)
        self.lora_dropout[name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def _slice_deltas(self, x: torch.Tensor, name: str) -> list[torch.Tensor]:
        """Per enabled slice: B_i A_i x (without scaling)."""
        k, r = len(self.enabled), self.r[name]
        after_a = self.lora_A[name](self.lora_dropout[name](x.to(self.lora_A[name].weight.dtype)))
        a_parts = after_a.split(r, dim=-1)
        b_parts = self.lora_B[name].weight.split(self.slice_size, dim=0)
        return [F.linear(a_parts[i], b_parts[i]) for i in range(k)]

    def _delta_output(self, x: torch.Tensor, name: str) -> torch.Tensor:
        deltas = self._slice_deltas(x, name)
        zeros = deltas[0].new_zeros(*deltas[0].shape[:-1], self.slice_size)
        parts = iter(deltas)
        return torch.cat([next(parts) if e else zeros for e in self.enable_lora], dim=-1) * self.scaling[name]

    def delta_weight(self, name: str) -> torch.Tensor:
        a, b = self.to_full_rank_lora(name)
        delta = (b.float() @ a.float()) * self.scaling[name]
        return delta.T if self.fan_in_fan_out else delta

    def row_factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor, float]:
        a, b = self.to_full_rank_lora(name)  # zeros in k's rows: the slices come out exactly as in forward
        return a, b, self.scaling[name]

    def to_full_rank_lora(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The same update as one plain LoRA of rank k*r: A stacked (k*r x in) and a block-structured B
        (out x k*r). This is how the adapter is expressed in PEFT's format, which has no slice LoRA."""
        r = self.r[name]
        a = self.lora_A[name].weight
        b_parts = self.lora_B[name].weight.split(self.slice_size, dim=0)
        b = a.new_zeros(self.out_features, len(self.enabled) * r)
        for j, i in enumerate(self.enabled):
            b[i * self.slice_size:(i + 1) * self.slice_size, j * r:(j + 1) * r] = b_parts[j]
        return a, b

    def from_full_rank_lora(self, b: torch.Tensor, r: int) -> torch.Tensor:
        """Inverse of ``to_full_rank_lora`` for B: the stacked slice B, or ValueError if ``b`` has non-zero
        entries outside its diagonal blocks (then it is not a slice adapter and cannot load as one)."""
        k = len(self.enabled)
        expected = (self.out_features, k * r)
        if tuple(b.shape) != expected:
            raise ValueError(f"expected shape {list(expected)}, got {list(b.shape)}")
        mask = torch.zeros_like(b, dtype=torch.bool)
        parts = []
        for j, i in enumerate(self.enabled):
            rows, cols = slice(i * self.slice_size, (i + 1) * self.slice_size), slice(j * r, (j + 1) * r)
            mask[rows, cols] = True
            parts.append(b[rows, cols])
        if b.masked_fill(mask, 0).abs().max().item() > 0:
            raise ValueError("lora_B has non-zero entries outside the enabled q/k/v blocks")
        return torch.cat(parts, dim=0)


class Embedding(LoraLayer):
    """LoRA on ``nn.Embedding``: the update is a low-rank table (num_embeddings x dim) = (B A)^T.

    As in loralib and PEFT, A (r x num_embeddings) starts at zero and B (dim x r) normal: the lookup
    selects columns of A, so a random A and zero B would give B no gradient signal per unused row."""

    _param_containers = ("lora_embedding_A", "lora_embedding_B")

    def __init__(self, base_layer: nn.Embedding) -> None:
        if not isinstance(base_layer, nn.Embedding):
            raise TypeError(f"LoRA Embedding needs nn.Embedding, got {type(base_layer).__name__}")
        super().__init__(base_layer)
        self.lora_embedding_A = nn.ParameterDict()
        self.lora_embedding_B = nn.ParameterDict()

    def _create(self, name: str, r: int, dropout: float) -> None:
        base = self.base_layer
        self.lora_embedding_A[name] = nn.Parameter(torch.empty(r, base.num_embeddings))
        self.lora_embedding_B[name] = nn.Parameter(torch.empty(base.embedding_dim, r))

    def reset_parameters(self, name: str, init_weights: bool = True) -> None:
        if init_weights:
            nn.init.zeros_(self.lora_embedding_A[name])
        else:  # non-zero A: used by tests that must see the adapter act
            nn.init.normal_(self.lora_embedding_A[name], std=0.02)
        nn.init.normal_(self.lora_embedding_B[name])

    def _delta_output(self, x: torch.Tensor, name: str) -> torch.Tensor:
        base = self.base_layer
        rows = F.embedding(x, self.lora_embedding_A[name].T, base.padding_idx, base.max_norm,
                           base.norm_type, base.scale_grad_by_freq, base.sparse)
        return (rows @ self.lora_embedding_B[name].T) * self.scaling[name]

    def delta_weight(self, name: str) -> torch.Tensor:
        a = self.lora_embedding_A[name].float()
        b = self.lora_embedding_B[name].float()
        return (b @ a).T * self.scaling[name]

    def row_factors(self, name: str) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(A: r x num_embeddings, B: dim x r, scaling): A's columns are looked up rather than multiplied."""
        return self.lora_embedding_A[name], self.lora_embedding_B[name], self.scaling[name]


class ModulesToSave(nn.Module):
    """A module trained fully and stored with the adapter (e.g. a classification head): one copy per
    adapter beside the untouched original, as PEFT's ``modules_to_save``."""

    def __init__(self, original_module: nn.Module) -> None:
        super().__init__()
        self.original_module = original_module
        self.training = original_module.training
        self.modules_to_save = nn.ModuleDict()
        self.active_adapters: list[str] = []
        self.disabled = False

    routing: RowUpdate | None = None  # set by ``set_row_routing``: each row's own copy

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("original_module", "modules_to_save"):
                raise
            return getattr(self.current, name)

    @property
    def adapter_names(self) -> list[str]:
        return list(self.modules_to_save)

    def add_adapter(self, name: str) -> None:
        if name in self.modules_to_save:
            raise ValueError(f"adapter {name!r} already has a copy of this module")
        self.modules_to_save[name] = copy.deepcopy(self.original_module)

    def delete_adapter(self, name: str) -> None:
        del self.modules_to_save[name]
        self.active_adapters = [a for a in self.active_adapters if a != name]

    def set_active(self, names: list[str]) -> None:
        self.active_adapters = [n for n in names if n in self.modules_to_save]

    @property
    def current(self) -> nn.Module:
        if self.disabled or not self.active_adapters:
            return self.original_module
        if len(self.active_adapters) > 1:
            raise RuntimeError(f"adapters {self.active_adapters} each have their own copy of this module; "
                               "activate only one of them")
        return self.modules_to_save[self.active_adapters[0]]

    def forward(self, *args, **kwargs):
        routing = self.routing
        if routing is not None and routing.rows is not None and not self.disabled:
            return routing.saved_forward(self, *args, **kwargs)
        return self.current(*args, **kwargs)
