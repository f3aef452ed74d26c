"""The plugin manager: default plugins, entry-point plugins, and the registries they fill.

Plugins are found in the ``lvmtoolkit`` entry-point group. Set ``LVM_LOAD_PLUGINS`` to a
comma-separated list of entry-point names to load only those (an empty value loads none);
the core's default plugins (built-in refiners, datasets and observation models) always
load.

A third-party plugin can never break the toolkit: each entry point is loaded on its own,
and one that fails to import, implements a hook that does not exist (a misspelt name such
as ``register_backend``), has a hook implementation with the wrong arguments, or whose
hook raises while registrations are collected is unregistered and recorded as broken
(`broken_plugins`). ``lvm plugins`` lists broken plugins with their error; other
commands warn once on stderr and go on without them.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

from lvmtoolkit import hookspecs
from lvmtoolkit.errors import LvmError, UnknownNameError

if TYPE_CHECKING:
    import torch

    from lvmtoolkit.core.model import Model

ENTRY_POINT_GROUP = "lvmtoolkit"
DEFAULT_PLUGINS = ("lvmtoolkit.refiners", "lvmtoolkit.data", "lvmtoolkit.tasks.observations")

pm = pluggy.PluginManager("lvmtoolkit")
pm.add_hookspecs(hookspecs)

_loaded = False
# Entry-point plugins: name -> distribution (for versions in `lvm plugins`).
_distributions: dict[str, importlib.metadata.Distribution | None] = {}
# Plugins that failed: name -> (distribution, one-line error).
_broken: dict[str, tuple[importlib.metadata.Distribution | None, str]] = {}

on_broken: Callable[[str, str], None] | None = None
"""Called as ``on_broken(plugin_name, error)`` when a plugin is found broken (the CLI sets
it to print a warning); None: only record it."""


def _describe(err: BaseException) -> str:
    """``Type: message`` on one line (pluggy's signature errors span several)."""
    text = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _mark_broken(
    name: str, error: str, dist: importlib.metadata.Distribution | None = None
) -> None:
    plugin = pm.get_plugin(name)
    if plugin is not None:
        pm.unregister(plugin)
    dist = dist if dist is not None else _distributions.pop(name, None)
    _distributions.pop(name, None)
    first = name not in _broken
    _broken[name] = (dist, error)
    if first and on_broken is not None:
        on_broken(name, error)


def broken_plugins() -> dict[str, str]:
    """Plugins that could not be used: ``{name: error}`` (see the module docs)."""
    load_plugins()
    return {name: error for name, (_, error) in sorted(_broken.items())}


def _unknown_hooks() -> None:
    """Unregister every plugin with an implementation of a hook that has no spec.

    ``pm.check_pending()`` raises for the first such implementation; a misspelt hook
    would otherwise be silently never called.
    """
    while True:
        try:
            pm.check_pending()
            return
        except pluggy.PluginValidationError as err:
            name = pm.get_name(err.plugin) or repr(err.plugin)
            hooks = sorted(
                hook_name
                for hook_name, caller in vars(pm.hook).items()
                if not hook_name.startswith("_")
                and not caller.has_spec()
                and any(impl.plugin is err.plugin for impl in caller.get_hookimpls())
            )
            known = ", ".join(sorted(n for n in vars(hookspecs) if n.startswith("register_")))
            _mark_broken(
                name,
                f"implements unknown hook {', '.join(map(repr, hooks))} (hooks: {known})",
            )


def _entry_points() -> list[tuple[importlib.metadata.EntryPoint, Any]]:
    seen: set[str] = set()
    found = []
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group == ENTRY_POINT_GROUP and ep.name not in seen:
                seen.add(ep.name)
                found.append((ep, dist))
    return found


def load_plugins() -> None:
    """Register the default plugins and every entry-point plugin (idempotent).

    Never raises because of a plugin: one that fails is recorded in
    `broken_plugins` and left out.
    """
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module_name in DEFAULT_PLUGINS:
        module = importlib.import_module(module_name)
        if not pm.is_registered(module):
            pm.register(module, module_name)
    allowed = os.environ.get("LVM_LOAD_PLUGINS")
    names = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
    for ep, dist in _entry_points():
        if names is not None and ep.name not in names:
            continue
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
            pm.register(plugin, name=ep.name)
        except KeyboardInterrupt:
            raise
        # A plugin's import can raise anything, SyntaxError and SystemExit included.
        except BaseException as err:
            _mark_broken(ep.name, f"failed to load: {_describe(err)}", dist)
            continue
        _distributions[ep.name] = dist
    _unknown_hooks()


@dataclass(frozen=True)
class Registration:
    """One registered item: the object and the plugin that registered it."""

    name: str
    obj: Any
    plugin: str


class _NameClash(LvmError):
    """Two plugins registered different objects under one name."""


def _collect(hook_name: str, kind: str) -> dict[str, Registration]:
    load_plugins()
    found: dict[str, Registration] = {}
    hook = getattr(pm.hook, hook_name)
    for impl in hook.get_hookimpls():
        plugin_name = pm.get_name(impl.plugin) or repr(impl.plugin)
        mine: dict[str, Registration] = {}

        def register(obj: Any, _plugin: str = plugin_name, _mine: dict = mine) -> None:
            name = getattr(obj, "name", None)
            if not isinstance(name, str) or not name:
                raise LvmError(f"plugin {_plugin!r} registered a {kind} without a string 'name'")
            if name in found and found[name].obj is not obj:
                raise _NameClash(
                    f"{kind} {name!r} is registered twice: by {found[name].plugin!r} "
                    f"and by {_plugin!r}"
                )
            _mine[name] = Registration(name, obj, _plugin)

        try:
            impl.function(register)
        except KeyboardInterrupt:
            raise
        except _NameClash:
            raise  # a clash between two plugins: neither alone is the broken one
        except Exception as err:
            # What the plugin registered before it failed is dropped with it.
            _mark_broken(plugin_name, f"{hook_name} raised {_describe(err)}")
            continue
        found.update(mine)
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


def observations() -> dict[str, Registration]:
    """All registered observation models (ObservationModel subclasses), by name."""
    return _collect("register_observations", "observation model")


def _get(table: dict[str, Registration], kind: str, name: str) -> Any:
    if name not in table:
        broken = broken_plugins()
        hint = ""
        if name in broken:  # most plugins register under their own name
            hint = f"; plugin {name!r} is broken: {broken[name]}"
        elif broken:
            hint = f"; broken plugins, not loaded: {', '.join(broken)} (see `lvm plugins`)"
        raise UnknownNameError(kind, name, list(table), hint=hint)
    return table[name].obj


def get_backend(name: str) -> Any:
    """The backend class registered as ``name``; `UnknownNameError` lists the others."""
    return _get(backends(), "backend", name)


def get_refiner(name: str) -> Any:
    """The refiner class registered as ``name``; `UnknownNameError` lists the others."""
    return _get(refiners(), "refiner", name)


def get_dataset(name: str) -> Any:
    """The dataset class registered as ``name``; `UnknownNameError` lists the others."""
    return _get(datasets(), "dataset", name)


def get_observation(name: str) -> Any:
    """The observation-model class registered as ``name``; `UnknownNameError` lists the others."""
    return _get(observations(), "observation model", name)


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", backend: str | None = None
) -> Model:
    """Rebuild a model from a checkpoint, finding its class among the registered backends.

    Args:
        path: Checkpoint folder or ``.safetensors`` file.
        device: Where to put the weights.
        backend: If given, the checkpoint must belong to this backend.

    Returns:
        The model in eval mode.

    Raises:
        CheckpointError: Missing files, corrupt content, unknown keys, or a backend mismatch.
        UnknownNameError: The checkpoint's backend is not installed.
    """
    from lvmtoolkit.core.checkpoint import load_checkpoint as load_with

    return load_with(path, device, backend, lookup=get_backend)


def load_backend_model(
    backend: str, checkpoint: str | Path | None = None, device: str | torch.device = "cpu"
) -> tuple[Model, str]:
    """A backend's model from ``checkpoint``, or from the backend's bundled checkpoint.

    Returns:
        The model (eval mode) and the path it was loaded from.

    Raises:
        CheckpointError: No checkpoint given and the backend ships none, or a bad file.
        UnknownNameError: The backend is not installed.
    """
    from lvmtoolkit.errors import CheckpointError

    model_class = get_backend(backend)
    if checkpoint is None:
        default = model_class.default_checkpoint()
        if default is None:
            raise CheckpointError(
                f"backend {backend!r} ships no checkpoint; pass --checkpoint or train one "
                f"with `lvm train --backend {backend}`"
            )
        checkpoint = default
    return load_checkpoint(checkpoint, device=device, backend=backend), str(checkpoint)


def installed_version(distribution: str) -> str:
    """The installed version of a distribution, or ``"0+unknown"`` when it is not installed.

    A backend's ``version`` (recorded in every checkpoint it writes) is usually its
    distribution's: ``version = installed_version("lvm-vae")``. Imported from a source tree
    that was never installed, the package has no metadata, hence the fallback.
    """
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def plugin_info() -> list[dict[str, Any]]:
    """Installed plugins with their distribution, version, hooks and registered names.

    Broken plugins (see `broken_plugins`) are listed too, with ``kind`` ``"broken"``
    and their ``error``; for the others ``error`` is None.
    """
    load_plugins()
    registered: dict[str, dict[str, list[str]]] = {}
    # Collect first: a hook that raises here moves its plugin to the broken ones.
    for kind, table in (
        ("backends", backends()),
        ("refiners", refiners()),
        ("datasets", datasets()),
        ("observations", observations()),
    ):
        for reg in table.values():
            registered.setdefault(reg.plugin, {}).setdefault(kind, []).append(reg.name)

    def describe(dist: importlib.metadata.Distribution | None) -> tuple[str, str]:
        if dist is None:
            return "lvmtoolkit", importlib.metadata.version("lvmtoolkit")
        return dist.metadata["Name"], dist.version

    info = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:  # a blocked name
            continue
        dist = _distributions.get(name)
        distribution, version = describe(dist)
        info.append(
            {
                "name": name,
                "kind": "entry-point" if dist is not None else "default",
                "distribution": distribution,
                "version": version,
                "hooks": sorted(h.name for h in pm.get_hookcallers(plugin) or []),
                "registers": {k: sorted(v) for k, v in registered.get(name, {}).items()},
                "error": None,
            }
        )
    for name, (dist, error) in _broken.items():
        distribution, version = describe(dist)
        info.append(
            {
                "name": name,
                "kind": "broken",
                "distribution": distribution,
                "version": version,
                "hooks": [],
                "registers": {},
                "error": error,
            }
        )
    return sorted(info, key=lambda item: item["name"])
