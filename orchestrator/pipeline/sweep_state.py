"""Whether an interrupted Tune sweep can be resumed from the state it saved.

Tune writes its experiment state in place, with no temporary file, and copies it to the storage
path the same way: a driver killed in the middle of either leaves the file cut short. ``Tuner.can_restore``
only asks whether the sweep's directory holds a saved tuner, and ``Tuner.restore`` on such a state
(Ray 2.60) logs the decoding error and goes on with trials that have lost their configuration, so
every trial fails, on every later run. Such a state is set aside (renamed, not deleted: the trials'
own directories and results stay where they are) and the sweep starts again.
"""

from __future__ import annotations

import json
import logging

import pyarrow.fs
from ray import cloudpickle, tune

from ..runtime.redaction import redact

log = logging.getLogger(__name__)

EXPERIMENT_STATE = "experiment_state-"  # Tune's name for the trials' saved statuses (TuneController.CKPT_FILE_TMPL)
SET_ASIDE = ".unreadable"  # suffix of a state file that did not parse; Tune's file patterns skip it


def _state_files(path: str) -> tuple[pyarrow.fs.FileSystem, list[pyarrow.fs.FileInfo]]:
    """The ``*.json`` files at the top of the sweep's directory, with their filesystem: the experiment
    state (JSON) and the search algorithm's (a pickle, despite its name)."""
    fs, root = pyarrow.fs.FileSystem.from_uri(path)
    return fs, [info for info in fs.get_file_info(pyarrow.fs.FileSelector(root))
                if info.type == pyarrow.fs.FileType.File and info.base_name.endswith(".json")]


def _loads(fs: pyarrow.fs.FileSystem, info: pyarrow.fs.FileInfo) -> bool:
    with fs.open_input_stream(info.path) as stream:
        data = stream.read()
    try:
        json.loads(data) if info.base_name.startswith(EXPERIMENT_STATE) else cloudpickle.loads(data)
    except Exception:  # a pickle cut short raises EOFError or UnpicklingError, a JSON one ValueError
        return False
    return True


def unreadable_state_files(path: str) -> list[str]:
    """The sweep's saved state files that do not load, by path."""
    fs, files = _state_files(path)
    return [info.path for info in files if not _loads(fs, info)]


def resumable(path: str, label: str) -> bool:
    """Whether the sweep saved at ``path`` (a local path or a URI) can be resumed; one whose saved
    state is cut short has every state file set aside, so that a new sweep under the same name
    starts clean. ``label`` names the sweep in the warning."""
    if not tune.Tuner.can_restore(path):
        return False
    fs, files = _state_files(path)
    broken = [info.base_name for info in files if not _loads(fs, info)]
    if not broken:
        return True
    # every state file, not only the broken ones: an experiment state without its search algorithm's
    # state (or the reverse) would resume a grid sweep with its trials generated twice
    for info in files:
        fs.move(info.path, info.path + SET_ASIDE)
    log.warning("%s cannot resume: its saved state %s is cut short (the pipeline died while Tune was "
                "writing it); every trial runs again, and the state files are kept as *%s in %s",
                label, ", ".join(broken), SET_ASIDE, redact(path))
    return False
