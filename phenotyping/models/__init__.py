"""What a model is: architectures behind one registry, the preprocessing that travels with them, their checkpoints.

- ``create_model(name, **cfg)`` builds any registered cell model; ``list_models()`` names them (one file per
  architecture: ``cnn``, ``hybrid``, ``resnet``, ``vit``, ``resnet3d``, ``vit3d``, ``classical``,
  ``published``).
- :mod:`~phenotyping.models.preprocess`: ``Preprocess`` (size, channels, normalisation), ``TargetScaler``,
  ``ChannelSpec`` / ``channel_specs`` (how a channel behaves under flips), ``fit_to_size``.
- :mod:`~phenotyping.models.checkpoint`: a model folder (``checkpoint.pt`` + ``model_card.json``): ``save_model_dir``,
  ``load_model_dir``, ``load_model_cached``, ``load_card``.
- :mod:`~phenotyping.models.forward`: ``predict_arrays`` (batched forward pass) and ``softmax``.

Neural models return :class:`ModelOutput` (``logits`` (B, K), ``regression`` (B, M), ``features``, ``gates``).
Importing this package does not import torch; an architecture file loads when one of its names is first built
(``list_models`` loads them all). The hybrid and cnn files are plain torch (:mod:`~phenotyping.models._blocks`);
only ``resnet``, ``vit``, ``vit3d`` and ``published`` import timm.
"""

from phenotyping.models._registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
