"""Model registry in the timm style: every variant is a tiny function registered by name; ``create_model`` is the door.

A variant function takes keyword overrides and returns a built model whose ``config`` attribute holds every argument
needed to rebuild it exactly (``create_model(model.config["arch"], **model.config)`` round-trips).
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable

from phenotyping.errors import NotFoundError

_MODEL_ENTRYPOINTS: dict[str, Callable[..., Any]] = {}
_ARCH_MODULES = ("hybrid", "cnn", "resnet", "vit", "resnet3d", "vit3d", "classical", "published")


def register_model(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Register ``fn`` under its function name. Raises ValueError on a duplicate name."""
    name = fn.__name__
    if name in _MODEL_ENTRYPOINTS:
        raise ValueError(f"model name {name!r} is registered twice")
    _MODEL_ENTRYPOINTS[name] = fn
    return fn


def _load_all() -> None:
    import importlib

    for mod in _ARCH_MODULES:
        importlib.import_module(f"phenotyping.models.{mod}")


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    _load_all()
    return sorted(n for n in _MODEL_ENTRYPOINTS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, **cfg: Any) -> Any:
    """Build the registered model ``name`` with keyword overrides of its default configuration.

    Common keywords: ``in_chans`` (input channels), ``num_classes`` (K), ``num_targets`` (M, regression outputs, may
    be 0), ``img_size`` (the size the preprocessing resizes/pads to; hybrid models accept any size).

    Raises:
        NotFoundError: ``name`` is not registered; the message lists the registered names.
    """
    _load_all()
    cfg.pop("arch", None)
    if name not in _MODEL_ENTRYPOINTS:
        raise NotFoundError(f"unknown model {name!r}; registered models: {', '.join(sorted(_MODEL_ENTRYPOINTS))}")
    return _MODEL_ENTRYPOINTS[name](**cfg)


def model_family(name: str) -> str:
    """The architecture module a registered model comes from (``"hybrid"``, ``"classical"``…).

    Raises:
        NotFoundError: ``name`` is not registered; the message lists the registered names.
    """
    _load_all()
    if name not in _MODEL_ENTRYPOINTS:
        raise NotFoundError(f"unknown model {name!r}; registered models: {', '.join(sorted(_MODEL_ENTRYPOINTS))}")
    return _MODEL_ENTRYPOINTS[name].__module__.rsplit(".", 1)[-1]

