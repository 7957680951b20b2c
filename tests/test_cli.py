"""The command line: help for every subcommand, evaluation output, errors without tracebacks."""

import json
import subprocess
import sys

import pytest

from weedseg.cli import build_parser, main


def test_every_subcommand_has_help(capsys):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in sub.choices:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert "usage: weedseg " + name in capsys.readouterr().out


def test_evaluate_prints_and_writes_json(trained_run, peanut_root, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert main(["evaluate", str(trained_run / "best.pt"), "--data-root", str(peanut_root),
                 "--split", "val", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "confusion" in printed
    metrics = json.loads(out.read_text())
    assert set(metrics["iou"]) == {"soil", "crop", "weed"}
    assert len(metrics["confusion_matrix"]) == 3 and metrics["images"] == 40


def test_full_resolution_scoring_counts_every_original_pixel(trained_run, peanut_root, tmp_path):
    out = tmp_path / "full.json"
    assert main(["evaluate", str(trained_run / "best.pt"), "--data-root", str(peanut_root),
                 "--split", "val", "--full-res", "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert sum(map(sum, metrics["confusion_matrix"])) == 40 * 960 * 720


def test_missing_data_is_one_clear_message(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "weedseg.cli", "train", "--dataset", "sugarbeets",
                           "--data-root", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "sugarbeets dataset not found" in proc.stderr
    assert "Traceback" not in proc.stderr
