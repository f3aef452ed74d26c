"""The plugin manager: default plugins, entry-point plugins, and the registries they fill.

Plugins are found in the ``lvmtoolkit`` entry-point group. Set ``LVM_LOAD_PLUGINS`` to a
comma-separated list of entry-point names to load only those (an empty value loads none);
the core's default plugins (built-in refiners and datasets) always load.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from dataclasses import dataclass
from typing import Any

import pluggy

from lvmtoolkit import hookspecs
from lvmtoolkit.errors import LvmError, UnknownNameError

ENTRY_POINT_GROUP = "lvmtoolkit"
DEFAULT_PLUGINS = ("lvmtoolkit.refiners", "lvmtoolkit.data")

pm = pluggy.PluginManager("lvmtoolkit")
pm.add_hookspecs(hookspecs)

_loaded = False


def load_plugins() -> None:
    """Register the default plugins and every entry-point plugin (idempotent)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module_name in DEFAULT_PLUGINS:
        module = importlib.import_module(module_name)
        if not pm.is_registered(module):
            pm.register(module, module_name)
    allowed = os.environ.get("LVM_LOAD_PLUGINS")
    if allowed is None:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        return
    names = {n.strip() for n in allowed.split(",") if n.strip()}
    for name in names:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=name)


@dataclass(frozen=True)
class Registration:
    """One registered item: the object and the plugin that registered it."""

    name: str
    obj: Any
    plugin: str


def _collect(hook_name: str, kind: str) -> dict[str, Registration]:
    load_plugins()
    found: dict[str, Registration] = {}
    hook = getattr(pm.hook, hook_name)
    for impl in hook.get_hookimpls():
        plugin_name = pm.get_name(impl.plugin) or repr(impl.plugin)

        def register(obj: Any, _plugin: str = plugin_name) -> None:
            name = getattr(obj, "name", None)
            if not isinstance(name, str) or not name:
                raise LvmError(f"plugin {_plugin!r} registered a {kind} without a string 'name'")
            if name in found and found[name].obj is not obj:
                raise LvmError(
                    f"{kind} {name!r} is registered twice: by {found[name].plugin!r} "
                    f"and by {_plugin!r}"
                )
            found[name] = Registration(name, obj, _plugin)

        impl.function(register)
    return found


def backends() -> dict[str, Registration]:
    """All registered backends (Model subclasses), by name."""
    return _collect("register_backends", "backend")


def refiners() -> dict[str, Registration]:
    """All registered refiners (Refiner subclasses), by name."""
    return _collect("register_refiners", "refiner")


def datasets() -> dict[str, Registration]:
    """All registered datasets, by name."""
    return _collect("register_datasets", "dataset")


def _get(table: dict[str, Registration], kind: str, name: str) -> Any:
    if name not in table:
        raise UnknownNameError(kind, name, list(table))
    return table[name].obj


def get_backend(name: str) -> Any:
    """The backend class registered as ``name``; :class:`UnknownNameError` lists the others."""
    return _get(backends(), "backend", name)


def get_refiner(name: str) -> Any:
    """The refiner class registered as ``name``; :class:`UnknownNameError` lists the others."""
    return _get(refiners(), "refiner", name)


def get_dataset(name: str) -> Any:
    """The dataset class registered as ``name``; :class:`UnknownNameError` lists the others."""
    return _get(datasets(), "dataset", name)


def plugin_info() -> list[dict[str, Any]]:
    """Installed plugins with their distribution, version, hooks and registered names."""
    load_plugins()
    dists = {plugin: dist for plugin, dist in pm.list_plugin_distinfo()}
    registered: dict[str, dict[str, list[str]]] = {}
    for kind, table in (
        ("backends", backends()),
        ("refiners", refiners()),
        ("datasets", datasets()),
    ):
        for reg in table.values():
            registered.setdefault(reg.plugin, {}).setdefault(kind, []).append(reg.name)
    info = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        dist = dists.get(plugin)
        if dist is not None:
            version = dist.version
            distribution = dist.metadata["Name"]
        else:
            version = importlib.metadata.version("lvmtoolkit")
            distribution = "lvmtoolkit"
        info.append(
            {
                "name": name,
                "kind": "entry-point" if dist is not None else "default",
                "distribution": distribution,
                "version": version,
                "hooks": sorted(h.name for h in pm.get_hookcallers(plugin) or []),
                "registers": {k: sorted(v) for k, v in registered.get(name, {}).items()},
            }
        )
    return info
