"""What a defense is asked to do: :class:`DefenseConfig` (filled in one place,
:func:`clipedit.settings.resolve.resolve_config`)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

from PIL import Image

from clipedit.core.hparams import COUNT, SEED, Bound, check_fields
from clipedit.settings.defaults import MAX_RENDERS


@dataclass
class DefenseConfig:
    """How to defend. Build one and pass it to ``resolve_config`` (``defend`` and the CLI do): every
    ``None`` is filled from the model's default file (``clipedit/settings/hparams/``), once, there.

    Attributes:
        method: a name in :data:`clipedit.methods.registry.METHODS` (``edit``: the rewrite).
        hparams: the method's settings: an instance of its settings class (``MethodSpec.hparams_cls``:
            :class:`~clipedit.core.RewriteHParams` for the rewrite, ``FinetuneHParams`` for the fine-tuning
            baselines …) as given in full, or a dict of its fields over the defaults (e.g. from
            ``--hparams FILE.json``); None: the defaults. Resolved: the instance the method's ``run`` receives
            (the rewrite's ``layer`` None: ``sites`` say where it acts).
        sites: the layers the method acts on, in order (an edit over several sites is solved in this
            order); None: the settings' ``layer`` if given, else the model's default sites.
        renders: exemplars rendered per word (varied font, size, colour, position, object).
        mask: edit the locations of the glyphs (``text``) or of the whole label (``label``).
        reference: folder of reference images for the key statistics (default: the model's world's).
        n_reference: reference images drawn from the model's world.
        photos: photos to render exemplars on, in place of the model's world.
        vocab: a word list for ``"*"`` (default: open_clip's tokenizer words, class names, random strings).
        vocab_words: exemplar words ``"*"`` renders (``renders`` each).
        any_word: set by ``resolve_config`` for ``"*"`` (its defaults were used).
        caution: set by ``resolve_config``: a measured weakness of the model's default site and rank, when
            both are used (its default file's ``caution``).
    """

    method: str = "edit"
    hparams: Any = None
    sites: Optional[tuple[str, ...]] = None
    renders: Optional[int] = None
    seed: int = 0
    mask: Optional[Literal["text", "label"]] = None
    reference: Optional[Path] = None
    n_reference: Optional[int] = None
    photos: Optional[Sequence[Image.Image]] = None
    vocab: Optional[Path] = None
    vocab_words: Optional[int] = None
    any_word: bool = False
    caution: Optional[str] = None
    #: the (name, architecture) of the model this config was resolved for (None: not resolved); any copy
    #: (``dataclasses.replace``) is unresolved again.
    resolved_for: Optional[tuple[str, str]] = field(default=None, init=False, repr=False, compare=False)

    #: The schema's ranges (types: the annotations), checked on every construction, Python and CLI alike.
    BOUNDS: ClassVar[dict[str, Bound]] = {"renders": Bound(1, MAX_RENDERS), "seed": SEED, "n_reference": COUNT,
                                          "vocab_words": COUNT}

    def __post_init__(self) -> None:
        from clipedit.errors import SettingsError

        check_fields(self, self.BOUNDS, SettingsError)
        if self.photos is not None and (isinstance(self.photos, (str, bytes)) or not all(
                isinstance(p, Image.Image) for p in self.photos)):
            raise SettingsError("DefenseConfig: photos must be a list of PIL images")

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-able data (recorded in results and edit metadata; photos as a count)."""
        hp = self.hparams
        return {"method": self.method, "sites": list(self.sites) if self.sites else None,
                "hparams": hp.to_dict() if hasattr(hp, "to_dict") else hp,
                "renders": self.renders, "seed": self.seed, "mask": self.mask,
                "reference": str(self.reference) if self.reference is not None else None,
                "n_reference": self.n_reference, "photos": len(self.photos) if self.photos else None,
                "vocab": str(self.vocab) if self.vocab is not None else None,
                "vocab_words": self.vocab_words, "any_word": self.any_word}
