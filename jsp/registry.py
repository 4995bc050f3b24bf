"""Registries of jsp's own builders, and the checks that let a file from elsewhere name them.

A saved model (``model.json``) may have been sent by someone else, so it is data, never code:
it names its architecture and dataset by a key of these registries, and every argument is
checked to be a JSON scalar (or a list of scalars) of the expected type and range before the
registered function is called. Nothing in a file is ever handed to ``instantiate``.

The same tables let the pipeline record, for a model or dataset built from a (trusted)
Hydra config, which key and arguments rebuild it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from jsp.errors import JSPError


class UntrustedInputError(JSPError):
    """A file from elsewhere asks for something jsp does not build, or for too much."""


@dataclass(frozen=True)
class Arg:
    """One allowed argument: its JSON type, a range or a set of choices, list-ness."""

    kind: type                      # int, float, str or bool
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None
    is_list: bool = False           # a list of ``kind`` (at most ``max_len`` items)
    optional: bool = False          # None allowed
    max_len: int = 16
    pattern: str | None = None      # a regular expression the whole string must match

    def check(self, value: Any, where: str) -> Any:
        if value is None:
            if self.optional:
                return None
            raise UntrustedInputError(f"{where}: must not be null")
        if self.is_list:
            if not isinstance(value, list) or len(value) > self.max_len:
                raise UntrustedInputError(f"{where}: expected a list of at most {self.max_len} "
                                          f"{self.kind.__name__} values, got {_show(value)}")
            return [self._scalar(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return self._scalar(value, where)

    def _scalar(self, value: Any, where: str) -> Any:
        ok = isinstance(value, self.kind) and not (self.kind is not bool and isinstance(value, bool))
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if not ok:
            raise UntrustedInputError(f"{where}: expected {self.kind.__name__}, got {_show(value)}")
        if self.choices is not None and value not in self.choices:
            raise UntrustedInputError(f"{where}: expected one of {list(self.choices)}, got {_show(value)}")
        if isinstance(value, str) and len(value) > 4096:
            raise UntrustedInputError(f"{where}: string longer than 4096 characters")
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise UntrustedInputError(f"{where}: {_show(value)} is not a valid name")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise UntrustedInputError(f"{where}: {value} is outside [{self.low}, {self.high}]")
        return value


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True)
class Entry:
    """A registered builder: the function, the Hydra ``_target_`` strings that name it, its arguments."""

    build: Callable[..., Any]
    targets: tuple[str, ...]
    args: dict[str, Arg]
    plugin: dict | None = None      # {"package", "version"} of a plug-in's entry (jsp/plugins.py)


def _models() -> dict[str, Entry]:
    from jsp.models.smp_models import MOBILENETV3, SMPModel, mobilenetv3
    from jsp.models.unet import UNet

    common = {"in_channels": Arg(int, 1, 64), "num_classes": Arg(int, 1, 1024)}
    name = Arg(str, pattern=r"[A-Za-z0-9_.-]{1,64}")
    return {
        "unet": Entry(UNet, ("jsp.models.UNet", "jsp.models.unet.UNet"),
                      {**common, "width": Arg(int, 1, 4096), "depth": Arg(int, 1, 8)}),
        "mobilenetv3": Entry(mobilenetv3, ("jsp.models.mobilenetv3", "jsp.models.smp_models.mobilenetv3"),
                             {**common, "variant": Arg(str, choices=tuple(MOBILENETV3)),
                              "decoder_channels": Arg(int, 1, 8192, is_list=True)}),
        "smp": Entry(SMPModel, ("jsp.models.SMPModel", "jsp.models.smp_models.SMPModel"),
                     {**common, "arch": name, "encoder": name, "encoder_depth": Arg(int, 1, 6),
                      "decoder_channels": Arg(int, 1, 8192, is_list=True, optional=True)}),
    }


def _datasets() -> dict[str, Entry]:
    import jsp.data as d

    root, count = Arg(str), Arg(int, 0, 100_000)
    fraction, scale = Arg(float, 0.0, 1.0), Arg(float, 1e-3, 16.0)
    names = Arg(str, is_list=True, optional=True, max_len=1024)
    return {
        "drive": Entry(d.load_drive, ("jsp.data.load_drive",), {"root": root, "val_count": count}),
        "chase_db1": Entry(d.load_chase_db1, ("jsp.data.load_chase_db1",),
                           {"root": root, "train_count": count, "val_count": count}),
        "stare": Entry(d.load_stare, ("jsp.data.load_stare",),
                       {"root": root, "train_count": count, "val_count": count}),
        "hrf": Entry(d.load_hrf, ("jsp.data.load_hrf",),
                     {"root": root, "scale": scale, "train_count": count, "val_count": count}),
        "camvid": Entry(d.load_camvid, ("jsp.data.load_camvid",),
                        {"root": root, "scale": scale, "class_names": names, "ignore_index": Arg(int, 0, 65535)}),
        "folder": Entry(d.load_folder, ("jsp.data.load_folder",),
                        {"root": root, "num_classes": Arg(int, 1, 1024), "ignore_index": Arg(int, 0, 65535, optional=True),
                         "class_names": names, "val_fraction": fraction, "test_fraction": fraction,
                         "seed": Arg(int, 0, 2**32 - 1), "scale": scale}),
        "synthetic": Entry(d.make_synthetic, ("jsp.data.make_synthetic",),
                           {"seed": Arg(int, 0, 2**32 - 1), "image_size": Arg(int, 16, 2048),
                            "num_train": Arg(int, 1, 10_000), "num_val": Arg(int, 1, 10_000),
                            "num_test": Arg(int, 1, 10_000)}),
    }


# How a model turns images into tensors: a declarative spec, checked like the arguments.
PROCESS = {"channels": Arg(str, choices=("rgb", "green")), "clahe": Arg(bool),
           "patch_size": Arg(int, 8, 8192), "augment": Arg(bool)}

_TABLES: dict[str, Callable[[], dict[str, Entry]]] = {"model": _models, "dataset": _datasets}
_BOUNDS = {int: (-2**31, 2**31), float: (-1e12, 1e12)}


def _arg_of(default: Any, bounds: tuple | None) -> Arg | None:
    """The Arg a plug-in's keyword with this default accepts (None: not a JSON scalar or list)."""
    if isinstance(default, list):
        kinds = {type(v) for v in default} or {float}
        kind = kinds.pop() if len(kinds) == 1 else float
        return Arg(kind, *(bounds or _BOUNDS.get(kind, (None, None))), is_list=True, max_len=64) \
            if kind in (int, float, str, bool) else None
    if default is None:
        return Arg(str, optional=True)
    kind = type(default)
    return Arg(kind, *(bounds or _BOUNDS.get(kind, (None, None)))) if kind in (int, float, str, bool) else None


def _plugin_entries(kind: str) -> dict[str, Entry]:
    """Installed plug-ins of ``kind`` as entries: arguments from their keyword defaults, with
    the ranges a plug-in declares in ``jsp_ranges`` ({name: (low, high)}) where it does."""
    from jsp.plugins import plugins, signature_defaults

    out = {}
    for key, plugin in plugins(kind).items():
        obj = plugin.load()
        ranges = getattr(obj, "jsp_ranges", {}) or {}
        args = {k: a for k, v in signature_defaults(obj).items() if (a := _arg_of(v, ranges.get(k))) is not None}
        if kind == "model":
            args.update({"in_channels": Arg(int, 1, 64), "num_classes": Arg(int, 1, 1024)})
        out[key] = Entry(obj, (plugin.target,), args, plugin.record())
    return out


def table(kind: str) -> dict[str, Entry]:
    """The registry of ``kind`` ("model" or "dataset"): key -> Entry; installed plug-ins
    after jsp's own (whose names they cannot take)."""
    own = _TABLES[kind]()
    return {**{k: e for k, e in _plugin_entries(kind).items() if k not in own}, **own}


def key_of(kind: str, target: str) -> str:
    """The registry key of a Hydra ``_target_`` string (a trusted config's), or a clear error."""
    for key, entry in table(kind).items():
        if target in entry.targets:
            return key
    raise JSPError(f"{kind}._target_={target!r} is not one of jsp's registered {kind}s "
                   f"({', '.join(table(kind))}); saved models can only name those")


def check_args(kind: str, key: Any, args: Any, where: str, plugin: Any = None) -> tuple[Entry, dict]:
    """Validate ``key`` and ``args`` from a file; returns (entry, checked arguments).
    plugin: the file's record of the plug-in that built it (only quoted in the refusal)."""
    entries = table(kind)
    if isinstance(key, str) and key not in entries and isinstance(plugin, dict):
        package, version = _show(plugin.get("package")).strip("'"), _show(plugin.get("version")).strip("'")
        raise UntrustedInputError(f"{where}: {kind} {_show(key)} comes from the jsp plug-in package {package} "
                                  f"{version}, which is not installed here (pip install {package})")
    if not isinstance(key, str) or key not in entries:
        raise UntrustedInputError(f"{where}.name: expected one of {list(entries)}, got {_show(key)}")
    if not isinstance(args, dict):
        raise UntrustedInputError(f"{where}.args: expected an object, got {_show(args)}")
    entry, checked = entries[key], {}
    for name, value in args.items():
        if name not in entry.args:
            raise UntrustedInputError(f"{where}.args.{name}: not an argument of {kind} {key!r} "
                                      f"(expected some of {', '.join(entry.args)})")
        checked[name] = entry.args[name].check(value, f"{where}.args.{name}")
    return entry, checked


def check_process(process: Any, where: str) -> dict:
    """Validate a data-processing spec ({channels, clahe, patch_size, augment})."""
    if not isinstance(process, dict):
        raise UntrustedInputError(f"{where}: expected an object, got {_show(process)}")
    missing = [k for k in ("channels", "clahe") if k not in process]
    if missing:
        raise UntrustedInputError(f"{where}.{missing[0]}: missing")
    out = {}
    for name, value in process.items():
        if name not in PROCESS:
            raise UntrustedInputError(f"{where}.{name}: not a processing setting (expected some of {', '.join(PROCESS)})")
        out[name] = PROCESS[name].check(value, f"{where}.{name}")
    return out


# Settings that say where to write, not what to build: a file never chooses them (a dataset
# rebuilt from model.json caches derived FOV masks in the default place).
# The initial encoder weights say where training started, not what to build: a saved model's
# own weights replace them, so it never names a file on the machine that trained it.
NOT_RECORDED = ("_target_", "process", "fov_cache", "encoder_weights")


def describe(kind: str, node: dict) -> dict:
    """{"name", "args"} for a trusted config node ``{_target_, **kwargs}`` (what model.json records)."""
    args = {k: v for k, v in node.items() if k not in NOT_RECORDED}
    key = key_of(kind, str(node.get("_target_", "")))
    entry, _ = check_args(kind, key, args, kind)  # never write a file that jsp itself would refuse to load
    return {"name": key, "args": args, **({"plugin": entry.plugin} if entry.plugin else {})}
