"""Test-time augmentation (weedseg.tta): the mean over mirrored and quarter-turned copies, for torch and numpy."""

import numpy as np
import pytest
import torch

from weedseg.cli import build_parser, tta_mode
from weedseg.tta import tta_logits, views


@pytest.fixture
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Conv2d(3, 3, 3, padding=1)  # neither mirror- nor rotation-symmetric


def symmetries(x: torch.Tensor) -> list[torch.Tensor]:
    return [m.rot90(k, (-2, -1)) for m in (x, x.flip(-1)) for k in range(4)]


def test_modes_average_2_or_8_copies(model):
    x = torch.rand(1, 3, 8, 10)  # not square: quarter turns swap height and width
    assert views(None) == [(False, 0)] and len(views("flip")) == 2 and len(set(views("rotate"))) == 8
    assert torch.equal(tta_logits(model, x, None), model(x))
    assert torch.allclose(tta_logits(model, x, "flip"), (model(x) + model(x.flip(-1)).flip(-1)) / 2)
    turned_back = [model(x.rot90(k, (-2, -1))).rot90(-k, (-2, -1)) for k in range(4)]
    mirrored_back = [model(x.flip(-1).rot90(k, (-2, -1))).rot90(-k, (-2, -1)).flip(-1) for k in range(4)]
    assert torch.allclose(tta_logits(model, x, "rotate"), sum(turned_back + mirrored_back) / 8, atol=1e-6)
    with pytest.raises(ValueError, match="flip, rotate"):
        views("d8")


@torch.no_grad()
def test_rotate_tta_treats_every_orientation_of_a_photo_alike(model):
    x = torch.rand(1, 3, 8, 10)
    out = tta_logits(model, x, "rotate")
    for copy, expected in zip(symmetries(x), symmetries(out)):
        assert torch.allclose(tta_logits(model, copy, "rotate"), expected, atol=1e-5)
    flip = tta_logits(model, x, "flip")
    assert not torch.allclose(tta_logits(model, x.rot90(1, (-2, -1)), "flip"), flip.rot90(1, (-2, -1)), atol=1e-4)


@torch.no_grad()
def test_numpy_arrays_take_the_same_path(model):
    x = torch.rand(2, 3, 8, 10)
    run = lambda b: model(torch.from_numpy(np.ascontiguousarray(b))).numpy()  # noqa: E731
    for mode in (None, "flip", "rotate"):
        np.testing.assert_allclose(tta_logits(run, x.numpy(), mode), tta_logits(model, x, mode).numpy(), atol=1e-6)


def test_the_flags_choose_the_mode():
    parse = build_parser().parse_args
    for command in (["evaluate", "model.pt"], ["predict", "photos", "--out", "masks"]):
        assert tta_mode(parse(command)) is None
        assert tta_mode(parse(command + ["--tta"])) == "flip"
        assert tta_mode(parse(command + ["--tta-rotate"])) == "rotate"
