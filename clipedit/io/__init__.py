"""File output that never leaves a half-written file: atomic writes of JSON, images, ``.safetensors``,
of several files together and of whole output sets (a run's files appear together or not at all).

Every writer goes through one guard, :func:`guard_output`: it refuses the bundled assets, a checkpoint
this process loaded a model from, a special file, the current folder (or one above it) as an output
folder, and an output folder holding a mount point; and it first finishes or rolls back what a killed
run left half-done on that path.

Temporaries carry their owner and a proof that clipedit made them in their name
(``.<name>.<pid>-<start time>.<random>.<mac>.tmp``; the mac is keyed by a per-user secret): a run
removes only temporaries it can authenticate whose process is gone, never a user's file that merely
looks like one, never a live run's. Writers of one output hold a lock beside it (``.<name>.lock``,
removed after), so that two runs on one ``--out`` take turns; a set replacing an older one swaps whole
directories (old aside, new in, old deleted), and a swap that a kill interrupted is finished or rolled
back by the next writer of that folder, from a journal it can authenticate (one naming anything but
its own output's temporaries is refused in one line).

Modules: ``atomic`` (the atomic writers), ``formats`` (JSON, images, ``.safetensors``), ``guard`` (the one
check before a write), ``journals`` (whole-folder swaps, their lock and recovery), ``owners`` (authenticated
temporaries), ``checks`` (path checks and the one-line write error); the names below are the public ones.
"""
from clipedit.io.atomic import atomic_file_set, atomic_output_set, atomic_path
from clipedit.io.checks import check_replaceable, ensure_writable_dir, require_file, write_failure
from clipedit.io.formats import read_safetensors_metadata, save_image, save_state_dict, strict_json, write_json
from clipedit.io.guard import bundled_assets, guard_output, note_source
from clipedit.io.journals import recover_interrupted_files, recover_interrupted_swap
from clipedit.io.owners import authentic_temporary, owner_tag, remove_stale_temporaries, temporary_name

__all__ = ["atomic_file_set", "atomic_output_set", "atomic_path", "authentic_temporary", "bundled_assets",
           "check_replaceable", "ensure_writable_dir", "guard_output", "note_source", "owner_tag",
           "read_safetensors_metadata", "recover_interrupted_files", "recover_interrupted_swap",
           "remove_stale_temporaries", "require_file", "save_image", "save_state_dict", "strict_json",
           "temporary_name", "write_failure", "write_json"]
