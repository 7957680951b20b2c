"""The experiment: training from scratch vs random-masking vs selective-masking pretraining, paired by seed.

`run_experiment(cfg)` plans every run (weedseg.experiment.plan), runs those not yet finished as
child processes (weedseg.experiment.runner) and writes the tables and chart
(weedseg.experiment.report). Re-running the same command continues an interrupted experiment.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from .. import WeedsegError
from ..data import open_dataset
from ..processes import sigterm_as_ctrl_c
from .plan import PRESETS, ExperimentConfig, check_config, default_jobs, plan_jobs
from .report import write_report
from .runner import log_tail, run_jobs

__all__ = ["PRESETS", "ExperimentConfig", "run_experiment"]


def run_experiment(cfg: ExperimentConfig, report_only: bool = False) -> dict:
    """Run what is left of the experiment (unless `report_only`) and write OUT/results.{json,md,png}."""
    check_config(cfg)
    try:  # a missing dataset is reported now, not by every run
        data = open_dataset(cfg.dataset, cfg.data_root)
    except WeedsegError:
        if not report_only:
            raise
        data = None  # the tables need only the finished runs
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    if not report_only:
        (out / "experiment.json").write_text(json.dumps(asdict(cfg), indent=2))
        jobs = plan_jobs(cfg)
        parallel = cfg.jobs or default_jobs(cfg.device)
        threads = max(1, (os.cpu_count() or 1) // parallel)
        left = [j for j in jobs if not j.done]
        print(f"experiment in {out}: {len(jobs)} runs, {len(jobs) - len(left)} already finished; "
              f"{parallel} at a time with {threads} thread(s) each. Logs: <run folder>/job.log. "
              f"Ctrl-C stops it; the same command continues it.")
        try:
            with sigterm_as_ctrl_c():  # `kill` stops the runs as Ctrl-C does, rather than leaving them going
                failed = run_jobs(jobs, parallel, threads)
        except KeyboardInterrupt:
            raise WeedsegError("interrupted; finished runs are kept and unfinished ones resume from their last "
                               "saved epoch: run the same command again to continue") from None
    results = write_report(cfg, data)
    print(f"results: {out / 'results.md'}, {out / 'results.json'}, {out / 'results.png'}")
    if failed:
        details = "\n".join(f"  {j.name}: {j.log}\n{log_tail(j.log)}" for j in failed)
        raise WeedsegError(f"{len(failed)} run(s) did not finish:\n{details}\nFix the cause and run the same "
                           "command again; finished runs are kept")
    return results
