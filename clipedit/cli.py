"""The ``clipedit`` command line: a click group whose commands are imported when used (the console script;
``python -m clipedit``; ``python cli.py`` in a checkout)."""
from __future__ import annotations

import importlib
import logging
import sys

import click

# Command name -> "module:attribute". Importing lazily keeps `clipedit --help` fast.
COMMANDS = {
    "attack": "clipedit.commands.attack:attack",
    "audit": "clipedit.commands.audit:audit",
    "defend": "clipedit.commands.defend:defend_cmd",
    "apply": "clipedit.commands.edits:apply_cmd",
    "revert": "clipedit.commands.edits:revert_cmd",
    "edit-classifier": "clipedit.commands.classifier:edit_classifier",
    "train-mini": "clipedit.commands.train_mini:train_cmd",
    "sweep": "clipedit.commands.sweep:sweep_cmd",
    "compare": "clipedit.commands.compare:compare_cmd",
    "stats": "clipedit.commands.stats:stats_cmd",
    "models": "clipedit.commands.models:models_cmd",
}


class LazyGroup(click.Group):
    """A group that imports each command's module only when the command is asked for."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.version_option(package_name="clipedit", prog_name="clipedit", message="%(prog)s %(version)s")
def cli(verbose: int) -> None:
    """Defend CLIP models against typographic attacks by rewriting one layer."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def main(argv=None) -> None:
    """Console-script entry point: user errors become one line on stderr and exit code 1."""
    from clipedit.attacks import AttackError
    from clipedit.errors import ClipeditError

    try:
        rv = cli.main(args=argv, standalone_mode=False)
        if isinstance(rv, int) and rv:
            sys.exit(rv)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (ClipeditError, AttackError) as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(1)
    except (KeyboardInterrupt, BrokenPipeError):
        sys.exit(130)


if __name__ == "__main__":
    main()
