"""Fold frozen BatchNorm into the convolution before it, for the duration of a ``with`` block.

A BatchNorm in inference mode is an affine map, so ``bn(conv(x))`` equals one convolution with
scaled weights and a bias. Computing that folded weight each step costs almost nothing, removes one
full pass over every activation map forward and backward, and still trains the conv weights and the
BatchNorm's affine parameters through it (about 1.4x faster fine-tuning of EfficientNet-Lite on a
CPU). The module tree and state dict are untouched: only the instances' ``forward`` is swapped, and
restored on exit.

Two more things make the same step cheaper on a CPU (measured in BENCHMARKS.md, P5): a ReLU/ReLU6
after a folded BatchNorm runs inside the convolution's oneDNN kernel (no separate pass over the
activation map; timm's in-place ReLU6 also costs a hidden copy under autograd), and TF-"same"
padding of strided convs writes only the pad border instead of zero-filling a padded copy, its
backward handing the gradient on as a view.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from timm.layers.padding import pad_same_arg
from torch import nn


def _conv_kind(conv: nn.Module) -> str | None:
    if type(conv) is nn.Conv2d:
        return "conv2d"
    try:
        from timm.layers.conv2d_same import Conv2dSame
    except ImportError:  # pragma: no cover - timm is a dependency
        return None
    return "same" if type(conv) is Conv2dSame else None


def _bn_kind(bn: nn.Module) -> str | None:
    if type(bn) is nn.BatchNorm2d:
        return "bn"
    try:
        from timm.layers.norm_act import BatchNormAct2d
    except ImportError:  # pragma: no cover
        return None
    return "bnact" if type(bn) is BatchNormAct2d else None


def foldable_pairs(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(conv, batchnorm) siblings where the BatchNorm directly follows the conv and is in eval mode."""
    pairs = []
    for module in model.modules():
        children = list(module.children())
        for conv, bn in zip(children, children[1:]):
            if (_conv_kind(conv) and _bn_kind(bn) and not bn.training and bn.track_running_stats
                    and conv.bias is None and "forward" not in vars(conv) and "forward" not in vars(bn)):
                pairs.append((conv, bn))
    return pairs


class _PadBorder(torch.autograd.Function):
    """Zero padding that writes the interior once and zeroes only the border; backward is a view."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
        n, c, h, w = x.shape
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        out = torch.empty((n, c, h + top + bottom, w + left + right), dtype=x.dtype, device=x.device,
                          memory_format=fmt)
        out[:, :, top:top + h, left:left + w].copy_(x)
        out[:, :, :top].zero_()
        out[:, :, top + h:].zero_()
        out[:, :, top:top + h, :left].zero_()
        out[:, :, top:top + h, left + w:].zero_()
        ctx.box = (top, h, left, w)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        top, h, left, w = ctx.box
        return grad[:, :, top:top + h, left:left + w], None, None, None, None


class _ConvClamp(torch.autograd.Function):
    """``clamp(conv2d(x, w, b), low, high)`` as one oneDNN kernel (the activation applied as the
    convolution writes its output: no separate pass over the map); backward is the clamp's mask,
    then the usual convolution backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups, low, high):
        attr, scalars = ("relu", []) if high == math.inf else ("hardtanh", [low, high])
        out = torch.ops.mkldnn._convolution_pointwise(x, weight, bias, list(padding), list(stride),
                                                     list(dilation), groups, attr, scalars, "")
        ctx.save_for_backward(x, weight, out)
        ctx.conv = (list(stride), list(padding), list(dilation), groups)
        ctx.bounds, ctx.has_bias = (low, high), bias is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight, out = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        grad = torch.ops.aten.hardtanh_backward(grad, out, *ctx.bounds)
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
        grads = torch.ops.aten.convolution_backward(grad, x, weight, [weight.shape[0]] if ctx.has_bias else None,
                                                    stride, padding, dilation, False, [0, 0], groups, mask)
        return (*grads, None, None, None, None, None, None)


_log = logging.getLogger("graftkit")
_FUSED = {"failed": False}  # set once the op raised at run time: the plain path from then on


def fused_conv_available() -> bool:
    """Whether ``conv2d_clamp`` can run as one oneDNN kernel in this process."""
    return not _FUSED["failed"] and _has_fused_conv_op()


@functools.cache
def _has_fused_conv_op() -> bool:
    """oneDNN's conv + pointwise op (a private op inductor uses); absent from some builds."""
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without the mkldnn namespace
        return False


def _can_fuse_conv_clamp(x: torch.Tensor, padding) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4 and not isinstance(padding, str)
            and fused_conv_available() and torch.backends.mkldnn.enabled and not torch.is_autocast_enabled("cpu"))


def _clamp(out: torch.Tensor, bounds: tuple[float, float]) -> torch.Tensor:
    return F.relu(out) if bounds[1] == math.inf else F.hardtanh(out, *bounds)


def conv2d_clamp(x, weight, bias, stride, padding, dilation, groups, bounds):
    """``conv2d`` then ``clamp`` to ``bounds``, as one kernel where oneDNN can do it. Should the
    private op raise (a build or input it does not support), this and every later call take the
    plain path, with one log line."""
    if _can_fuse_conv_clamp(x, padding):
        try:
            return _ConvClamp.apply(x, weight, bias, tuple(stride), tuple(padding), tuple(dilation), groups,
                                    *bounds)
        except RuntimeError as exc:
            _FUSED["failed"] = True
            _log.warning("oneDNN's fused convolution + activation failed (%s); using the plain "
                         "convolution from now on", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return _clamp(F.conv2d(x, weight, bias, stride, padding, dilation, groups), bounds)


def _folded_conv_forward(conv: nn.Module, bn: nn.BatchNorm2d, clamp: tuple[float, float] | None = None):
    """``bn(conv(x))`` as one conv; ``clamp``: the BatchNorm's activation (ReLU/ReLU6) is applied
    here too, in the same kernel."""
    kind = _conv_kind(conv)

    def forward(x: torch.Tensor) -> torch.Tensor:
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        weight = conv.weight * scale.reshape(-1, 1, 1, 1)
        bias = bn.bias - bn.running_mean * scale
        if kind == "conv2d" and conv.padding_mode != "zeros":  # reflect/replicate/circular: torch pads
            out = conv._conv_forward(x, weight, bias)
            return out if clamp is None else _clamp(out, clamp)  # the BatchNorm's act is no longer run
        padding = conv.padding if kind == "conv2d" else (0, 0)
        if kind == "same":
            left, right, top, bottom = pad_same_arg(list(x.shape[-2:]), conv.kernel_size, conv.stride,
                                                    conv.dilation)
            padding = (min(top, bottom), min(left, right))
            if (top, bottom, left, right) != (padding[0], padding[0], padding[1], padding[1]):
                x = _PadBorder.apply(x, top - padding[0], bottom - padding[0], left - padding[1],
                                     right - padding[1])
        if clamp is not None:
            return conv2d_clamp(x, weight, bias, conv.stride, padding, conv.dilation, conv.groups, clamp)
        return F.conv2d(x, weight, bias, conv.stride, padding, conv.dilation, conv.groups)

    return forward


def _clamp_bounds(bn: nn.Module) -> tuple[float, float] | None:
    """(low, high) when the BatchNorm's activation is a plain clamp (ReLU, ReLU6) with no dropout."""
    if _bn_kind(bn) != "bnact" or not isinstance(bn.drop, nn.Identity):
        return None
    return {nn.ReLU6: (0.0, 6.0), nn.ReLU: (0.0, math.inf)}.get(type(bn.act))


def _bn_without_norm(bn: nn.Module, act_in_conv: bool):
    """What is left of a folded BatchNorm: nothing, or its activation unless the conv applies it."""
    if _bn_kind(bn) == "bn" or act_in_conv:
        return lambda x: x
    return lambda x: bn.act(bn.drop(x))  # BatchNormAct2d: norm, then drop, then act


@contextlib.contextmanager
def fold_frozen_batchnorm(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Within the block, every frozen (eval-mode) BatchNorm after a conv is folded into it.

    Yields the number of folded pairs. Set the model's train/eval mode before entering.
    """
    pairs = foldable_pairs(model) if enabled else []
    for conv, bn in pairs:
        clamp = _clamp_bounds(bn)
        conv.forward = _folded_conv_forward(conv, bn, clamp)
        bn.forward = _bn_without_norm(bn, act_in_conv=clamp is not None)
    try:
        yield len(pairs)
    finally:
        for conv, bn in pairs:
            del conv.forward
            del bn.forward
