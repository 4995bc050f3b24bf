"""The saved-model format: a folder with

    model.json          {"format": "jsp-model/2",
                         "architecture": {"name": registry key, "args": {...}},
                         "layers": width of every convolution / BatchNorm after pruning,
                         "process": the data processing it was trained with (declarative),
                         "dataset": {"name": registry key, "args": {...}},
                         class names, input size, the metrics it scored, ...}
    model.safetensors   the weights (state dict)

A saved model is something people send each other, so loading treats it as data: the
architecture is looked up in jsp's own registry (``jsp.registry``) and every argument is
checked; nothing in the file is instantiated, no pickle runs; the weights' header is checked
against the layer spec, and the network's size is checked on the ``meta`` device (no memory)
before anything real is allocated. Files written by jsp before format 2 (``builder`` with a
``_target_``) still load: the target string is only compared with the registry's names.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from jsp.errors import JSPError
from jsp.registry import Arg, Entry, UntrustedInputError, check_args, check_process, key_of
from jsp.files import write_bytes, write_safetensors

FORMAT = "jsp-model/2"
OLD_FORMAT = "jsp-model/1"
BN = nn.modules.batchnorm._BatchNorm
MAX_PARAMS = int(2e9)           # default bound on the parameters a saved model may ask for
MAX_JSON_BYTES = 16 * 2**20
MAX_INPUT_PIXELS = 2**24        # 16.8 MP: twice HRF at full resolution
LAYER_ATTRS = {"in_channels", "out_channels", "groups", "num_features"}
# The plain values that jsp-eval / jsp-export read from model.json besides the architecture.
INFO = {"in_channels": Arg(int, 1, 64), "input_size": Arg(int, 1, 65536, is_list=True, max_len=2),
        "class_names": Arg(str, is_list=True, max_len=1024), "stage": Arg(str, optional=True),
        "ignore_index": Arg(int, 0, 65535, optional=True)}


def layer_spec(model: nn.Module) -> dict[str, dict]:
    """Channel widths of every convolution and BatchNorm, by module name."""
    spec = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            spec[name] = {"in_channels": m.in_channels, "out_channels": m.out_channels, "groups": m.groups}
        elif isinstance(m, BN):
            spec[name] = {"num_features": m.num_features}
    return spec


def save_model(folder: str | Path, model: nn.Module, architecture: dict, **info) -> Path:
    """Write ``model.json`` and ``model.safetensors`` into ``folder`` (created).

    architecture: {"name": registry key, "args": {...}} that builds the dense network.
    info: anything JSON-serialisable to keep beside it (process, dataset, metrics, stage).
    Both files are written to temporary names and renamed, so a full disk leaves the old ones.
    """
    check_args("model", architecture.get("name"), architecture.get("args"), "architecture")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_safetensors(folder / "model.safetensors", state)
    meta = {"format": FORMAT, "architecture": architecture, "layers": layer_spec(model), **info}
    write_bytes(folder / "model.json", json.dumps(meta, indent=2, default=float).encode())
    return folder


def narrow_to(model: nn.Module, layers: dict[str, dict], state: dict[str, torch.Tensor]) -> None:
    """Give every layer the saved widths and tensors of the saved shapes (on the model's device)."""
    modules = dict(model.named_modules())
    for name, spec in layers.items():
        m = modules.get(name)
        if m is None:
            raise UntrustedInputError(f"layers.{name}: the built network has no such layer")
        for attr, value in spec.items():
            setattr(m, attr, value)
    for key, value in state.items():
        owner, _, attr = key.rpartition(".")
        m = modules.get(owner)
        if m is None:
            continue
        current = getattr(m, attr, None)
        if isinstance(current, torch.Tensor) and current.shape != value.shape:
            empty = torch.empty(value.shape, dtype=current.dtype, device=current.device)
            if isinstance(current, nn.Parameter):
                setattr(m, attr, nn.Parameter(empty))
            else:
                m.register_buffer(attr, empty)


def read_meta(meta_path: Path) -> dict:
    """model.json as a dict, refusing anything that is not a bounded JSON object."""
    if meta_path.stat().st_size > MAX_JSON_BYTES:
        raise UntrustedInputError(f"{meta_path}: larger than {MAX_JSON_BYTES // 2**20} MB; not a jsp model description")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise UntrustedInputError(f"{meta_path} is not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise UntrustedInputError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format") not in (FORMAT, OLD_FORMAT):
        raise UntrustedInputError(f"{meta_path} is not a jsp model description (format {meta.get('format')!r})")
    return meta


def refuse_targets(node, path: str = "", allowed: tuple = (), depth: int = 0) -> None:
    """Refuse a ``_target_`` key anywhere in the file (format 1's two known ones excepted,
    and those are only compared with registry names): nothing in a file names code to run."""
    if depth > 32:
        raise UntrustedInputError(f"{path}: nested deeper than 32 levels")
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key in ("_target_", "_args_", "_partial_", "_recursive_", "_convert_") and where not in allowed:
                raise UntrustedInputError(f"{where}: a saved model names builders by registry key; "
                                          "targets in files are never called")
            refuse_targets(value, where, allowed, depth + 1)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            refuse_targets(value, f"{path}[{i}]", allowed, depth + 1)


def architecture_of(meta: dict) -> tuple[Entry, dict]:
    """The registry entry and checked arguments that build the dense network."""
    if meta["format"] == OLD_FORMAT:  # {"_target_": "jsp.models.UNet", **args}: compare, never import
        builder = meta.get("builder")
        if not isinstance(builder, dict):
            raise UntrustedInputError("builder: expected an object")
        try:
            name = key_of("model", str(builder.get("_target_")))
        except JSPError:
            raise UntrustedInputError(f"builder._target_: refusing to build {builder.get('_target_')!r} "
                                      "(only jsp's registered models are built)") from None
        return check_args("model", name, {k: v for k, v in builder.items() if k != "_target_"}, "builder")
    arch = meta.get("architecture")
    if not isinstance(arch, dict):
        raise UntrustedInputError("architecture: expected an object with name and args")
    return check_args("model", arch.get("name"), arch.get("args", {}), "architecture", arch.get("plugin"))


def dataset_of(meta: dict) -> tuple[Entry, dict, dict]:
    """(registry entry, checked arguments, checked processing spec) of the data the model was trained on."""
    data = meta.get("dataset")
    if not isinstance(data, dict):
        raise UntrustedInputError("dataset: expected an object; give dataset=NAME dataset.root=PATH instead")
    if meta["format"] == OLD_FORMAT:  # {"_target_": "jsp.data.load_drive", "process": {...}, **args}
        if "_target_" not in data:
            raise UntrustedInputError("dataset._target_: missing")
        try:
            name = key_of("dataset", str(data["_target_"]))
        except JSPError:
            raise UntrustedInputError(f"dataset._target_: refusing to call {data['_target_']!r} "
                                      "(only jsp's registered datasets are loaded)") from None
        args = {k: v for k, v in data.items() if k not in ("_target_", "process", "fov_cache")}
        entry, args = check_args("dataset", name, args, "dataset")
        return entry, args, check_process(data.get("process"), "dataset.process")
    entry, args = check_args("dataset", data.get("name"), data.get("args", {}), "dataset", data.get("plugin"))
    return entry, args, check_process(meta.get("process"), "process")


def check_layers(layers) -> dict[str, dict]:
    if not isinstance(layers, dict):
        raise UntrustedInputError("layers: expected an object")
    for name, spec in layers.items():
        if not isinstance(spec, dict) or not spec or not set(spec) <= LAYER_ATTRS:
            raise UntrustedInputError(f"layers.{name}: expected some of {sorted(LAYER_ATTRS)}")
        for attr, value in spec.items():
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 2**20:
                raise UntrustedInputError(f"layers.{name}.{attr}: expected an integer in [1, 1048576], got {value!r}")
    return layers


def weight_shapes(weights: Path, max_params: int) -> dict[str, tuple]:
    """Tensor shapes from the safetensors header (no data read), bounded by ``max_params``."""
    try:
        with safe_open(str(weights), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # truncated or foreign file
        raise JSPError(f"cannot read weights {weights}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    total = sum(math.prod(s) for s in shapes.values())
    if total > max_params:
        raise UntrustedInputError(f"{weights}: {total:,} values, more than max_params={max_params:,}")
    return shapes


def implied_shapes(model: nn.Module) -> dict[str, tuple]:
    """Tensor shapes that the layers' width attributes imply (not the tensors they hold)."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for name, m in model.named_modules():
        p = f"{name}." if name else ""
        if isinstance(m, nn.ConvTranspose2d):
            shapes[p + "weight"] = (m.in_channels, m.out_channels // m.groups, *m.kernel_size)
        elif isinstance(m, nn.Conv2d):
            shapes[p + "weight"] = (m.out_channels, m.in_channels // m.groups, *m.kernel_size)
        elif isinstance(m, BN):
            for t in ("weight", "bias", "running_mean", "running_var"):
                if p + t in shapes:
                    shapes[p + t] = (m.num_features,)
            continue
        else:
            continue
        if m.bias is not None:
            shapes[p + "bias"] = (m.out_channels,)
    return shapes


def build_checked(entry: Entry, args: dict, layers: dict, shapes: dict, max_params: int) -> nn.Module:
    """Build on the meta device first: size and shapes are checked before memory is used."""
    with torch.device("meta"):
        probe = entry.build(**args)
    dense = sum(p.numel() for p in probe.parameters())
    if dense > max_params:
        raise UntrustedInputError(f"architecture.args: the network would have {dense:,} parameters, more than "
                                  f"max_params={max_params:,}")
    narrow_to(probe, layers, {})
    expected = implied_shapes(probe)
    for key in sorted(set(expected) | set(shapes)):
        if expected.get(key) != shapes.get(key):
            raise UntrustedInputError(f"weights do not fit the layer spec: {key} is {shapes.get(key)} in the file, "
                                      f"the network needs {expected.get(key)}")
    return entry.build(**args)


def load_model(folder: str | Path, map_location: str | torch.device = "cpu",
               max_params: int = MAX_PARAMS) -> tuple[nn.Module, dict]:
    """Rebuild a saved (dense or pruned) model; returns (model in eval mode, model.json content).

    Raises JSPError (one line, naming the offending key) for anything jsp would not build.
    """
    folder = Path(folder)
    if folder.is_file() and folder.name in ("model.json", "model.safetensors"):
        folder = folder.parent
    meta_path, weights = folder / "model.json", folder / "model.safetensors"
    if not meta_path.is_file() or not weights.is_file():
        raise JSPError(f"{folder} is not a saved jsp model: expected {meta_path.name} and {weights.name} in it")
    meta = read_meta(meta_path)
    try:
        refuse_targets(meta, allowed=("builder._target_", "dataset._target_") if meta["format"] == OLD_FORMAT else ())
        entry, args = architecture_of(meta)
        if "dataset" in meta:
            dataset_of(meta)
        layers = check_layers(meta.get("layers", {}))
        if meta.get("process") is not None:
            meta["process"] = check_process(meta["process"], "process")
        for key, arg in INFO.items():
            if key in meta:
                meta[key] = arg.check(meta[key], key)
        if math.prod(meta.get("input_size") or [1]) > MAX_INPUT_PIXELS:  # jsp-export traces at this size
            raise UntrustedInputError(f"input_size: {meta['input_size']} is more than {MAX_INPUT_PIXELS:,} pixels")
        if not isinstance(meta.get("metrics", {}), dict):
            raise UntrustedInputError("metrics: expected an object")
    except UntrustedInputError as e:
        raise UntrustedInputError(f"{meta_path}: {e}") from None
    shapes = weight_shapes(weights, max_params)
    try:
        model = build_checked(entry, args, layers, shapes, max_params)
    except UntrustedInputError as e:
        raise UntrustedInputError(f"{meta_path}: {e}") from None
    state = load_file(str(weights))
    narrow_to(model, layers, state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise JSPError(f"weights in {weights} do not fit the saved architecture: {str(e).splitlines()[0]}") from None
    return model.to(map_location).eval(), meta
