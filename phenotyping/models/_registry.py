"""Model registry in the timm style: every variant is a tiny function registered by name; ``create_model`` is the door.

A variant function takes keyword overrides and returns a built model whose ``config`` attribute holds every argument
needed to rebuild it exactly (``create_model(model.config["arch"], **model.config)`` round-trips).

Architecture files are imported only when a name is looked up, in the order of ``_ARCH_MODULES``, stopping at the
first file that registers it: the hybrid and plain CNN files (plain torch) come first, the files built on timm
(``resnet``, ``vit``, ``vit3d``, ``published``; each imports ``phenotyping._tv_shim`` and timm itself) last, so
building a shipped model imports neither timm nor torchvision. ``list_models`` and an unknown name import them all.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable

from phenotyping.errors import NotFoundError

_MODEL_ENTRYPOINTS: dict[str, Callable[..., Any]] = {}
#: Searched in this order; the first four need no timm.
_ARCH_MODULES = ("hybrid", "cnn", "resnet3d", "classical", "resnet", "vit", "vit3d", "published")
_loaded: set[str] = set()


def register_model(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Register ``fn`` under its function name. Raises ValueError on a duplicate name."""
    name = fn.__name__
    if name in _MODEL_ENTRYPOINTS:
        raise ValueError(f"model name {name!r} is registered twice")
    _MODEL_ENTRYPOINTS[name] = fn
    return fn


def _load(until: str | None = None) -> None:
    """Import the architecture files in order, stopping once ``until`` is registered (None: import them all)."""
    import importlib

    for mod in _ARCH_MODULES:
        if until is not None and until in _MODEL_ENTRYPOINTS:
            return
        if mod not in _loaded:
            importlib.import_module(f"phenotyping.models.{mod}")
            _loaded.add(mod)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    _load()
    return sorted(n for n in _MODEL_ENTRYPOINTS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, **cfg: Any) -> Any:
    """Build the registered model ``name`` with keyword overrides of its default configuration.

    Common keywords: ``in_chans`` (input channels), ``num_classes`` (K), ``num_targets`` (M, regression outputs, may
    be 0), ``img_size`` (the size the preprocessing resizes/pads to; hybrid models accept any size).

    Raises:
        NotFoundError: ``name`` is not registered; the message lists the registered names.
    """
    _load(name)
    cfg.pop("arch", None)
    if name not in _MODEL_ENTRYPOINTS:
        raise NotFoundError(f"unknown model {name!r}; registered models: {', '.join(sorted(_MODEL_ENTRYPOINTS))}")
    return _MODEL_ENTRYPOINTS[name](**cfg)


def model_family(name: str) -> str:
    """The architecture module a registered model comes from (``"hybrid"``, ``"classical"``…).

    Raises:
        NotFoundError: ``name`` is not registered; the message lists the registered names.
    """
    _load(name)
    if name not in _MODEL_ENTRYPOINTS:
        raise NotFoundError(f"unknown model {name!r}; registered models: {', '.join(sorted(_MODEL_ENTRYPOINTS))}")
    return _MODEL_ENTRYPOINTS[name].__module__.rsplit(".", 1)[-1]

