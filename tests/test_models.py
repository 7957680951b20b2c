"""Model registry, output shapes at odd sizes, parameter budgets and checkpoint round trip."""

import pytest
import torch

from weedseg import WeedsegError
from weedseg.checkpoint import load_checkpoint, model_from_checkpoint
from weedseg.models import MODELS, count_parameters, create_model


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("size", [(64, 64), (37, 53), (257, 341)])
def test_output_has_input_size(name, size):
    model = create_model(name, 3).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 3, *size)


def test_parameter_counts():
    # the paper's ResNet-34 U-Net has about 24.4 M parameters
    assert 24.0e6 < count_parameters(create_model("unet-resnet34", 3)) < 24.8e6
    assert count_parameters(create_model("unet-resnet18-quarter", 3)) < 5e6
    assert count_parameters(create_model("unet-resnet18-half", 3)) < 5e6


def test_unknown_model_names_the_choices():
    with pytest.raises(ValueError, match="unet-resnet34"):
        create_model("unet-vgg", 3)


def test_checkpoint_round_trip(random_checkpoint):
    ckpt = load_checkpoint(random_checkpoint)
    assert ckpt["classes"] == ["soil", "crop", "weed"]
    assert ckpt["colors"][2] == [255, 0, 0]
    model = model_from_checkpoint(ckpt)
    x = torch.randn(1, 3, 96, 128)
    reference = create_model("unet-resnet18-quarter", 3).eval()
    reference.load_state_dict(ckpt["state_dict"])
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_bad_checkpoint_files_give_clear_errors(tmp_path):
    with pytest.raises(WeedsegError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeedsegError, match="not a readable weedseg checkpoint"):
        load_checkpoint(junk)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(WeedsegError, match="not a weedseg checkpoint"):
        load_checkpoint(other)
