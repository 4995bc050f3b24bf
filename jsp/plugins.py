"""Plug-ins: models, datasets, constraints and importances from other installed packages.

A package adds one by declaring a Python entry point (docs/plugins.md)::

    [project.entry-points."jsp.models"]
    tinynet = "my_plugin:TinyNet"

Groups: ``jsp.models``, ``jsp.datasets``, ``jsp.constraints``, ``jsp.importances``. The entry
point's name is the key users write (``jsp-train model=tinynet``). Its keyword arguments with
defaults become the config's settings (``model.width=16``), registered in Hydra's ConfigStore;
a YAML the package ships at ``<top package>/jsp_conf/<group>/<key>.yaml`` sets its own
defaults instead. jsp's own names win over a plug-in's.

A saved model names a plug-in by key and records the plug-in's package and version; it is
loaded only where that plug-in is installed (an installed package is trusted code, a file
that names one is not: nothing in a file chooses what is imported).
"""
from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import dataclass
from importlib import metadata, resources
from typing import Any

from jsp.errors import ConfigError

log = logging.getLogger("jsp")
GROUPS = {"model": "jsp.models", "dataset": "jsp.datasets", "constraint": "jsp.constraints",
          "importance": "jsp.importances"}
#: what jsp passes to every model, as to its own (the plug-in must take them)
MODEL_INPUTS = ("in_channels", "num_classes")


@dataclass(frozen=True)
class Plugin:
    """One installed plug-in: its key, the dotted path of its object, its package and version."""

    kind: str
    key: str
    target: str
    package: str
    version: str
    entry_point: metadata.EntryPoint

    def load(self) -> Any:
        try:
            return self.entry_point.load()
        except Exception as e:  # noqa: BLE001  (any import error of someone else's package)
            raise ConfigError(f"the {self.kind} plug-in {self.key!r} of package {self.package} {self.version} "
                              f"does not load ({type(e).__name__}: {e})") from None

    def record(self) -> dict:
        """What a saved model records of the plug-in that built it."""
        return {"package": self.package, "version": self.version}


@functools.cache
def plugins(kind: str) -> dict[str, Plugin]:
    """{key: Plugin} of the installed plug-ins of ``kind`` ("model", "dataset", ...)."""
    out = {}
    for ep in metadata.entry_points(group=GROUPS[kind]):
        dist = getattr(ep, "dist", None)
        package, version = (dist.name, dist.version) if dist is not None else ("?", "?")
        out[ep.name] = Plugin(kind, ep.name, ep.value.replace(":", "."), package, version, ep)
    return out


def signature_defaults(fn: Any) -> dict[str, Any]:
    """{keyword: default} of ``fn`` (a class's ``__init__``), the settings a plug-in offers."""
    init = fn.__init__ if inspect.isclass(fn) else fn
    out = {}
    for name, p in inspect.signature(init).parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is p.empty:
            if name in MODEL_INPUTS:
                continue
            raise ConfigError(f"plug-in {getattr(fn, '__qualname__', fn)}: its argument {name!r} has no default; "
                              "a plug-in's settings need defaults (docs/plugins.md)")
        out[name] = list(p.default) if isinstance(p.default, tuple) else p.default
    return out


def config_node(plugin: Plugin) -> dict:
    """The Hydra config of a plug-in: its YAML if the package ships one, else its defaults."""
    obj = plugin.load()
    if plugin.kind == "model":
        params = inspect.signature(obj.__init__ if inspect.isclass(obj) else obj).parameters
        missing = [k for k in MODEL_INPUTS if k not in params]
        if missing:
            raise ConfigError(f"model plug-in {plugin.key!r} ({plugin.target}) must take {' and '.join(missing)}, "
                              "which jsp passes to every model")
    node = {"_target_": plugin.target, **signature_defaults(obj)}
    for k in MODEL_INPUTS if plugin.kind == "model" else ():
        node.pop(k, None)
    shipped = _shipped_yaml(plugin)
    if shipped is not None:
        node.update({k: v for k, v in shipped.items() if k != "_target_"})
    if plugin.kind == "dataset":
        from jsp.configs import ProcessConfig  # the processing schema every dataset has

        node["process"] = {**vars(ProcessConfig()), **(node.get("process") or {})}
    return node


def _shipped_yaml(plugin: Plugin) -> dict | None:
    import yaml

    top = plugin.target.split(".", 1)[0]
    try:
        path = resources.files(top) / "jsp_conf" / plugin.kind / f"{plugin.key}.yaml"
        if not path.is_file():
            return None
        node = yaml.safe_load(path.read_text())
    except (ModuleNotFoundError, OSError, yaml.YAMLError) as e:
        raise ConfigError(f"the {plugin.kind} plug-in {plugin.key!r}: its YAML does not load ({e})") from None
    return node if isinstance(node, dict) else None


def register_configs(own: dict[str, set[str]]) -> None:
    """Store each installed model, dataset and constraint plug-in as a Hydra config option
    (``model=KEY``). ``own``: {group: jsp's own option names}, which a plug-in cannot replace."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for kind in ("model", "dataset", "constraint"):
        for key, plugin in plugins(kind).items():
            if key in own.get(kind, ()):
                log.warning("plug-in %s %r of %s is ignored: jsp has a %s of that name", kind, key, plugin.package,
                            kind)
                continue
            try:
                store.store(group=kind, name=key, node=config_node(plugin), provider=plugin.package)
            except ConfigError as e:  # a broken plug-in must not break jsp for everything else
                log.warning("%s", e)
