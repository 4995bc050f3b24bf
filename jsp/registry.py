"""Registries of jsp's own builders, and the checks that let a file from elsewhere name them.

A saved model (``model.json``) may have been sent by someone else, so it is data, never code:
it names its architecture and dataset by a key of these registries, and every argument is
checked to be a JSON scalar (or a list of scalars) of the expected type and range before the
registered function is called. Nothing in a file is ever handed to ``instantiate``.

The same tables let the pipeline record, for a model or dataset built from a (trusted)
Hydra config, which key and arguments rebuild it.
"""
from __future__ import annotations

import collections.abc
import functools
import inspect
import re
import typing
from dataclasses import dataclass
from pathlib import Path
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


# How a model turns images into tensors: a declarative spec, checked like the arguments.
PROCESS = {"channels": Arg(str, choices=("rgb", "green")), "clahe": Arg(bool),
           "patch_size": Arg(int, 8, 8192), "augment": Arg(bool)}

def conf_dir() -> Path:
    """jsp's config folder: ``jsp/conf`` in an installed wheel, the checkout's ``conf/`` otherwise."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):  # installed wheel, then source checkout
        if (candidate / "train.yaml").is_file():
            return candidate
    return here.parent / "conf"  # Hydra then says the primary config directory is missing


#: what jsp passes to every model, and the range a file may ask for
MODEL_INPUTS = {"in_channels": (1, 64), "num_classes": (1, 1024)}
_BOUNDS = {int: (-2**31, 2**31), float: (-1e12, 1e12)}


def _kind_of(annotation: Any, default: Any) -> tuple[Any, bool, bool]:
    """(scalar type, is a list, None allowed) of a keyword, from its annotation or its default."""
    optional = default is None
    args = typing.get_args(annotation)
    if type(None) in args:
        others = [a for a in args if a is not type(None)]
        optional, annotation = True, others[0]
        args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (list, tuple, collections.abc.Sequence):
        return (args[0] if args else float), True, optional
    if annotation in (int, float, str, bool):
        return annotation, False, optional
    if isinstance(default, (list, tuple)):
        kinds = {type(v) for v in default}
        return (kinds.pop() if len(kinds) == 1 else float), True, optional
    return (type(default) if default is not None else str), False, optional


def _arg(scalar: type, is_list: bool, optional: bool, spec: Any) -> Arg:
    """spec: (low, high), a tuple of choices, a regex for strings, or None (the type's bounds)."""
    if isinstance(spec, str):
        return Arg(scalar, pattern=spec, is_list=is_list, optional=optional, max_len=64 if is_list else 16)
    if isinstance(spec, tuple) and spec and isinstance(spec[0], str):
        return Arg(scalar, choices=spec, is_list=is_list, optional=optional, max_len=64 if is_list else 16)
    low, high = spec if isinstance(spec, tuple) else _BOUNDS.get(scalar, (None, None))
    return Arg(scalar, low, high, is_list=is_list, optional=optional, max_len=64 if is_list else 16)


def args_of(obj: Callable, kind: str) -> dict[str, Arg]:
    """The arguments a file may give the builder ``obj``: its keywords but NOT_RECORDED, typed
    by its annotations (or defaults), in the ranges its ``jsp_ranges`` attribute declares
    ({name: (low, high) | a tuple of choices | a regex | an Arg}; numbers otherwise within
    +-2^31). Declared once, beside the code; plug-ins declare theirs the same way."""
    init = obj.__init__ if isinstance(obj, type) else obj
    hints, params = typing.get_type_hints(init), inspect.signature(init).parameters
    ranges = {**(MODEL_INPUTS if kind == "model" else {}), **(getattr(obj, "jsp_ranges", None) or {})}
    out = {}
    for name, p in params.items():
        if name == "self" or name in NOT_RECORDED or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if isinstance(ranges.get(name), Arg):
            out[name] = ranges[name]
            continue
        scalar, is_list, optional = _kind_of(hints.get(name), None if p.default is p.empty else p.default)
        if scalar in (int, float, str, bool):  # anything else is no JSON value: a file cannot set it
            out[name] = _arg(scalar, is_list, optional, ranges.get(name))
    return out


@functools.cache
def _own(kind: str) -> dict[str, Entry]:
    """jsp's own builders of ``kind``: one per YAML of conf/<kind>/, its stem the key and its
    ``_target_`` the builder, so a new one is its code and its YAML. The YAMLs ship with jsp
    (trusted); a file only ever names one of these keys, never a target."""
    import yaml
    from hydra.utils import get_object

    out = {}
    for path in sorted((conf_dir() / kind).glob("*.yaml")):
        target = (yaml.safe_load(path.read_text()) or {}).get("_target_")
        if target:
            obj = get_object(target)
            out[path.stem] = Entry(obj, (target, f"{obj.__module__}.{obj.__qualname__}"), args_of(obj, kind))
    return out


def _plugin_entries(kind: str) -> dict[str, Entry]:
    """Installed plug-ins of ``kind`` as entries: arguments from their keyword defaults, with
    the ranges a plug-in declares in ``jsp_ranges`` ({name: (low, high)}) where it does."""
    from jsp.plugins import plugins, signature_defaults

    out = {}
    for key, plugin in plugins(kind).items():
        obj = plugin.load()
        signature_defaults(obj)  # refuses a plug-in whose settings lack defaults
        out[key] = Entry(obj, (plugin.target,), args_of(obj, kind), plugin.record())
    return out


def table(kind: str) -> dict[str, Entry]:
    """The registry of ``kind`` ("model" or "dataset"): key -> Entry; installed plug-ins
    after jsp's own (whose names they cannot take)."""
    own = _own(kind)
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
