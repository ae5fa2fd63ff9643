"""``saesteer JOB key=value ...``: every job is a Hydra app over ``conf/``."""

from __future__ import annotations

import difflib
import sys

from saesteer.jobs.registry import JOBS, job_function

USAGE = "usage: saesteer JOB [key=value ...] [hydra options]\njobs: {}"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE.format(", ".join(JOBS)) + "\n")
        sys.exit(0 if argv else 2)
    job = argv[0].replace("_", "-")
    key = job.replace("-", "_")
    if key not in {k.replace("-", "_") for k in JOBS}:
        close = difflib.get_close_matches(job, list(JOBS), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        sys.stderr.write(f"saesteer: unknown job {argv[0]!r}{hint}; jobs: {', '.join(JOBS)}\n")
        sys.exit(2)
    job = next(k for k in JOBS if k.replace("-", "_") == key)
    from saesteer.jobs.common import ConfigError, check_overrides, hydra_entry
    from saesteer.jobs.rundir import RunDirError, check_cli_output_dirs

    try:
        check_overrides(job, argv[1:])  # unknown keys / options and bad types: one line, not Hydra's report
        check_cli_output_dirs(
            job, argv[1:]
        )  # hydra.run.dir: a file, unwritable, another run's results; before Hydra writes there
    except (ConfigError, RunDirError) as exc:
        sys.stderr.write(f"saesteer {job}: error: {exc}\n")
        sys.exit(2)
    sys.argv = [f"saesteer {job}"] + argv[1:]
    hydra_entry(job, job_function(job))()


if __name__ == "__main__":  # pragma: no cover
    main()
