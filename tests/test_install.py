"""An install as a user gets it: inference without torch, and the built wheel in a fresh virtual
environment, run from a folder that is not the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serving import free_port, wait_healthy

REPO = Path(__file__).resolve().parents[1]

# A sitecustomize that makes torch unimportable, as in an install without the [train] extra.
NO_TORCH = '''import sys


class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not installed (blocked by the test)")
        return None


sys.meta_path.insert(0, NoTorch())
'''


def no_torch_env(tmp_path: Path) -> dict[str, str]:
    """Environment whose Python processes cannot import torch."""
    folder = tmp_path / "no_torch"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(NO_TORCH)
    env = {k: v for k, v in os.environ.items() if k != "WEEDSEG_MODELS"}  # another test may have set it
    return {**env, "PYTHONPATH": str(folder)}


def run_python(python: str | Path, code: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-c", code], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)


PREDICT_WITHOUT_TORCH = '''
import sys
from weedseg.cli import main
code = main(["predict", sys.argv[1], "--out", "out"])
assert "torch" not in sys.modules, "weedseg predict imported torch"
import weedseg.infer.image, weedseg.infer.pipeline, weedseg.infer.session
assert "torch" not in sys.modules, "weedseg.infer imported torch"
print("exit", code)
'''


def test_predict_and_infer_without_torch(tmp_path, peanut_root):
    image = sorted((peanut_root / "images").glob("*.jpg"))[0]
    env = no_torch_env(tmp_path)
    done = subprocess.run([sys.executable, "-c", PREDICT_WITHOUT_TORCH, str(image)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "exit 0" in done.stdout
    assert (tmp_path / "out" / f"{image.stem}.mask.png").is_file()


def test_dataset_check_without_torch_compares_the_masks_of_a_duplicated_photo(tmp_path):
    """The sample folder with one photo stored twice, the copy's mask partly repainted: the check scores how
    far the two masks agree (numpy only) on an install without torch."""
    data = tmp_path / "data"
    shutil.copytree(REPO / "samples" / "peanut", data)
    shutil.copy(data / "images" / "0082.jpg", data / "images" / "copy.jpg")
    mask = np.array(Image.open(data / "labels" / "0082.png"))
    mask[:100, :100] = (255, 0, 0)  # weed
    Image.fromarray(mask).save(data / "labels" / "copy.png")
    env = no_torch_env(tmp_path)
    env["PYTHONPATH"] += os.pathsep + str(REPO)  # this checkout's weedseg, whatever the venv installed
    done = subprocess.run([sys.executable, "-m", "weedseg.cli", "dataset", "check", "--dataset", "folder",
                           "--data-root", str(data)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "images 0082.jpg and copy.jpg are the same photo; their masks agree at" in done.stdout
    assert "no problems found" in done.stdout and "Traceback" not in done.stderr


def test_training_command_without_torch_says_what_to_install(tmp_path):
    env = no_torch_env(tmp_path)
    done = subprocess.run([sys.executable, "-m", "weedseg.cli", "train", "--epochs", "1"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "pip install 'weedseg[train]'" in done.stderr and "Traceback" not in done.stderr


APP_RENDERS = '''
import sys
from streamlit.testing.v1 import AppTest
from weedseg.resources import APP_SCRIPT
at = AppTest.from_file(str(APP_SCRIPT), default_timeout=60).run()
assert not at.exception, at.exception
assert at.sidebar.selectbox[0].value == "weedseg-peanut-default.onnx", at.sidebar.selectbox[0].value
assert "torch" not in sys.modules
print(APP_SCRIPT)
'''


def test_every_subpackage_is_listed_for_the_wheel():
    """pyproject.toml lists the packages (app/ and models/ are mapped into weedseg): a new one must be added."""
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "weedseg").rglob("*.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"


def checkout_copy(tmp_path: Path) -> Path:
    """A copy of the checkout to install from (the checkout itself gets no build/ folder with stale files)."""
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".*", "build", "dist", "runs", "gpu_data", "*.egg-info",
                                                                  "__pycache__"))
    return source


def fresh_venv(tmp_path: Path, *install: str) -> tuple[Path, Path]:
    """A new venv that borrows this venv's packages through a .pth file (offline), with weedseg installed from
    `install` (pip install arguments, no dependencies); returns its bin folder and site-packages."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    site = Path(run_python(python, "import sysconfig; print(sysconfig.get_path('purelib'))", dict(os.environ),
                           tmp_path).stdout.strip())
    (site / "borrowed_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    *install], check=True, capture_output=True, timeout=120)
    return venv / "bin", site


@pytest.mark.slow
def test_wheel_in_fresh_venv_predicts_and_serves_the_app(tmp_path, peanut_root):
    """Build the wheel, install it without dependencies into a new venv that borrows this venv's packages
    (offline), then run predict and the app from a temporary folder, with torch blocked."""
    source = checkout_copy(tmp_path)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(source)], check=True, capture_output=True, timeout=120)
    wheel = next(wheels.glob("weedseg-*.whl"))
    assert wheel.stat().st_size < 40e6
    packed = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(source).as_posix() for p in (source / "weedseg").rglob("*.py")}
    assert modules <= packed, f"not in the wheel (list its package in pyproject.toml): {sorted(modules - packed)}"
    # the top-level app/ and models/ of the checkout, carried inside the package
    assert {"weedseg/app/weedseg_app.py", "weedseg/weights/README.md", "weedseg/weights/weedseg-peanut-default.onnx",
            "weedseg/data/split_files/peanut.json"} <= packed
    bin_dir, site = fresh_venv(tmp_path, str(wheel))

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = no_torch_env(tmp_path)
    image = sorted((peanut_root / "images").glob("*.jpg"))[0]
    done = subprocess.run([str(bin_dir / "weedseg"), "predict", str(image), "--out", "out"], env=env, cwd=work,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (work / "out" / f"{image.stem}.mask.png").is_file()
    assert str(site) in done.stderr  # the model came from the installed wheel, not the checkout

    rendered = run_python(bin_dir / "python", APP_RENDERS, env, work)
    assert rendered.returncode == 0, rendered.stderr
    assert rendered.stdout.strip().startswith(str(site))

    port = free_port()
    server = subprocess.Popen([str(bin_dir / "weedseg"), "app", "--port", str(port)], env=env, cwd=work,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_healthy(f"http://localhost:{port}", server)
        with urllib.request.urlopen(f"http://localhost:{port}/", timeout=5) as page:
            assert page.status == 200 and b"<html" in page.read().lower()
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_editable_install_finds_the_models_and_the_page_at_the_top_of_the_checkout(tmp_path):
    """`pip install -e .` (as make setup does): the models stay in models/ and the page in app/, and predict
    without --model runs from another folder."""
    source = checkout_copy(tmp_path)
    bin_dir, _ = fresh_venv(tmp_path, "--no-build-isolation", "-e", str(source))
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = no_torch_env(tmp_path)
    image = source / "samples" / "peanut" / "images" / "0082.jpg"
    done = subprocess.run([str(bin_dir / "weedseg"), "predict", str(image), "--out", "out"], env=env, cwd=work,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert str(source / "models" / "weedseg-peanut-default.") in done.stderr  # or its INT8 version, as auto times
    found = run_python(bin_dir / "python", "from weedseg.resources import APP_SCRIPT; print(APP_SCRIPT)", env, work)
    assert found.stdout.strip() == str(source / "app" / "weedseg_app.py"), found.stderr
