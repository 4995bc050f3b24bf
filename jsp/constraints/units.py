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


#: Which parameters make up a unit's group, by name (method.md "Units"):
#:   theta  its filter W_u, bias b_u and BatchNorm affine (gamma_u, beta_u): the v1 reading;
#:   scale  its scale parameters s_u: (gamma_u, beta_u) after a normalisation, else (W_u, b_u);
#:   gamma  the BatchNorm scale alone (network slimming); units without one have none;
#:   filter the convolution filter W_u alone (v1's gradient counting).
KINDS = ("theta", "scale", "gamma", "filter")


@dataclass(eq=False)
class UnitLayer:
    """The units of one convolution.

    ``theta_u`` is the filter ``W_u``, the bias ``b_u`` and the BatchNorm affine
    ``(gamma_u, beta_u)`` of output channel u; ``dim`` is its number of entries. The scale
    parameters ``s_u`` (``kind="scale"``) are what sets the size of the unit's output.
    """

    name: str
    conv: nn.Conv2d | nn.ConvTranspose2d
    bn: nn.modules.batchnorm._BatchNorm | None = None
    pixels: int = 1   # output positions at the trace input (relative MAC cost per weight)

    @property
    def out_dim(self) -> int:
        """Axis of the weight that indexes output channels (1 for transposed convolutions)."""
        return 1 if isinstance(self.conv, nn.ConvTranspose2d) else 0

    @property
    def size(self) -> int:
        return self.conv.weight.shape[self.out_dim]

    @property
    def normalised(self) -> bool:
        return self.bn is not None and self.bn.affine

    @property
    def dim(self) -> int:
        return self.dim_of("theta")

    def params(self, kind: str = "theta") -> list[tuple[torch.Tensor, int]]:
        """The tensors of each unit's group ``kind``, as (tensor, axis that indexes units)."""
        conv = [(self.conv.weight, self.out_dim)] + ([] if self.conv.bias is None else [(self.conv.bias, 0)])
        bn = [(self.bn.weight, 0), (self.bn.bias, 0)] if self.normalised else []
        if kind == "theta":
            return conv + bn
        if kind == "scale":
            return bn or conv
        if kind == "gamma":
            return bn[:1]
        if kind == "filter":
            return conv[:1]
        raise ValueError(f"unit parameter kind must be one of {KINDS}, got {kind!r}")

    def dim_of(self, kind: str) -> int:
        """Entries per unit in group ``kind`` (0 when the layer has none)."""
        return sum(t.numel() // t.shape[axis] for t, axis in self.params(kind))

    def rows(self, t: torch.Tensor, axis: int) -> torch.Tensor:
        """(U, D) ``t`` with the unit axis first (a copy for transposed convolutions)."""
        return t.transpose(0, axis).reshape(self.size, -1) if t.dim() > 1 else t.view(self.size, 1)

    def filters(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """(U, D) rows = the units' filters (``weight`` defaults to the conv's)."""
        return self.rows(self.conv.weight if weight is None else weight, self.out_dim)

    def sq_norms(self, kind: str = "theta", grad: bool = False) -> torch.Tensor:
        """(U,) ||group_u||^2 of the parameters (differentiable) or of their .grad (detached;
        zero where a tensor has no gradient)."""
        sq = torch.zeros(self.size, device=self.conv.weight.device)
        for t, axis in self.params(kind):
            if grad:
                if t.grad is None:
                    continue
                t = t.grad
            sq = sq + torch.linalg.vector_norm(self.rows(t, axis), dim=1).square()
        return sq

    def norms(self, kind: str = "scale") -> torch.Tensor:
        """(U,) n_u = ||group_u||_2 / sqrt(dim), detached: the unit's RMS magnitude.

        The default, the scale parameters, is zero exactly when the unit's output is zero."""
        with torch.no_grad():
            return self.sq_norms(kind).sqrt() / max(self.dim_of(kind), 1) ** 0.5

    def extras(self) -> list[torch.Tensor]:
        """The (U,) parameters of each unit besides its filter: bias, BN scale and shift."""
        return [t for t, _ in self.params("theta")[1:]]

    def gammas(self) -> torch.Tensor | None:
        return self.bn.weight if self.normalised else None

    def off(self, eps: float) -> torch.Tensor:
        """(U,) bool: units whose output is zero (n_u <= eps * the layer's largest) or, after a
        normalisation, a constant (|gamma_u| <= eps * the layer's largest |gamma|)."""
        n = self.norms()
        out = n <= eps * n.max().clamp_min(1e-12)
        if self.normalised:
            g = self.bn.weight.detach().abs()
            out |= g <= eps * g.max().clamp_min(1e-12)
        return out

    @torch.no_grad()
    def zero_(self, units: torch.Tensor) -> None:
        """Set the scale parameters s_u of the ``units`` ((U,) bool) to exactly zero: their
        outputs become exactly zero, so removing them changes no output."""
        for t, axis in self.params("scale"):
            t.transpose(0, axis)[units.to(t.device)] = 0


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
    pixels: dict[str, int] = {}
    keep_alive = []                    # tensors must outlive the trace so ids stay unique

    def conv_hook(name):
        def hook(module, inputs, output):
            produced_by[id(output)] = name
            order.append(name)
            pixels[name] = output.shape[-1] * output.shape[-2]
            keep_alive.append(output)
        return hook

    def bn_hook(module, inputs, output):
        src = produced_by.get(id(inputs[0]))
        if src is not None and src not in bn_of and module.num_features == inputs[0].shape[1]:
            bn_of[src] = module
        keep_alive.append(output)

    handles = [m.register_forward_hook(conv_hook(n)) for n, m in convs] + [
        m.register_forward_hook(bn_hook) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
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
    return [UnitLayer(name, modules[name], bn_of.get(name), pixels[name]) for name in dict.fromkeys(order)
            if name != classifier]


def unit_costs(layers: list[UnitLayer], mode: str) -> torch.Tensor:
    """(total units,) what removing each unit saves, relative to the mean unit: its filter's
    weights ("params") or weights times output positions ("macs"); the input slices it
    takes from its consumers are of the same order and left out."""
    if not layers:
        return torch.zeros(0)
    per = [l.conv.weight.numel() / l.size * (l.pixels if mode == "macs" else 1) for l in layers]
    cost = torch.cat([torch.full((l.size,), c, device=l.conv.weight.device) for l, c in zip(layers, per)])
    return cost / cost.mean()


def off_fractions(layers: list[UnitLayer], eps: float) -> tuple[float, dict[str, float]]:
    """Fraction of units switched off (``UnitLayer.off``: zero or constant output).

    Returns (fraction over all units, {layer name: fraction}).
    """
    per_layer, off, total = {}, 0, 0
    for layer in layers:
        dead = layer.off(eps).sum().item()
        per_layer[layer.name] = dead / layer.size
        off, total = off + dead, total + layer.size
    return (off / total if total else 0.0), per_layer


@torch.no_grad()
def snap_off(layers: list[UnitLayer], eps: float) -> tuple[int, int]:
    """Make the switched-off units (``UnitLayer.off``) exactly what the threshold cut assumes:
    a unit whose scale is at most ``eps`` of its layer's largest gets s_u = 0 (zero output); a
    normalised unit whose |gamma| is that small gets gamma = 0 (its output is then exactly the
    constant beta, which the cut folds into its consumers). Returns (zeroed, made constant)."""
    zeroed = constant = 0
    for layer in layers:
        n = layer.norms()
        small = n <= eps * n.max().clamp_min(1e-12)
        layer.zero_(small & (n > 0))
        zeroed += int((small & (n > 0)).sum())
        if layer.normalised:
            g = layer.bn.weight
            flat = (g.abs() <= eps * g.abs().max().clamp_min(1e-12)) & ~small & (g != 0)
            g[flat] = 0
            constant += int(flat.sum())
    return zeroed, constant
