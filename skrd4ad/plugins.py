"""One loader for the registries that find plug-ins by name (dataset sources, model variants).

A :class:`PluginRegistry` finds, in this order: the built-in modules of a package (``first`` ones
in that order, the others by module name; ``base`` and ``_private`` modules skipped), the entry
points of a group (value ``module:attr``), then the modules named in an environment variable
(comma-separated), each module defining one attribute (``SOURCE``, ``VARIANT``) that holds an
instance of the base class or a subclass of it.  It loads on first use and caches until
:meth:`PluginRegistry.refresh`.  Importing this module imports neither numpy nor torch.
"""

from __future__ import annotations

import functools
import importlib
import os
import pkgutil
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")

__all__ = ["PluginRegistry"]


class PluginRegistry(Generic[T]):
    """The plug-ins of one kind, by name (built-ins first, then entry points, then the env var).

    ``kind`` names one plug-in in messages (``"source"``), ``kinds`` several (``"dataset sources"``);
    ``attr`` is the module attribute holding it (``"SOURCE"``); ``base`` its class, whose
    ``__module__`` the messages name; ``check`` validates each one found (raise to refuse it).
    """

    def __init__(self, *, kind: str, kinds: str, attr: str, base: type[T], package: str,
                 package_path: Iterable[str], group: str, env_var: str, first: tuple[str, ...] = (),
                 skip: tuple[str, ...] = ("base",), check: Callable[[T], None] | None = None) -> None:
        self.kind, self.kinds, self.attr, self.base = kind, kinds, attr, base
        self.package, self.package_path = package, list(package_path)
        self.group, self.env_var, self.first, self.skip, self.check = group, env_var, first, skip, check
        self._load = functools.lru_cache(maxsize=1)(self._find)

    def instance(self, obj: Any, where: str) -> T:
        """``obj`` (an instance of ``base``, or a subclass to instantiate) if it has a name; TypeError otherwise."""
        item = obj() if isinstance(obj, type) and issubclass(obj, self.base) else obj
        if not isinstance(item, self.base) or not getattr(item, "name", None):
            cls = self.base.__name__
            raise TypeError(f"{where} is {obj!r}, not a {cls} with a name; point it at a subclass of "
                            f"{self.base.__module__}.{cls} (or an instance) that sets name and label")
        return item

    def from_module(self, module_name: str, where: str) -> T:
        """The plug-in that module ``module_name`` defines as ``attr``."""
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ImportError(f"{where}: cannot import {self.kind} module {module_name!r} ({exc}); "
                              "fix the name or put its folder on PYTHONPATH") from exc
        if not hasattr(module, self.attr):
            raise TypeError(f"{where}: module {module_name!r} defines no {self.attr}; "
                            f"add `{self.attr} = My{self.base.__name__}()`")
        return self.instance(getattr(module, self.attr), f"{where}: {module_name}.{self.attr}")

    def builtin_modules(self) -> list[str]:
        """The built-in module names, in registry order."""
        found = [m.name for m in pkgutil.iter_modules(self.package_path) if not m.name.startswith("_")
                 and m.name not in self.skip]
        return [m for m in self.first if m in found] + sorted(m for m in found if m not in self.first)

    def _find(self) -> dict[str, T]:
        found = [self.from_module(f"{self.package}.{m}", f"built-in {self.kind}") for m in self.builtin_modules()]
        for ep in sorted(entry_points(group=self.group), key=lambda e: e.name):
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plug-in names itself
                raise ImportError(f"entry point {ep.name} = {ep.value} (group {self.group}) cannot be "
                                  f"loaded: {exc}; fix or uninstall the package that declares it") from exc
            found.append(self.instance(obj, f"entry point {ep.name} = {ep.value}"))
        for module_name in filter(None, (m.strip() for m in os.environ.get(self.env_var, "").split(","))):
            found.append(self.from_module(module_name, self.env_var))
        registry: dict[str, T] = {}
        for item in found:
            name = item.name  # type: ignore[attr-defined]
            if name in registry and type(registry[name]) is not type(item):
                raise ValueError(f"two {self.kinds} are named {name!r} ({type(registry[name]).__module__} "
                                 f"and {type(item).__module__}); rename one")
            if self.check is not None:
                self.check(item)
            registry.setdefault(name, item)
        return registry

    def __call__(self) -> dict[str, T]:
        """Every plug-in by name (found on the first call, then cached)."""
        return self._load()

    def refresh(self) -> None:
        """Forget the plug-ins found so far (after changing the env var or installing one)."""
        self._load.cache_clear()
