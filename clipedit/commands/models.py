"""``clipedit models``: every model name ``--model`` takes, with open_clip's pretrained tags; families
clipedit cannot defend (README, "Not supported") are marked."""
from __future__ import annotations

from typing import Optional

import click

#: open_clip image towers with no rewrite site (timm model-name prefix -> why), as the README lists them.
UNSUPPORTED_TOWERS: dict[str, str] = {
    "fastvit": "FastViT tower (reparameterisable convs): no default site",
    "swin": "Swin (windowed attention): no default site",
    "vit_relpos": "timm RelPosBlock: no default site",
}


def support_note(name: str) -> Optional[str]:
    """Why clipedit cannot (fully) defend open_clip's ``name``, or None when it can."""
    import open_clip

    cfg = open_clip.get_model_config(name) or {}
    if name.lower().startswith("coca") or "multimodal_cfg" in cfg:
        return "not supported: CoCa's attention pooler"
    tower = (cfg.get("vision_cfg") or {}).get("timm_model_name") or ""
    for prefix, why in UNSUPPORTED_TOWERS.items():
        if tower.startswith(prefix):
            return f"not supported: {why}"
    if tower.startswith("vitamin"):
        return "partly: transformer stages only (MbConvLNBlock stages have no site)"
    return None


@click.command("models")
@click.option("--pretrained/--no-pretrained", default=True, show_default=True,
              help="Show open_clip's pretrained tags beside each architecture.")
def models_cmd(pretrained: bool) -> None:
    """List the model names --model takes: clipedit's own, its prefixes, and open_clip's architectures
    (families clipedit cannot defend are marked)."""
    import open_clip

    from clipedit.models.registry import own_models

    click.echo("clipedit's own (no tag: the shipped weights where there are any; :none random init):")
    for name in own_models():
        click.echo(f"  {name}")
    click.echo("open_clip (NAME[:PRETRAINED]; :none is random init, and the weights need a network or --checkpoint):")
    for name in open_clip.list_models():
        tags = open_clip.list_pretrained_tags_by_model(name) if pretrained else []
        note = support_note(name)
        click.echo(f"  {name}" + (f"  [{', '.join(tags)}]" if tags else "") + (f"  ({note})" if note else ""))
