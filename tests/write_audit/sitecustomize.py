"""Test helper: records every file a Python process writes, renames or removes.

Imported at start-up (as `sitecustomize`) by processes whose PYTHONPATH holds
this folder; active only when W2S_WRITE_AUDIT names a folder, where each
process appends `<pid>.jsonl`: one {"event", "path"} per write. Python's
audit hooks see every write made through Python (open, os.open, rename,
replace, mkdir, remove, rmtree); tests/test_ray_sweep.py starts Ray's worker
nodes with it, to show that workers never write the sweep folder.
"""

import json
import os
import sys

_FOLDER = os.environ.get("W2S_WRITE_AUDIT")
# event: how many of its leading arguments are paths it writes
_PATH_ARGS = {
  "os.rename": 2,
  "os.replace": 2,
  "os.link": 2,
  "os.symlink": 2,
  "os.mkdir": 1,
  "os.remove": 1,
  "os.rmdir": 1,
  "os.truncate": 1,
  "os.chmod": 1,
  "shutil.rmtree": 1,
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _hook(event, args):
  if event == "open":
    path, mode, flags = args
    writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & _WRITE_FLAGS)
    paths = [path] if writes else []
  elif event in _PATH_ARGS:
    paths = list(args[: _PATH_ARGS[event]])
  else:
    return
  for path in paths:
    if isinstance(path, (str, bytes, os.PathLike)):
      _LOG.write(json.dumps({"event": event, "path": os.path.abspath(os.fsdecode(path))}) + "\n")


if _FOLDER:
  _LOG = open(os.path.join(_FOLDER, f"{os.getpid()}.jsonl"), "a", buffering=1)  # noqa: SIM115
  sys.addaudithook(_hook)
