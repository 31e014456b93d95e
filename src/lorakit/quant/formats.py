"""How a frozen weight is stored and multiplied: int8, int4, NF4 or bf16, each with its fastest measured kernel.

Each format is a small ``nn.Module`` holding one (out x in) weight: ``matmul(x)`` is ``x @ W^T`` with the
stored weight, ``dequantize()`` the weight back in the original dtype (what backward multiplies by, and
what ``weight`` reads return), ``nbytes`` what it keeps in memory. Kernels were chosen by
``benchmarks/quant_kernels.py`` (docs/quantization.md has the tables):

- int8: per-output-channel symmetric int8 weights, activations quantized per call (per tensor) by
  PyTorch's fbgemm kernel ``quantized.linear_dynamic``, the fastest kernel measured on an AVX2 and an
  AVX-512 EPYC (here, per decode step, int8 weight-only ``_weight_int8pack_mm`` was 50x slower and
  torchao 0.18's int8 configs 11x slower).
  CPU only. Only the packed weight is kept (1 byte a weight); backward unpacks it. The per-call activation
  rounding is what makes it fast and what changes outputs most (one scale for the whole batch, so rows
  also affect each other slightly); docs/quantization.md has SmolLM2's numbers.
- int4 and nf4: 4-bit codes in blocks with an fp16 scale (and min) per block: 0.63 bytes a weight (int4,
  blocks of 32: GGUF Q4_1's layout, exact for the packaged SmolLM2) or 0.56 (nf4, QLoRA's NormalFloat,
  blocks of 64). No CPU kernel multiplies them faster than dequantize + fp32 matmul (bitsandbytes and
  torchao do the same), so they save memory, not time.
- bf16: the weight rounded to bfloat16, multiplied in bf16 (fast with AVX512-BF16 or AMX, slow without).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..hardware import cpu_flags

# NF4's 16 levels: quantiles of N(0, 1) scaled to [-1, 1], as in QLoRA and bitsandbytes
NF4_LEVELS = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
              -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
              0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
              0.7229568362236023, 1.0)


class QuantWeight(nn.Module):
    """One frozen (out x in) weight in a compact format."""

    mode: str = ""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.dtype = weight.dtype if weight.is_floating_point() else torch.float32  # what dequantize returns

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dequantize(self) -> torch.Tensor:
        raise NotImplementedError

    def stored(self) -> dict[str, torch.Tensor]:
        """What ``from_stored`` rebuilds this weight from (the on-disk cache writes it with safetensors)."""
        return {name: b for name, b in self._buffers.items() if name not in self._non_persistent_buffers_set}

    @classmethod
    def from_stored(cls, shape: tuple[int, int], dtype: torch.dtype, tensors: dict[str, torch.Tensor]) -> QuantWeight:
        """The weight ``stored()`` gave, without quantizing again; ValueError if the tensors do not fit."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.out_features, self.in_features = shape
        self.dtype = dtype
        expected = cls.stored_layout(shape)
        got = {name: (tuple(t.shape), t.dtype) for name, t in tensors.items()}
        if got != expected:
            raise ValueError(f"stored {cls.mode} tensors {got} do not fit a {shape[0]}x{shape[1]} weight: "
                             f"expected {expected}")
        self._restore(tensors)
        return self

    @classmethod
    def stored_layout(cls, shape: tuple[int, int]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Each stored tensor's shape and dtype for an (out x in) weight."""
        raise NotImplementedError

    def _restore(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, tensor in tensors.items():
            self.register_buffer(name, tensor)

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())

    @property
    def device(self) -> torch.device:
        return next(self.buffers(), torch.empty(0)).device

    def extra_repr(self) -> str:
        return f"{self.mode}, out={self.out_features}, in={self.in_features}"

    def _apply(self, fn, recurse: bool = True):
        """Only device moves apply: ``model.to(torch.bfloat16)`` must not round the stored scales (NF4's
        absmax) or turn bf16 into another precision. The target device is read off ``fn``'s result."""
        device = fn(torch.empty(0)).device
        for name, buffer in self._buffers.items():
            if buffer is not None:
                self._buffers[name] = buffer.to(device)
        return self


# --- int8 ---------------------------------------------------------------------------------------------
def int8_kernel_available() -> bool:
    """Whether this PyTorch build has the fbgemm/x86 quantized engine behind ``linear_dynamic``."""
    return bool({"x86", "fbgemm"} & set(torch.backends.quantized.supported_engines))


def _int8_reduce_range() -> bool:
    """fbgemm without VNNI sums u8 x s8 pairs in int16 (``vpmaddubsw``), which saturates unless activations
    use 7 bits; with VNNI (AVX512-VNNI, AMX) the full 8 bits are safe and halve the error (measured 1.1% vs
    1.9% relative on random 8-row inputs)."""
    flags = cpu_flags()
    return not ("avx512_vnni" in flags or "amx_int8" in flags)


class Int8Weight(QuantWeight):
    mode = "int8"

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__(weight)
        if weight.device.type != "cpu":
            raise ValueError(f"int8 runs on the CPU (PyTorch's fbgemm kernel); this weight is on {weight.device}: "
                             "use bf16 or nf4 there")
        if not int8_kernel_available():
            raise RuntimeError("this PyTorch build has no x86/fbgemm quantized engine: use bf16 or nf4")
        w = weight.detach().float().contiguous()
        scale = (w.abs().amax(dim=1) / 127).clamp_min(1e-12).double()
        with warnings.catch_warnings():  # quantized tensors are deprecated as a user API; the kernel is not
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            q = torch.quantize_per_channel(w, scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
        self._pack(q)

    def _pack(self, q: torch.Tensor) -> None:
        self.packed = torch.ops.quantized.linear_prepack(q, None)  # no bias: a trainable bias stays outside
        self.reduce_range = _int8_reduce_range()
        self._bytes = q.numel() + 8 * q.size(0)  # what the packed weight holds (int8 values, scales)

    def stored(self) -> dict[str, torch.Tensor]:
        q = torch.ops.quantized.linear_unpack(self.packed)[0]
        return {"int8": q.int_repr(), "scale": q.q_per_channel_scales()}

    @classmethod
    def stored_layout(cls, shape: tuple[int, int]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {"int8": (shape, torch.int8), "scale": ((shape[0],), torch.float64)}

    def _restore(self, tensors: dict[str, torch.Tensor]) -> None:
        if not int8_kernel_available():
            raise RuntimeError("this PyTorch build has no x86/fbgemm quantized engine: use bf16 or nf4")
        scale = tensors["scale"]
        with warnings.catch_warnings():  # as in __init__
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
            q = torch._make_per_channel_quantized_tensor(tensors["int8"], scale,
                                                         torch.zeros_like(scale, dtype=torch.long), 0)
        self._pack(q)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            raise RuntimeError(f"int8 weights are on the CPU, the input is on {x.device}")
        y = torch.ops.quantized.linear_dynamic(x.float().contiguous(), self.packed, self.reduce_range)
        return y.to(x.dtype)

    def dequantize(self) -> torch.Tensor:
        return torch.ops.quantized.linear_unpack(self.packed)[0].dequantize().to(self.dtype)

    @property
    def nbytes(self) -> int:
        return self._bytes

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        """The packed weight is not a tensor: a state dict gets its int8 values and scales instead of nothing."""
        for name, tensor in self.stored().items():
            destination[prefix + name] = tensor

    def _apply(self, fn, recurse: bool = True):
        device = fn(torch.empty(0)).device
        if device.type != "cpu":
            raise RuntimeError(f"int8 weights stay on the CPU (PyTorch's fbgemm kernel), cannot move to {device}; "
                               "quantize with bf16 or nf4 for another device, or run on the CPU (--device cpu)")
        return self


# --- 4-bit: NF4 and int4 ------------------------------------------------------------------------------
class Block4Weight(QuantWeight):
    """4-bit codes, two a byte, in blocks of ``block`` consecutive weights of a row, each block with its own
    scale and offset: ``w = levels[code] * scale + offset``. Dequantized before an fp32 matmul: no CPU
    kernel multiplies 4-bit weights faster than that here (``benchmarks/quant_kernels.py``)."""

    block = 32
    levels: tuple[float, ...] = ()

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__(weight)
        flat = weight.detach().float().flatten()
        blocks = F.pad(flat, (0, (-flat.numel()) % self.block)).view(-1, self.block)
        levels = torch.tensor(self.levels, device=flat.device)
        scale, offset = self._affine(blocks)
        scale = scale.to(torch.float16).float()  # rounded as stored, so that the codes are the nearest
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant block: any scale is exact
        offset = offset.to(torch.float16).float()
        codes = torch.bucketize((blocks - offset[:, None]) / scale[:, None], (levels[1:] + levels[:-1]) / 2)
        self._restore({"codes": (codes[:, 0::2] << 4 | codes[:, 1::2]).to(torch.uint8),
                       "scale": scale.to(torch.float16), "offset": offset.to(torch.float16)})

    @classmethod
    def stored_layout(cls, shape: tuple[int, int]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        blocks = -(-shape[0] * shape[1] // cls.block)
        return {"codes": ((blocks, cls.block // 2), torch.uint8), "scale": ((blocks,), torch.float16),
                "offset": ((blocks,), torch.float16)}

    def _restore(self, tensors: dict[str, torch.Tensor]) -> None:
        super()._restore(tensors)
        # the two levels a byte stands for, so that one lookup decodes two weights
        levels = torch.tensor(self.levels, device=self.codes.device)
        pairs = torch.stack([levels.repeat_interleave(16), levels.repeat(16)], dim=-1)
        self.register_buffer("pairs", pairs, persistent=False)

    def _affine(self, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def dequantize(self) -> torch.Tensor:
        values = self.pairs.index_select(0, self.codes.flatten().int()).view(-1, self.block)
        values = values * self.scale.float()[:, None] + self.offset.float()[:, None]
        return values.flatten()[:self.out_features * self.in_features].view(
            self.out_features, self.in_features).to(self.dtype)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantize().to(x.dtype))

    @property
    def nbytes(self) -> int:
        return self.codes.numel() + 2 * (self.scale.numel() + self.offset.numel())


class NF4Weight(Block4Weight):
    """4-bit NormalFloat (QLoRA, Dettmers et al. 2023, arXiv 2305.14314): levels at quantiles of a normal
    distribution, blocks of 64 scaled by their absmax (as QLoRA, without its double quantization).
    Best for weights trained in 16/32 bits, which are near-normal."""

    mode = "nf4"
    block = 64
    levels = NF4_LEVELS

    def _affine(self, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        absmax = blocks.abs().amax(dim=1)
        return absmax, torch.zeros_like(absmax)


class Int4Weight(Block4Weight):
    """Asymmetric 4-bit in blocks of 32 from each block's min and max: the layout of GGUF's Q4_1, so
    weights that came from a Q4_1 file (the packaged SmolLM2) are reproduced exactly (fp16 scale and min,
    as GGUF stores them)."""

    mode = "int4"
    block = 32
    levels = tuple(float(i) for i in range(16))

    def _affine(self, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = blocks.amin(dim=1), blocks.amax(dim=1)
        return (high - low) / 15, low


# --- bf16 ---------------------------------------------------------------------------------------------
class BF16Weight(QuantWeight):
    mode = "bf16"

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__(weight)
        self.register_buffer("values", weight.detach().to(torch.bfloat16).contiguous())

    @classmethod
    def stored_layout(cls, shape: tuple[int, int]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {"values": (shape, torch.bfloat16)}

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.values).to(x.dtype)

    def dequantize(self) -> torch.Tensor:
        return self.values.to(self.dtype)


FORMATS: dict[str, type[QuantWeight]] = {"int8": Int8Weight, "int4": Int4Weight, "nf4": NF4Weight,
                                          "bf16": BF16Weight}
