"""The bundled mini CLIP: a generated image-text world and the command that trains on it.

``world`` draws the scenes and notes, ``captions`` and ``data`` make the training
pool, ``train`` trains open_clip's ``CLIP`` on it and ``evaluate`` measures the
held-out figures stored in ``assets/mini/config.json``.
"""
from .world import CLASSNAMES, IMAGE_SIZE, TEMPLATES, Scene, attack_set, draw_scene, reference_images

__all__ = ["CLASSNAMES", "IMAGE_SIZE", "TEMPLATES", "Scene", "attack_set", "draw_scene", "reference_images"]
