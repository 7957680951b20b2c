"""Run the experiment's jobs as child processes, several at once, each logging to its own folder.

A job whose done file exists is skipped; an unfinished one continues from its resume point (its
commands carry --resume), so an interrupted experiment picks up where it stopped. A job that fails
is reported with its log, the jobs that need it are left out, and the others still run.
"""

from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

from tqdm import tqdm

from ..processes import ChildProcesses
from .plan import Job


STOP_GRACE_S = 60.0  # from Ctrl-C to kill: a run saves its progress in that time


def run_job(job: Job, threads: int, children: ChildProcesses) -> int:
    """Run a job's commands in order (stopping at the first failure, or when the runs are being stopped);
    returns the exit status."""
    job.folder.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_MININTERVAL": "20", "PYTHONUNBUFFERED": "1"}
    with job.log.open("a") as log:
        for cmd in job.commands:
            log.write(f"\n$ {' '.join(cmd)}   # {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            log.flush()
            proc = children.start(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
            code = 130 if proc is None else children.wait(proc)  # 130: stopped by Ctrl-C, as a shell says
            if code:
                return code
    return 0


def run_jobs(jobs: list[Job], parallel: int, threads: int, progress: bool = True) -> list[Job]:
    """Run the jobs not yet done, `parallel` at a time with `threads` CPU threads each, in list order as
    far as their needs allow. Returns the jobs that failed (or could not start because a need failed).
    On Ctrl-C (or SIGTERM under processes.sigterm_as_ctrl_c) the running jobs get Ctrl-C too (each keeps its
    saved progress; killed after STOP_GRACE_S), no job starts after it, and KeyboardInterrupt is raised."""
    done = {j.name for j in jobs if j.done}
    todo = [j for j in jobs if not j.done]
    failed: list[Job] = []
    children = ChildProcesses(STOP_GRACE_S)
    futures: dict[Future, tuple[Job, float]] = {}
    bar = tqdm(total=len(jobs), initial=len(done), desc="experiment runs", unit="run", disable=not progress)
    pool = ThreadPoolExecutor(max_workers=parallel)
    try:
        while todo or futures:
            blocked = [j for j in todo if any(n in {f.name for f in failed} for n in j.needs)]
            for job in blocked:
                todo.remove(job)
                failed.append(job)
                bar.write(f"left out: {job.name} (needs a run that failed)")
            for job in [j for j in todo if all(n in done for n in j.needs)][: parallel - len(futures)]:
                todo.remove(job)
                futures[pool.submit(run_job, job, threads, children)] = (job, time.perf_counter())
            if not futures:
                break
            bar.set_postfix_str(", ".join(job.name for job, _ in futures.values()))
            finished, _ = wait(futures, timeout=30, return_when=FIRST_COMPLETED)
            for future in finished:
                job, start = futures.pop(future)
                minutes = (time.perf_counter() - start) / 60
                if future.result() == 0 and job.done:
                    done.add(job.name)
                    bar.update(1)
                    bar.write(f"done: {job.name} in {minutes:.1f} min")
                else:
                    failed.append(job)
                    bar.write(f"FAILED: {job.name} after {minutes:.1f} min; its log: {job.log}")
    except KeyboardInterrupt:
        children.stop()  # a run keeps every finished epoch; the next run resumes it
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return failed


def log_tail(path: Path, lines: int = 5) -> str:
    """The last lines of a job log, for error messages."""
    if not path.is_file():
        return ""
    return "\n".join("    " + line for line in path.read_text(errors="replace").splitlines()[-lines:])
