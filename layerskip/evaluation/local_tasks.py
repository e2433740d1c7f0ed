"""Local lm-eval tasks whose data files are relative to their own YAML.

lm-eval resolves a task's relative ``dataset_kwargs.data_files`` from the working directory, so a
task directory passed as ``--include_path`` works only when run from one place. ``layerskip eval``
keeps lm-eval's rule first and adds the one a task author expects: a relative path that does not
exist from the working directory but does beside the task's YAML is taken from there. Such a task
is handed to lm-eval as its config (a dict, which ``simple_evaluate`` accepts in place of a name)
with those paths made absolute; every other task stays a name.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any


def _resolved(files: Any, base: Path) -> Any:
    """``data_files`` (a path, a list of paths or a split -> path(s) mapping) with relative paths that
    exist only beside the YAML (``base``) made absolute."""
    if isinstance(files, str):
        path = Path(files)
        if not path.is_absolute() and not path.exists() and (base / path).exists():
            return str((base / path).resolve())
        return files
    if isinstance(files, list):
        return [_resolved(f, base) for f in files]
    if isinstance(files, dict):
        return {split: _resolved(f, base) for split, f in files.items()}
    return files


def task_specs(manager: Any, tasks: list[str]) -> list[str | dict[str, Any]]:
    """Each task name, or its config with data files resolved beside its YAML (see the module docstring).

    ``manager``: lm-eval's ``TaskManager``; its index entries carry ``yaml_path`` and ``cfg``.
    """
    specs: list[str | dict[str, Any]] = []
    for name in tasks:
        entry = manager.task_index.get(name)
        cfg, yaml_path = getattr(entry, "cfg", None), getattr(entry, "yaml_path", None)
        files = (cfg or {}).get("dataset_kwargs", {}).get("data_files") if isinstance(cfg, dict) else None
        if files is None or yaml_path is None:
            specs.append(name)
            continue
        resolved = _resolved(files, Path(yaml_path).parent)
        if resolved == files:
            specs.append(name)
            continue
        config = copy.deepcopy(cfg)
        config["dataset_kwargs"]["data_files"] = resolved
        specs.append(config)
    return specs
