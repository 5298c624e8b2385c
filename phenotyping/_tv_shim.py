"""Make ``import torchvision`` (and therefore ``import timm``) work with the torch 2.13.0 CPU build.

The only torchvision that resolves beside torch 2.13.0 here is a build whose compiled operators fail to register, so
its Python side dies at import with ``RuntimeError: operator torchvision::nms does not exist`` (its ``_meta_registrations``
refer to the operator before anything defined it). This module defines the schemas of the two missing operators
(``torchvision::nms`` and ``torchvision::qnms``) with :func:`torch.library.define`, then imports torchvision again.
Where torchvision loads normally it does nothing. Import it (or call :func:`ensure`) before ``import timm``.
The defined operators have no kernels: calling ``torchvision.ops.nms`` still fails loudly, which nothing here needs.
"""

from __future__ import annotations

import sys

_NMS_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"
_MISSING_OP = "operator torchvision::nms does not exist"
_done = False


def ensure() -> None:
    """Import torchvision, defining its missing ``nms``/``qnms`` operator schemas first if (and only if) needed.

    Raises:
        RuntimeError: torchvision fails for any reason other than the missing ``nms`` operator.
    """
    global _done
    if _done:
        return
    try:
        import torchvision  # noqa: F401
    except RuntimeError as e:
        if _MISSING_OP not in str(e):
            raise
        import torch

        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]  # the failed import left half-initialised modules behind
        for op in ("nms", "qnms"):
            torch.library.define(f"torchvision::{op}", _NMS_SCHEMA)
        import torchvision  # noqa: F401,F811
    _done = True


ensure()
