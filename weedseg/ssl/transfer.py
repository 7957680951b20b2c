"""Fine-tuning from a pretrained checkpoint: copy the whole network except (by default) the head.

Policy: every tensor of the encoder and decoder (weights and batch-norm statistics) is copied.
The head (`head.*`, the final 1x1 convolution) is re-initialised by default: a reconstruction
head predicts RGB, which is no useful start for class logits. `copy_head=True` (`--init-head`)
copies it when the shapes match (3 classes), as the paper's reference code does; a head of
another shape is always re-initialised. Nothing is frozen.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from torch import nn

from .. import WeedsegError

HEAD_PREFIX = "head."


def transfer_weights(model: nn.Module, ckpt: dict[str, Any], copy_head: bool = False) -> dict[str, Any]:
    """Load the pretrained tensors of `ckpt` into `model` per the policy above; returns a report.

    The report lists the `copied` tensor names and the `reinitialised` ones with the reason.
    """
    source, target = ckpt["state_dict"], model.state_dict()
    copied, reinitialised = [], {}
    for name, tensor in target.items():
        src = source.get(name)
        if src is None:
            reinitialised[name] = "not in the pretrained model"
        elif name.startswith(HEAD_PREFIX) and not copy_head:
            reinitialised[name] = "head (re-initialised by default; --init-head copies it)"
        elif src.shape != tensor.shape:
            reinitialised[name] = f"shape {tuple(src.shape)} in the pretrained model, {tuple(tensor.shape)} here"
        else:
            copied.append(name)
    if not copied:
        raise WeedsegError("the pretrained checkpoint shares no tensor with this model")
    model.load_state_dict({**target, **{name: source[name] for name in copied}})
    return {"copied": copied, "reinitialised": reinitialised}


def check_init_model(ckpt: dict[str, Any], model_name: str, path: str) -> None:
    """Raise a WeedsegError when the pretrained checkpoint holds another architecture than `model_name`."""
    pretrained = ckpt["model"]["name"]
    if pretrained != model_name:
        raise WeedsegError(f"{path} holds a {pretrained} model but this run trains {model_name}; "
                           f"pass --model {pretrained}")


def format_report(report: dict[str, Any]) -> str:
    """A short human summary of a transfer report."""
    groups = Counter(name.split(".")[0] for name in report["copied"])
    lines = [f"copied {len(report['copied'])} tensors from the pretrained model ("
             + ", ".join(f"{g}: {n}" for g, n in groups.items()) + ")"]
    lines += [f"re-initialised {name}: {why}" for name, why in report["reinitialised"].items()]
    return "\n".join(lines)
