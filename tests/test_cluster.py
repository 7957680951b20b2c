"""`weedseg predict --ray`: a local Ray cluster of two workers gives a local run's outputs, file for file."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from weedseg import WeedsegError, __version__
from weedseg.cli import main
from weedseg.data.io import RUN_MANIFEST, file_sha256
from weedseg.infer import cluster
from weedseg.infer.outdir import JOURNAL
from weedseg.infer.pipeline import PredictOptions, plan_jobs
from weedseg.infer.session import DEFAULT_MODEL

needs_ray = pytest.mark.skipif(cluster.ray is None, reason='needs pip install "weedseg[cluster]"')


@pytest.fixture()
def ray_cluster():
    """A Ray instance of two worker CPUs in this process (so two workers of one CPU), shut down after the test."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


@pytest.fixture()
def photos(peanut_root, tmp_path) -> Path:
    """Six peanut photos, one in a sub-folder."""
    folder = tmp_path / "photos"
    (folder / "north").mkdir(parents=True)
    for i, src in enumerate(sorted((peanut_root / "images").glob("*.jpg"))[:6]):
        shutil.copy(src, folder / ("north" if i == 4 else ".") / src.name)
    return folder


def files(folder: Path) -> dict[str, bytes | list[bytes]]:
    """Every file's bytes; the run journal's lines sorted, as they are written in the order images finish."""
    found = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
    found[JOURNAL] = sorted(found[JOURNAL].splitlines())
    return found


def statuses(out: Path) -> list[str]:
    with open(out / "summary.csv", newline="") as f:
        return [row["status"] for row in csv.DictReader(f)]


def interrupt(out: Path) -> None:
    """What a run killed part way leaves: two masks not yet written, an overlay missing, no summary."""
    for name in ("0002.mask.png", "north/0005.mask.png", "0003.overlay.jpg", "summary.csv"):
        (out / name).unlink()


@pytest.mark.slow
@needs_ray
def test_ray_run_matches_local_run_resumes_like_it_and_survives_a_lost_worker(ray_cluster, photos, tmp_path, caplog,
                                                                               monkeypatch):
    caplog.set_level(logging.INFO)
    local, spread = tmp_path / "local", tmp_path / "ray"
    common = ["predict", str(photos), "--engine", "onnxruntime"]
    assert main([*common, "--out", str(local)]) == 0
    assert main([*common, "--out", str(spread), "--ray", "auto"]) == 0
    # every file the same, byte for byte: masks, overlays, grids, spray maps, summary.csv, run record, journal
    first = files(local)
    assert files(spread) == first
    assert len(first) == 6 * 4 + 5 and len(first[JOURNAL]) == 6  # 4 per photo; summary, spray summary, record, ...
    per_worker = re.search(r"Ray: images per worker: (.*)", caplog.text).group(1)
    assert len(re.findall(r"\(pid \d+\) [1-9]", per_worker)) == 2, per_worker  # both workers predicted
    assert caplog.text.count("no ground sampling distance") == 2  # said once per run, here as locally

    for out in (local, spread):
        interrupt(out)
    assert main([*common, "--out", str(local)]) == 0
    assert main([*common, "--out", str(spread), "--ray", "auto"]) == 0
    assert files(spread) == files(local)
    assert sorted(statuses(spread)) == ["done before"] * 4 + ["predicted"] * 2

    # a worker killed mid-run (out of memory, node lost): its chunk goes to another, nothing is lost
    cluster.ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # this test module is not on the workers' path
    monkeypatch.setattr(cluster, "PredictWorker", DiesOnItsFirstChunk)
    caplog.clear()
    assert main([*common, "--out", str(tmp_path / "lost"), "--ray", "auto"]) == 0
    assert "a Ray worker was lost" in caplog.text
    assert files(tmp_path / "lost") == first


class DiesOnItsFirstChunk(cluster.PredictWorker):
    """A worker process that dies at its first chunk, as one killed by the kernel would (the first one only:
    a file beside the output folder says a worker died)."""

    def run(self, jobs, entries):
        marker = self.spec.out.parent / "a-worker-died"
        if not marker.exists():
            marker.touch()
            os._exit(1)
        yield from super().run(jobs, entries)


def test_without_ray_one_line_says_what_to_install(photos, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cluster, "ray", None)
    assert main(["predict", str(photos), "--out", str(tmp_path / "out"), "--ray", "auto"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == 'weedseg: error: --ray needs Ray: pip install "weedseg[cluster]"'
    assert not (tmp_path / "out").exists()


@needs_ray
def test_a_wrong_address_is_refused_at_once(photos, tmp_path, capsys):
    assert main(["predict", str(photos), "--out", str(tmp_path / "out"), "--ray", "127.0.0.1:1"]) == 2
    assert "cannot reach a Ray cluster at 127.0.0.1:1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def worker_spec(out: Path, **changes) -> cluster.WorkerSpec:
    record = {"format": "weedseg.predict-run/1", "input": "/photos"}
    (out / RUN_MANIFEST).write_text(json.dumps(record))
    spec = cluster.WorkerSpec(__version__, None, file_sha256(DEFAULT_MODEL), "cpu", "onnxruntime", 1, None,
                              PredictOptions(), out, record)
    return replace(spec, **changes)


@pytest.fixture()
def weedseg_logger(monkeypatch):
    """A worker takes over the weedseg logger (its records go to the driver): put it back after the test."""
    logger = logging.getLogger("weedseg")
    for attr in ("handlers", "propagate", "level"):
        monkeypatch.setattr(logger, attr, getattr(logger, attr))


@pytest.mark.parametrize(("changes", "problem"), [
    ({}, None),
    ({"version": "0.0.1"}, "install the same version on every node"),
    ({"model_sha256": "0" * 64}, "has another model at"),
    ({"record": {"format": "another run"}}, "does not see the output folder"),
])
def test_a_worker_reports_what_stops_it_in_one_line(tmp_path, weedseg_logger, changes, problem):
    worker = cluster.PredictWorker(worker_spec(tmp_path, **changes))
    where, said, _ = worker.ready()
    assert said is None if problem is None else problem in said
    assert f"pid {os.getpid()}" in where


def test_chunks_keep_input_order_and_give_an_orthomosaic_its_own(tmp_path):
    names = [f"{i:02d}.jpg" for i in range(20)] + ["field.tif"] + [f"{i:02d}.jpg" for i in range(20, 25)]
    jobs = plan_jobs([tmp_path / n for n in names], tmp_path, tmp_path / "out", "jpg")
    for job in jobs:  # plan_jobs reads the tags of the GeoTIFF, absent here: say it is one
        if job.name == "field.tif":
            job.mask = job.mask.with_suffix(".tif")
    parts = cluster.chunks(jobs, workers=2)
    assert [j.index for part in parts for j in part] == list(range(26))
    assert [len(p) for p in parts] == [4, 4, 4, 4, 4, 1, 4, 1]  # 26 jobs: about 4 chunks per worker
    with pytest.raises(WeedsegError, match="give auto, local or the cluster's HOST:PORT"):
        cluster.check_reachable("head-node")
