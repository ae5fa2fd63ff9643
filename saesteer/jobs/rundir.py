"""The run directory: a new one, or one whose earlier results are replaced only when asked.

A job writes ``metrics.json``, ``report.md`` and its other outputs into its run directory
(``hydra.run.dir``; a fresh timestamped one by default).  A directory that already holds
another run's results (:data:`RESULT_FILES`: ``metrics.json``, ``report.md`` or the
:data:`RUN_MARKER` every run writes when it starts) is refused, so two runs never mix,
unless the job is given ``overwrite=true``: then the earlier results are removed first,
after the preflight passed.  What Hydra writes into the run directory before the job
starts (``.hydra/`` and the job's log) is no run's result.

A run directory that is a file, or under a file, or that cannot be written fails in one
line too, before Hydra or the job writes anything (``saesteer``'s command line checks
``hydra.run.dir`` / ``hydra.sweep.dir`` before handing over to Hydra).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

#: written into the run directory when a job starts: a run was here, even one that stopped half-way
RUN_MARKER = ".saesteer-run.json"

#: files that mark a directory as holding another run's results
RESULT_FILES = ("metrics.json", "report.md", RUN_MARKER)

#: a multirun's summary (saesteer.sweeps): a sweep directory that holds it holds an earlier sweep
SWEEP_FILES = ("sweep_summary.csv", "sweep_summary.md")

_HOW = "pass a new hydra.run.dir (the default is a fresh timestamped one), or overwrite=true to replace them"


class RunDirError(ValueError):
    """The run directory holds another run's results, is a file, or cannot be written."""


def earlier_results(run_dir: str | os.PathLike) -> list[str]:
    """The files of :data:`RESULT_FILES` in ``run_dir`` (another run's results), in that order."""
    path = Path(run_dir)
    return [name for name in RESULT_FILES if (path / name).exists()] if path.is_dir() else []


def check_writable(run_dir: str | os.PathLike, what: str = "run directory") -> None:
    """A RunDirError unless ``run_dir`` is a directory, or can be made one, that this process can write into.

    The directory (and its missing parents) are made and a file written and removed to be sure (permission bits
    do not bind root; a read-only file system does); what this made is removed again."""
    path = Path(run_dir).expanduser()
    shown = str(run_dir)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{what} {shown!r} is a file; expected a directory for the run's outputs (a new path)")
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise RunDirError(
            f"{what} {shown!r} cannot be made: {str(parent)!r} is a file; expected a path under a directory"
        )
    created: list[Path] = []
    try:
        for d in reversed([path, *path.parents]):
            if not d.exists():
                d.mkdir()
                created.append(d)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".saesteer-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise RunDirError(
            f"{what} {shown!r} is not writable ({reason}); expected a directory this user can write to"
        ) from None
    finally:
        for d in reversed(created):
            try:
                d.rmdir()
            except OSError:
                pass


def _protected(path: Path) -> Optional[str]:
    """Why ``path`` must never be emptied by ``overwrite=true`` (the current directory, one of its parents, home), or None."""
    p = path.expanduser().resolve()
    cwd = Path.cwd().resolve()
    if p == cwd:
        return "the current directory"
    if p in cwd.parents:
        return "a parent of the current directory"
    if p == Path.home().resolve():
        return "the home directory"
    return None


def check_run_dir(run_dir: str | os.PathLike, overwrite: bool = False) -> list[str]:
    """Before a job: ``run_dir`` is writable and holds no other run's results unless ``overwrite``.

    Returns the earlier results found (to be removed by :func:`clear_run_dir` once the preflight passed)."""
    check_writable(run_dir)
    found = earlier_results(run_dir)
    if found and not overwrite:
        raise RunDirError(
            f"run directory {str(run_dir)!r} holds another run's results ({', '.join(found)}); "
            f"expected a new or empty directory: {_HOW}"
        )
    if found and (why := _protected(Path(run_dir))):
        raise RunDirError(f"overwrite=true would empty {str(run_dir)!r}, {why}; expected a run directory of its own")
    return found


def clear_run_dir(
    run_dir: str | os.PathLike, keep: Sequence[str] = (), log_file: Optional[Path] = None, log_offset: int = 0
) -> None:
    """Remove everything in ``run_dir`` but ``keep`` (what Hydra wrote for this run: ``.hydra``, the job's log).

    ``log_file``: the job's log, whose first ``log_offset`` bytes are an earlier run's lines (Hydra appends to it)."""
    path = Path(run_dir)
    for entry in path.iterdir():
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    if log_file is not None and log_offset > 0 and log_file.is_file():
        for handler in logging.getLogger().handlers:
            handler.flush()
        data = log_file.read_bytes()
        with open(log_file, "r+b") as fh:  # Hydra's handler appends (O_APPEND): its next lines follow what is kept
            fh.write(data[log_offset:])
            fh.truncate()


def write_marker(run_dir: Path, job: str) -> Path:
    marker = Path(run_dir) / RUN_MARKER
    marker.write_text(
        json.dumps({"job": job, "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "pid": os.getpid()}) + "\n"
    )
    return marker


def drop_marker_if_alone(run_dir: Path, keep: Sequence[str] = ()) -> None:
    """After a failed run: remove the marker if the run left nothing else (a half-written run keeps it)."""
    path = Path(run_dir)
    others = [p for p in path.iterdir() if p.name != RUN_MARKER and p.name not in keep] if path.is_dir() else []
    if not others:
        (path / RUN_MARKER).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- the command line, before Hydra


def _last_value(args: Sequence[str], key: str) -> Optional[str]:
    value = None
    for a in args:
        k, sep, v = a.partition("=")
        if sep and k.lstrip("+") == key:
            value = v.strip().strip("'\"")
    return value


def _truthy(value: Optional[str]) -> bool:
    return value is not None and value.strip().lower() in ("true", "1", "yes", "on")


def check_cli_output_dirs(job: str, args: Sequence[str]) -> None:
    """``saesteer JOB args``: the run (or sweep) directory named on the command line, checked before Hydra writes
    its ``.hydra/`` there.  A sweep directory that holds an earlier sweep is emptied here with ``overwrite=true``
    (its runs' numbered folders would otherwise mix into the new summary)."""
    multirun = any(a in ("-m", "--multirun") for a in args)
    overwrite = _truthy(_last_value(args, "overwrite"))
    if not multirun:
        run_dir = _last_value(args, "hydra.run.dir")
        if run_dir is None:
            check_writable(
                Path("runs"), "run directory root"
            )  # the default: runs/<job>/<time> under the current directory
        elif "${" not in run_dir:
            check_run_dir(run_dir, overwrite)
        return
    sweep_dir = _last_value(args, "hydra.sweep.dir")
    if sweep_dir is None:
        check_writable(Path("multirun"), "sweep directory root")
        return
    if "${" in sweep_dir:
        return
    check_writable(sweep_dir, "sweep directory")
    path = Path(sweep_dir)
    found = [n for n in SWEEP_FILES if (path / n).exists()] if path.is_dir() else []
    if path.is_dir():
        found += [f"{d.name}/{n}" for d in sorted(path.iterdir()) if d.is_dir() for n in earlier_results(d)]
    if not found:
        return
    if not overwrite:
        shown = ", ".join(found[:4]) + (f", ... ({len(found)} in all)" if len(found) > 4 else "")
        raise RunDirError(
            f"sweep directory {sweep_dir!r} holds an earlier sweep's results ({shown}); expected a new or "
            "empty directory: pass a new hydra.sweep.dir (the default is a fresh timestamped one), or "
            "overwrite=true to replace them"
        )
    if why := _protected(path):
        raise RunDirError(f"overwrite=true would empty {sweep_dir!r}, {why}; expected a sweep directory of its own")
    clear_run_dir(path)
