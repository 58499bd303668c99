"""The bundled mini CLIP's generated image-text world, and (in ``training/``) the code that trains on it.

``world`` and ``shapes`` draw the scenes and notes (all that run time needs); ``training/`` makes
the training pool (``captions``, ``pool``), trains open_clip's ``CLIP`` on it (``warmstart``,
``train``) and measures the held-out figures stored in ``assets/mini/config.json`` (``figures``).
"""
from clipedit.mini.world import (
                                 CLASSNAMES,
                                 IMAGE_SIZE,
                                 TEMPLATES,
                                 MiniWorld,
                                 Scene,
                                 attack_set,
                                 draw_scene,
                                 reference_images,
)

__all__ = ["CLASSNAMES", "IMAGE_SIZE", "TEMPLATES", "MiniWorld", "Scene", "attack_set", "draw_scene",
           "reference_images"]
