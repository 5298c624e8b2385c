"""Architecture registry: ``create_model(name, **cfg)`` builds any registered cell model; ``list_models()`` names them.

Neural models return :class:`ModelOutput` (``logits`` (B, K), ``regression`` (B, M), ``features``, ``gates``).
Importing this package does not import torch; the architectures load on the first ``create_model``/``list_models``.
"""

from phenotyping.models._registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
