"""``binarize(model)``: swap a model's ``nn.Conv2d`` / ``nn.Linear`` layers for binarized ones.

The swapped layers share the original ``Parameter`` objects, so an optimizer built before the swap
still refers to the right tensors and every ``state_dict`` key is unchanged. Each binarized layer gets
a ``layer_name`` and an ``lre_index`` (its position in the layer registry, the index of its Layer
Recognition Embedding, official ``meta_network.py:MetaMambaHistory``). The registry order is, in priority: the ``order`` argument, the
model's ``binary_layer_order`` attribute (the CIFAR ResNets of :mod:`fsg_bnn.models` set the official
order ``conv1, fc, layer1.0.conv1, ...``, the official ``layer_name_list``), else module registration order.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import torch.nn as nn

from fsg_bnn.layers import BinaryConv2d, BinaryLayer, BinaryLinear

__all__ = ["binarize", "binary_layers"]


def _swap(module: nn.Module, quantizer: str, bits: int, bwn_scale: bool | None) -> nn.Module:
    common = {"quantizer": quantizer, "bits": bits, "bwn_scale": bwn_scale}
    w = module.weight
    factory = {"device": w.device, "dtype": w.dtype}
    if isinstance(module, nn.Conv2d):
        new = BinaryConv2d(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            groups=module.groups,
            bias=module.bias is not None,
            padding_mode=module.padding_mode,
            **factory,
            **common,
        )
    else:
        new = BinaryLinear(
            module.in_features, module.out_features, bias=module.bias is not None, **factory, **common
        )
    new.weight = module.weight
    if module.bias is not None:
        new.bias = module.bias
    new.train(module.training)
    return new


def binarize(
    model: nn.Module,
    quantizer: str = "dorefa",
    bits: int = 1,
    skip: Sequence[str] = (),
    order: Sequence[str] | None = None,
    bwn_scale: bool | None = None,
) -> nn.Module:
    """Binarize every ``nn.Conv2d`` and ``nn.Linear`` of ``model`` in place and return it.

    Args:
        quantizer: ``"dorefa"`` (default, the paper's main setting) or ``"bwn"`` (official ``-q dorefa|BWN``).
        bits: weight bits (1 for binary; DoReFa also accepts more).
        skip: qualified module names (``fnmatch`` patterns) left full precision. The paper binarizes
            all layers, the first conv and the classifier included (as the official
            ``quantized_meta_resnet.py``).
        order: registry order of the binarized layers (the LRE index of ``order[i]`` is ``i``).
        bwn_scale: BWN only: multiply ``sign`` by ``mean|W|``; ``None`` = as the official code (scaled for
            the STE baseline, unscaled under a meta optimizer).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"binarize expects an nn.Module, got {type(model).__name__}")
    targets = []
    for name, mod in model.named_modules():
        if isinstance(mod, BinaryLayer):
            continue
        if type(mod) in (nn.Conv2d, nn.Linear) and not any(fnmatch.fnmatch(name, p) for p in skip):
            targets.append(name)
    if not targets and not any(isinstance(m, BinaryLayer) for m in model.modules()):
        raise ValueError("binarize found no nn.Conv2d or nn.Linear layer to binarize (check `skip`)")
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _swap(getattr(parent, child), quantizer, bits, bwn_scale))
    _assign_indices(model, order if order is not None else getattr(model, "binary_layer_order", None))
    return model


def _assign_indices(model: nn.Module, order: Sequence[str] | None) -> None:
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, BinaryLayer)]
    names = [n for n, _ in found]
    if order is not None:
        known = [n for n in order if n in names]
        rest = [n for n in names if n not in set(known)]
        names = known + rest
    by_name = dict(found)
    for i, n in enumerate(names):
        by_name[n].layer_name = n
        by_name[n].lre_index = i


def binary_layers(model: nn.Module) -> list[tuple[str, BinaryLayer]]:
    """The binarized layers of ``model`` in registry (LRE index) order."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, BinaryLayer)]
    if not found:
        raise ValueError("model has no binarized layer: call fsg_bnn.binarize(model) first")
    if any(m.lre_index < 0 for _, m in found):
        _assign_indices(model, getattr(model, "binary_layer_order", None))
    return sorted(found, key=lambda nm: nm[1].lre_index)
