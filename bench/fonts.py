"""Install the font catalogue's Debian packages (``attacks.catalogue.PACKAGES``) before a bench measures
on the leave-out factors, so that its figures use the catalogue's families, not the fallback.

    python -m bench fonts          # apt-get install -y the missing packages; prints installed / missing
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess

from clipedit.attacks.catalogue import PACKAGES

log = logging.getLogger("bench.fonts")


def installed(package: str) -> bool:
    """Whether dpkg reports ``package`` installed."""
    if shutil.which("dpkg-query") is None:
        return False
    out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return out.returncode == 0 and "install ok installed" in out.stdout


def ensure_fonts() -> dict[str, list[str]]:
    """``apt-get install -y`` every missing package of the catalogue (as root, where apt-get exists);
    returns ``{"installed": [...], "missing": [...]}`` after trying. Never raises: a bench without the
    fonts runs on the fallback fonts and says so."""
    missing = [p for p in PACKAGES if not installed(p)]
    if missing and shutil.which("apt-get") and os.geteuid() == 0:
        for package in missing:  # one at a time: a package the archive lacks does not stop the others
            subprocess.run(["apt-get", "install", "-y", "-q", package], capture_output=True,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        missing = [p for p in PACKAGES if not installed(p)]
    if missing:
        log.warning("font packages missing (figures use fallback fonts where a split has none): %s",
                    " ".join(missing))
    return {"installed": [p for p in PACKAGES if p not in missing], "missing": missing}


def add_arguments(ap) -> None:
    """No options."""


def main(args) -> None:
    logging.basicConfig(level=logging.INFO)
    state = ensure_fonts()
    print(f"installed: {' '.join(state['installed']) or '-'}\nmissing: {' '.join(state['missing']) or '-'}")


if __name__ == "__main__":
    from bench.harness import script

    script(__file__)
