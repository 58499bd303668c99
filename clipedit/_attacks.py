"""``clipedit.attacks`` in a checkout (imported first by ``clipedit/__init__``)."""
from __future__ import annotations


def find_attacks() -> None:
    """Make ``clipedit.attacks`` importable in a checkout, where ``attacks/`` sits beside ``clipedit/`` (a wheel
    installs it as the subpackage itself). Loaded by path, so a user's own ``attacks`` package never stands in."""
    import importlib.util
    import sys
    from pathlib import Path

    if "clipedit.attacks" in sys.modules or importlib.util.find_spec("clipedit.attacks") is not None:
        return
    folder = Path(__file__).resolve().parent.parent / "attacks"
    spec = importlib.util.spec_from_file_location("clipedit.attacks", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    if spec is None or not (folder / "__init__.py").is_file():
        raise ImportError(f"clipedit.attacks is missing (looked in {folder})")
    module = importlib.util.module_from_spec(spec)
    sys.modules["clipedit.attacks"] = module
    spec.loader.exec_module(module)
    sys.modules["clipedit"].attacks = module


find_attacks()
