"""One loader for the registries that find plug-ins by name (dataset sources, model variants).

A :class:`PluginRegistry` finds, in this order: the built-in modules of a package (``first`` ones
in that order, the others by module name; ``base`` and ``_private`` modules skipped), the entry
points of a group (value ``module:attr``), then the modules named in an environment variable
(comma-separated), each module defining one attribute (``SOURCE``, ``VARIANT``) that holds an
instance of the base class or a subclass of it.  It loads on first use and caches until
:meth:`PluginRegistry.refresh`.  A module that cannot be imported raises :class:`PluginError`, one
line naming the module, where it was registered and the error (the CLI and the stage scripts show
just that line).  Importing this module imports neither numpy nor torch.
"""

from __future__ import annotations

import functools
import importlib
import os
import pkgutil
import traceback
from collections.abc import Callable, Iterable
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")

__all__ = ["PluginError", "PluginRegistry"]


class PluginError(ImportError, RuntimeError):
    """A plug-in module cannot be imported; the message names it, where it was registered, the error
    and the fix.  An ImportError as before; also a RuntimeError, so the CLI and the stage scripts
    show the message alone (:data:`skrd4ad.errors.USER_ERRORS`)."""


def _import_failure(exc: BaseException, module_name: str) -> tuple[str, str]:
    """What went wrong importing ``module_name`` (the error, and where in the plug-in's code it was
    raised) and the fix, for one line."""
    if isinstance(exc, ModuleNotFoundError) and exc.name and (module_name + ".").startswith(exc.name + "."):
        return str(exc), "fix the name or put its folder on PYTHONPATH"  # the module itself is not found
    here = (os.path.dirname(importlib.__file__), __file__)  # frames of the import machinery and this loader
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith(("<", *here))]
    where = f"{frames[-1].filename}, line {frames[-1].lineno}: " if frames else ""
    if isinstance(exc, SyntaxError) and exc.filename:  # raised while compiling: no frame of the plug-in's
        where, exc_text = f"{exc.filename}, line {exc.lineno}: ", exc.msg
    else:
        exc_text = str(exc)
    what = f"{where}{type(exc).__name__}: {exc_text}"
    if isinstance(exc, ModuleNotFoundError):
        return what, f"install the package that provides {exc.name!r}"
    return what, "fix the error there" if where else "fix the plug-in"


class PluginRegistry(Generic[T]):
    """The plug-ins of one kind, by name (built-ins first, then entry points, then the env var).

    ``kind`` names one plug-in in messages (``"source"``), ``kinds`` several (``"dataset sources"``);
    ``attr`` is the module attribute holding it (``"SOURCE"``); ``base`` its class, whose
    ``__module__`` the messages name; ``check`` validates each one found (raise to refuse it);
    ``readme`` is the README section on adding one (named by :attr:`register_hint`).
    """

    def __init__(self, *, kind: str, kinds: str, attr: str, base: type[T], package: str,
                 package_path: Iterable[str], group: str, env_var: str, first: tuple[str, ...] = (),
                 skip: tuple[str, ...] = ("base",), check: Callable[[T], None] | None = None,
                 readme: str = "") -> None:
        self.kind, self.kinds, self.attr, self.base = kind, kinds, attr, base
        self.package, self.package_path = package, list(package_path)
        self.group, self.env_var, self.first, self.skip, self.check = group, env_var, first, skip, check
        self.readme = readme
        self._load = functools.lru_cache(maxsize=1)(self._find)

    @property
    def register_hint(self) -> str:
        """How to add one, for the messages about an unknown name (``readme``: the README section)."""
        where = f"; README '{self.readme}'" if self.readme else ""
        return f"register a plug-in: entry-point group {self.group} or {self.env_var}{where}"

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
        except Exception as exc:  # a plug-in's own error too (SyntaxError, NameError): one line naming it
            what, fix = _import_failure(exc, module_name)
            away = f", or remove it from {self.env_var}" if where == self.env_var else ""
            raise PluginError(f"{where}: cannot import {self.kind} module {module_name!r} ({what}); "
                              f"{fix}{away}") from exc
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
            except Exception as exc:  # a broken plug-in names itself and its distribution
                dist = getattr(ep, "dist", None)
                by, away = ((f"distribution {dist.name} {dist.version}", f"pip uninstall {dist.name}")
                            if dist is not None else ("its distribution", "uninstall the package that declares it"))
                what, fix = _import_failure(exc, ep.module)
                raise PluginError(f"entry point {ep.name} = {ep.value} (group {self.group}, {by}) cannot be "
                                  f"loaded ({what}); {fix}, or {away}") from exc
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
