"""The mechanisms as torch.nn.Modules over the C++ modules.

A mechanism's parameters are the C++ module's own tensors, handed to Python as
``nn.Parameter``s: the Python object and the C++ tensor are one TensorImpl, so the C++ forward
reads what ``torch.optim`` writes, gradients land where the optimizer looks, and
``load_state_dict`` copies into the tensors the C++ side uses. Conversions (``.to(dtype)``,
``.to(device)``) swap the data inside the same tensors.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from typing import Any, Optional

import torch
from torch import nn

from . import _C

# Argument names of the reference libraries accepted as aliases of attnkit's option names.
_ALIASES = {"d_model": "dim", "n_heads": "num_heads"}


@dataclasses.dataclass
class AttentionAux:
    """What ``forward_with_aux`` returns: the output, the attention weights, and the extra
    tensors of the sparse and wrapper mechanisms (None where the mechanism has none)."""

    output: torch.Tensor
    attn_weights: Optional[torch.Tensor] = None
    # DeepSeekSparseAttention, MiniMaxSparseAttention, CompressedSparseAttention
    index_scores: Optional[torch.Tensor] = None
    selected: Optional[torch.Tensor] = None
    selected_indices: Optional[torch.Tensor] = None
    block_scores: Optional[torch.Tensor] = None
    selected_blocks: Optional[torch.Tensor] = None
    keep: Optional[torch.Tensor] = None
    # GatedAttention, CombinedAttention
    gate: Optional[torch.Tensor] = None
    attn_weights_b: Optional[torch.Tensor] = None


class _Bound(nn.Module):
    """An nn.Module whose parameters and buffers are those of a C++ module (and so on down)."""

    def _bind(self, cpp: _C.Module) -> None:
        object.__setattr__(self, "_cpp_module", cpp)
        for name, tensor in cpp.named_parameters():
            if not isinstance(tensor, nn.Parameter):
                # The same Python object (hence the same TensorImpl) becomes a Parameter.
                tensor.__class__ = nn.Parameter
            self.register_parameter(name, tensor)
        for name, tensor in cpp.named_buffers():
            self.register_buffer(name, tensor)
        for name, child in cpp.named_children():
            sub = _Bound()
            sub._bind(child)
            self.add_module(name, sub)

    def _apply(self, fn, recurse=True):
        # nn.Module converts parameters in place (param.data = ...) but replaces buffers: put
        # the converted buffers' data back into the C++ buffers, so both sides keep one tensor.
        super()._apply(fn, recurse=False)
        if recurse:
            for child in self.children():
                child._apply(fn)
        cpp_buffers = dict(self._cpp_module.named_buffers())
        for name, buf in list(self._buffers.items()):
            cpp_buf = cpp_buffers.get(name)
            if buf is not None and cpp_buf is not None and buf is not cpp_buf:
                cpp_buf.data = buf
                self._buffers[name] = cpp_buf
        return self


class Attention(_Bound):
    """A sequence-to-sequence attention mechanism, x [B, T, dim] -> [B, T, dim], running
    attnkit's C++ implementation. Build one with :func:`attnkit.make` or its class
    (``attnkit.GroupedQueryAttention(512, 8, 2, causal=True)``)."""

    # Set by each generated subclass.
    _mechanism: str = ""
    _required: tuple = ()

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__()
        name = self._mechanism
        if not name:
            raise TypeError("attnkit.Attention is abstract: use attnkit.make(name, ...) or a class")
        if len(args) > len(self._required):
            raise TypeError(
                f"{type(self).__name__}: takes at most {len(self._required)} positional "
                f"arguments ({', '.join(self._required)}), got {len(args)}")
        for alias, option in _ALIASES.items():
            if alias in options:
                if option in options:
                    raise TypeError(f"{type(self).__name__}: got both {alias}= and {option}=")
                options[option] = options.pop(alias)
        for option, value in zip(self._required, args):
            if option in options:
                raise TypeError(f"{type(self).__name__}: got {option} twice")
            options[option] = value
        self.options = dict(options)
        self._bind(_C.make_attention(name, json.dumps(options)))

    @property
    def cpp(self) -> _C.Attention:
        """The C++ module underneath."""
        return self._cpp_module

    def forward(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                state: Optional[_C.DecodeState] = None) -> torch.Tensor:
        """x [B, T, dim] -> [B, T, dim]. ``attn_mask``: boolean (True = attend) or additive
        float, [T, T], [B, T, T] or [B, 1 or H, T, T]. ``state``: continue the sequence held in
        a decode state from :meth:`init_state` (prefill any T, then T = 1 per token)."""
        if state is not None:
            if attn_mask is not None:
                raise ValueError(f"{self.cpp.mechanism()}: attn_mask and state cannot be combined")
            return self.cpp.forward_state(x, state)
        return self.cpp.forward(x, attn_mask)

    def forward_with_aux(self, x: torch.Tensor,
                         attn_mask: Optional[torch.Tensor] = None) -> AttentionAux:
        """The output and the attention weights (and a sparse mechanism's indexer outputs)."""
        return AttentionAux(**self.cpp.forward_with_aux(x, attn_mask))

    def init_state(self, batch_size: int) -> _C.DecodeState:
        """An empty decode state for ``batch_size`` sequences; ``state.bytes()`` is its size."""
        return self.cpp.init_state(batch_size)

    @property
    def supports_decoding(self) -> bool:
        return self.cpp.supports_decoding()

    @property
    def dim(self) -> int:
        return self.cpp.dim()

    def train(self, mode: bool = True):
        super().train(mode)
        self.cpp.train(mode)
        return self

    def save_cpp(self, path: str) -> None:
        """Writes the weights in LibTorch's archive format (``torch::save`` of the C++ module)."""
        self.cpp.save(str(path))

    def load_cpp(self, path: str) -> None:
        """Reads weights written by ``torch::save`` of the same C++ mechanism (or save_cpp)."""
        with torch.no_grad():
            self.cpp.load(str(path))

    def __deepcopy__(self, memo):
        other = type(self).__new__(type(self))
        _Bound.__init__(other)
        other.options = copy.deepcopy(self.options, memo)
        other._bind(self.cpp.clone())
        other.train(self.training)
        return other

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


def _catalog():
    return json.loads(_C.mechanism_catalog_json())


def _make_class(info: dict) -> type:
    required = tuple(o["name"] for o in info["options"] if o["required"])
    lines = [f"    {o['name']}: {o['type']} = {'required' if o['required'] else o['default']}"
             for o in info["options"]]
    doc = (f"attnkit's {info['class_name']} ('{info['name']}'): an :class:`attnkit.Attention`.\n\n"
           f"Options (positional: {', '.join(required)}):\n" + "\n".join(lines))
    return type(info["class_name"], (Attention,),
                {"_mechanism": info["name"], "_required": required, "__doc__": doc,
                 "__module__": "attnkit"})


CLASSES = {info["class_name"]: _make_class(info) for info in _catalog()}
_BY_NAME = {}
for _cls in CLASSES.values():
    _BY_NAME[_cls._mechanism.lower()] = _cls
    _BY_NAME[_cls.__name__.lower()] = _cls


def make(name: str, *args: Any, **options: Any) -> Attention:
    """Builds mechanism ``name`` (short name such as "gqa", or class name) from its options."""
    cls = _BY_NAME.get(name.lower())
    if cls is None:
        raise ValueError(f"attnkit.make: unknown mechanism {name!r}; expected one of "
                         f"{sorted(c._mechanism for c in CLASSES.values())}")
    return cls(*args, **options)


def mechanisms() -> list:
    """Every mechanism with its options, types and defaults (the C++ catalogue)."""
    return _catalog()


class SlotAttention(_Bound):
    """Slot attention (Locatello et al., 2020): inputs [B, N, dim] -> slots [B, num_slots, dim].
    The initial slots are drawn with torch's global generator (``torch.manual_seed``)."""

    def __init__(self, dim: int, num_slots: int, num_iters: int = 3, hidden_dim: int = 128,
                 eps: float = 1e-8) -> None:
        super().__init__()
        self.options = dict(dim=dim, num_slots=num_slots, num_iters=num_iters,
                            hidden_dim=hidden_dim, eps=eps)
        self._bind(_C.SlotAttention(**self.options))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self._cpp_module.forward(inputs)

    def train(self, mode: bool = True):
        super().train(mode)
        self._cpp_module.train(mode)
        return self


@dataclasses.dataclass
class CausalJEPAOutput:
    """pred [B, Th + Tp, S, dim]: predicted slots for every frame; mask_slots int64
    [num_masked]: the objects hidden over history frames 1 .. Th-1."""

    pred: torch.Tensor
    mask_slots: torch.Tensor


class CausalJEPAAttention(_Bound):
    """The C-JEPA object-centric predictor: slots [B, Th, S, dim] -> CausalJEPAOutput. Hidden
    objects are drawn with torch's global generator unless ``mask_slots`` is given."""

    def __init__(self, dim: int, num_heads: int, num_slots: int, history_frames: int,
                 pred_frames: int = 1, num_masked_slots: int = 2, depth: int = 6,
                 mlp_dim: int = 0, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        self.options = dict(dim=dim, num_heads=num_heads, num_slots=num_slots,
                            history_frames=history_frames, pred_frames=pred_frames,
                            num_masked_slots=num_masked_slots, depth=depth, mlp_dim=mlp_dim,
                            dropout=dropout, bias=bias)
        self._bind(_C.CausalJEPAAttention(**self.options))

    def forward(self, slots: torch.Tensor,
                mask_slots: Optional[torch.Tensor] = None) -> CausalJEPAOutput:
        return CausalJEPAOutput(*self._cpp_module.forward(slots, mask_slots))

    def predict(self, slots: torch.Tensor) -> torch.Tensor:
        """Rolls out the future from a fully visible history: [B, Th, S, dim] -> [B, Tp, S, dim]."""
        return self._cpp_module.predict(slots)

    def train(self, mode: bool = True):
        super().train(mode)
        self._cpp_module.train(mode)
        return self
