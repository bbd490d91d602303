"""Which class a ``runtime:`` value names: an entry point of the ``inferd.runtimes`` group (the
built-ins are registered there by inferd's own package metadata) or an import string ``module:Class``."""

from __future__ import annotations

import importlib
from importlib.metadata import EntryPoint, entry_points

from inferd.core.errors import ConfigError
from inferd.core.runtime import Runtime

ENTRY_POINT_GROUP = "inferd.runtimes"


class RuntimeCatalog:
    """Resolves runtime names once per class; build one per process (the composition root does)."""

    def __init__(self, registered: dict[str, EntryPoint] | None = None) -> None:
        if registered is None:
            registered = {point.name: point for point in entry_points(group=ENTRY_POINT_GROUP)}
        self._registered = registered
        self._classes: dict[str, type[Runtime]] = {}

    @property
    def names(self) -> list[str]:
        return sorted(self._registered)

    def resolve(self, ref: str) -> type[Runtime]:
        found = self._classes.get(ref)
        if found is None:
            found = self._classes[ref] = self._import(ref) if ":" in ref else self._entry_point(ref)
        return found

    def _entry_point(self, name: str) -> type[Runtime]:
        point = self._registered.get(name)
        if point is None:
            hint = ""
            if not any(p.dist is not None and p.dist.name == "inferd" for p in self._registered.values()):
                # An editable install made before the entry points existed has none of them.
                hint = (
                    "; inferd's own runtimes are not registered either: its installed package metadata is "
                    "stale, reinstall it (pip install -e '.[all]' in a checkout)"
                )
            raise ConfigError(
                f"runtime {name!r} is not registered (registered: {', '.join(self.names) or 'none'}){hint}; "
                f"a third-party runtime is named by an import string 'package.module:Class' or registered "
                f"in the entry-point group {ENTRY_POINT_GROUP!r}"
            )
        try:
            loaded = point.load()
        except Exception as exc:
            raise ConfigError(
                f"runtime {name!r} (entry point {point.value}): import failed: {type(exc).__name__}: {exc}"
            ) from exc
        return _checked(name, loaded)

    @staticmethod
    def _import(ref: str) -> type[Runtime]:
        module_name, _, attr = ref.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise ConfigError(
                f"runtime {ref!r}: importing {module_name} failed: {type(exc).__name__}: {exc} "
                "(is the package installed in the server's environment?)"
            ) from exc
        try:
            loaded = getattr(module, attr)
        except AttributeError:
            raise ConfigError(f"runtime {ref!r}: module {module_name} has no attribute {attr!r}") from None
        return _checked(ref, loaded)


def _checked(ref: str, loaded: object) -> type[Runtime]:
    if not (isinstance(loaded, type) and issubclass(loaded, Runtime)):
        raise ConfigError(
            f"runtime {ref!r} is {loaded!r}, not a subclass of inferd.core.runtime.Runtime "
            "(a runtime implements load(), predict(batch, parameters) and optionally unload())"
        )
    return loaded
