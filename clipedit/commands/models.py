"""``clipedit models``: every model name ``--model`` takes, with open_clip's pretrained tags."""
from __future__ import annotations

import click


@click.command("models")
@click.option("--pretrained/--no-pretrained", default=True, show_default=True,
              help="Show open_clip's pretrained tags beside each architecture.")
def models_cmd(pretrained: bool) -> None:
    """List the model names --model takes: clipedit's own, its prefixes, and open_clip's architectures."""
    import open_clip

    from clipedit.models.registry import own_models

    click.echo("clipedit's own (no tag: the shipped weights where there are any; :none random init):")
    for name in own_models():
        click.echo(f"  {name}")
    click.echo("open_clip (NAME[:PRETRAINED]; :none is random init, and the weights need a network or --checkpoint):")
    for name in open_clip.list_models():
        tags = open_clip.list_pretrained_tags_by_model(name) if pretrained else []
        click.echo(f"  {name}" + (f"  [{', '.join(tags)}]" if tags else ""))
