"""Linear layers with a frozen quantized weight, in place of ``nn.Linear`` and GPT-2's ``Conv1D``.

Why subclasses of the classes they replace: every part of lorakit that asks "is this a Linear?" (LoRA
injection, adapter shapes, PEFT's ``fan_in_fan_out``, per-row routing) keeps working unchanged. What
differs: ``weight`` is not a parameter but a read-only, freshly dequantized copy in the original dtype
(it answers shape, dtype and device questions and gives the right values, but writing to it changes
nothing, so merging into a quantized layer is refused by ``lorakit.lora``); the bias stays an ordinary
parameter (trainable with ``bias='all'``).

Backward (QLoRA style): the weight gets no gradient, the input gets ``grad_out @ W`` with W dequantized
just for that product, so LoRA factors of earlier layers are trained through frozen quantized ones.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .formats import FORMATS, QuantWeight


class _FrozenMatmul(torch.autograd.Function):
    """``x @ W^T`` with the format's kernel; backward gives the input ``grad @ W`` (no weight gradient)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: QuantWeight) -> torch.Tensor:
        ctx.weight = weight
        return weight.matmul(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        w = ctx.weight.dequantize().to(grad.dtype)
        return grad @ w, None


class QuantizedLayer(nn.Module):
    """What the quantized Linear and Conv1D share: the stored weight, forward, dequantize."""

    qweight: QuantWeight
    bias: nn.Parameter | None

    def _setup(self, weight: torch.Tensor, bias: nn.Parameter | None, mode: str,
               stored: QuantWeight | None) -> None:
        """``weight`` is (out x in), quantized unless ``stored`` already holds it (from the disk cache: then
        ``weight`` is only looked at for its shape); ``bias`` is kept as it is (the same parameter object)."""
        if mode not in FORMATS:
            raise ValueError(f"quantization mode must be one of {', '.join(FORMATS)}, got {mode!r}")
        if stored is None:
            stored = FORMATS[mode](weight)
        elif stored.mode != mode or (stored.out_features, stored.in_features) != tuple(weight.shape):
            raise ValueError(f"a stored {stored.mode} {stored.out_features}x{stored.in_features} weight cannot "
                             f"stand for a {mode} {tuple(weight.shape)} one")
        self.qweight = stored
        self.bias = bias

    @property
    def quant_mode(self) -> str:
        """int8, nf4 or bf16: also how ``lorakit.lora`` recognises a quantized base (and refuses merges)."""
        return self.qweight.mode

    @property
    def dtype(self) -> torch.dtype:
        return self.qweight.dtype

    @property
    def device(self) -> torch.device:
        return self.qweight.device

    def dequantize(self) -> torch.Tensor:
        """The weight as (out x in) in its original dtype, a new tensor."""
        return self.qweight.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _FrozenMatmul.apply(x, self.qweight)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    __repr__ = nn.Module.__repr__  # not Conv1D's, which hides the format

    def extra_repr(self) -> str:
        return f"in_features={self.qweight.in_features}, out_features={self.qweight.out_features}, " \
               f"bias={self.bias is not None}, {self.quant_mode}"


class QuantLinear(QuantizedLayer, nn.Linear):
    """``nn.Linear`` with a frozen quantized weight."""

    def __init__(self, base: nn.Linear, mode: str, stored: QuantWeight | None = None) -> None:
        nn.Module.__init__(self)  # not nn.Linear's: it would allocate a full-precision weight
        self.in_features, self.out_features = base.in_features, base.out_features
        self._setup(base.weight, base.bias, mode, stored)

    @property
    def weight(self) -> torch.Tensor:
        """A dequantized copy (out x in): read-only in effect, see the module docstring."""
        return self.dequantize()


class QuantConv1D(QuantizedLayer, Conv1D):
    """GPT-2's ``Conv1D`` (weight stored in x out) with a frozen quantized weight."""

    def __init__(self, base: Conv1D, mode: str, stored: QuantWeight | None = None) -> None:
        nn.Module.__init__(self)
        self.nx, self.nf = base.weight.shape
        self._setup(base.weight.T, base.bias, mode, stored)

    @property
    def weight(self) -> torch.Tensor:
        """A dequantized copy in Conv1D's layout (in x out)."""
        return self.dequantize().T


def quantized(module: nn.Module, mode: str, stored: QuantWeight | None = None) -> QuantizedLayer:
    """The quantized counterpart of a Linear or Conv1D (holding ``stored`` if given, else quantizing)."""
    if isinstance(module, QuantizedLayer):
        raise ValueError(f"already quantized ({module.quant_mode})")
    if isinstance(module, nn.Linear):
        return QuantLinear(module, mode, stored)
    if isinstance(module, Conv1D):
        return QuantConv1D(module, mode, stored)
    raise TypeError(f"only nn.Linear and transformers Conv1D are quantized, not {type(module).__name__}")
