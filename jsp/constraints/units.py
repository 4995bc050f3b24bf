"""Prunable units: one output channel of a convolution, with its bias and following BatchNorm.

Units are found by tracing one forward pass: every Conv2d / ConvTranspose2d (depthwise and
squeeze-excitation convolutions included) is a layer of units, paired with the BatchNorm that
consumes its output directly. The convolution that produces the model's output (the
classifier) is never a layer of units: its output channels are the classes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

CONVS = (nn.Conv2d, nn.ConvTranspose2d)


@dataclass(eq=False)
class UnitLayer:
    """The units of one convolution.

    ``theta_u`` is the filter ``W_u``, the bias ``b_u`` and the BatchNorm affine
    ``(gamma_u, beta_u)`` of output channel u; ``dim`` is its number of entries.
    """

    name: str
    conv: nn.Conv2d | nn.ConvTranspose2d
    bn: nn.modules.batchnorm._BatchNorm | None = None

    @property
    def out_dim(self) -> int:
        """Axis of the weight that indexes output channels (1 for transposed convolutions)."""
        return 1 if isinstance(self.conv, nn.ConvTranspose2d) else 0

    @property
    def size(self) -> int:
        return self.conv.weight.shape[self.out_dim]

    @property
    def dim(self) -> int:
        per_unit = self.conv.weight.numel() // self.size
        return per_unit + (self.conv.bias is not None) + (2 if self.bn is not None and self.bn.affine else 0)

    def filters(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """(U, D) rows = the units' filters (``weight`` defaults to the conv's)."""
        w = self.conv.weight if weight is None else weight
        return w.transpose(0, self.out_dim).reshape(self.size, -1)

    def sq_norms(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """(U,) differentiable ||theta_u||^2."""
        sq = self.filters(weight).pow(2).sum(1)
        if self.conv.bias is not None:
            sq = sq + self.conv.bias.pow(2)
        if self.bn is not None and self.bn.affine:
            sq = sq + self.bn.weight.pow(2) + self.bn.bias.pow(2)
        return sq

    def norms(self) -> torch.Tensor:
        """(U,) ||theta_u||_2 / sqrt(dim theta_u), detached: the unit's RMS magnitude."""
        with torch.no_grad():
            sq = torch.linalg.vector_norm(self.filters(), dim=1).square()  # fused, no temporary
            for extra in self.extras():
                sq += extra.square()
            return sq.sqrt() / self.dim**0.5

    def extras(self) -> list[torch.Tensor]:
        """The (U,) parameters of each unit besides its filter: bias, BN scale and shift."""
        out = [] if self.conv.bias is None else [self.conv.bias]
        if self.bn is not None and self.bn.affine:
            out += [self.bn.weight, self.bn.bias]
        return out

    def gammas(self) -> torch.Tensor | None:
        return None if self.bn is None or not self.bn.affine else self.bn.weight


def find_units(model: nn.Module, in_channels: int | None = None, size: int | None = None) -> list[UnitLayer]:
    """Trace one forward pass of a (1, in_channels, size, size) zero input; return the unit layers.

    The model is put in eval mode for the trace (BatchNorm statistics are not touched) and
    restored afterwards.
    """
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, CONVS)]
    if not convs:
        return []
    in_channels = in_channels or convs[0][1].in_channels
    size = size or 2 * int(getattr(model, "pad_multiple", 32))
    produced_by: dict[int, str] = {}   # id(output tensor) -> conv name
    bn_of: dict[str, nn.Module] = {}
    order: list[str] = []
    keep_alive = []                    # tensors must outlive the trace so ids stay unique

    def conv_hook(name):
        def hook(module, inputs, output):
            produced_by[id(output)] = name
            order.append(name)
            keep_alive.append(output)
        return hook

    def bn_hook(module, inputs, output):
        src = produced_by.get(id(inputs[0]))
        if src is not None and src not in bn_of and module.num_features == inputs[0].shape[1]:
            bn_of[src] = module
        keep_alive.append(output)

    handles = [m.register_forward_hook(conv_hook(n)) for n, m in convs]
    handles += [m.register_forward_hook(bn_hook) for m in model.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was_training = model.training
    param = next(model.parameters())
    try:
        model.eval()
        with torch.no_grad():
            out = model(torch.zeros(1, in_channels, size, size, device=param.device, dtype=param.dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out = out[0] if isinstance(out, (tuple, list)) else out
    # The classifier produced the output; if something (an upsampling) came after it, it is
    # the last convolution that ran.
    classifier = produced_by.get(id(out), order[-1] if order else None)
    modules = dict(convs)
    return [UnitLayer(name, modules[name], bn_of.get(name)) for name in dict.fromkeys(order)
            if name != classifier]


def off_fractions(layers: list[UnitLayer], eps: float) -> tuple[float, dict[str, float]]:
    """Fraction of units whose normalised norm ||theta_u|| / max_layer ||theta|| is <= eps.

    Returns (fraction over all units, {layer name: fraction}).
    """
    per_layer, off, total = {}, 0, 0
    for layer in layers:
        n = layer.norms()
        dead = (n <= eps * n.max().clamp_min(1e-12)).sum().item()
        per_layer[layer.name] = dead / layer.size
        off, total = off + dead, total + layer.size
    return (off / total if total else 0.0), per_layer
