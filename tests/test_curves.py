"""Training curves: the picture `weedseg train` leaves in its run folder and `weedseg curves` draws."""

import shutil
import sys

import cv2
import pytest

from weedseg import WeedsegError
from weedseg.cli import main
from weedseg.curves import plot_curves, read_metrics


def test_train_leaves_curves_and_the_command_draws_several_runs_also_while_one_writes(trained_run, tmp_path,
                                                                                       capsys):
    picture = cv2.imread(str(trained_run / "curves.png"))
    assert picture is not None and picture.shape[1] > picture.shape[0] > 300  # two panels side by side
    running = tmp_path / "running"
    shutil.copytree(trained_run, running)
    with (running / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 99, "iter')  # the line a training process is writing
    assert len(read_metrics(running)) == len(read_metrics(trained_run))
    out = tmp_path / "both.png"
    assert main(["curves", str(trained_run), str(running), "--out", str(out)]) == 0
    assert f"training curves written to {out}" in capsys.readouterr().out
    assert cv2.imread(str(out)) is not None


def test_curves_of_a_folder_without_a_run_or_with_a_damaged_log_say_what_to_do(tmp_path, capsys):
    assert main(["curves", str(tmp_path)]) == 2
    assert "has no metrics.jsonl: give the folder of a `weedseg train` run" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "iteration": 4, "train_loss": 1.0}\nnot json\n'
                                            '{"epoch": 2, "iteration": 8, "train_loss": 0.9}\n')
    with pytest.raises(WeedsegError, match="line 2 is damaged"):
        read_metrics(tmp_path)


def test_without_matplotlib_the_picture_is_refused_with_the_install_line(trained_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if the [train] extra were missing
    with pytest.raises(WeedsegError, match=r"needs matplotlib: pip install 'weedseg\[train\]'"):
        plot_curves([trained_run], tmp_path / "c.png")
