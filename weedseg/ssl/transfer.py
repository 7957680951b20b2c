"""Fine-tuning from a pretrained checkpoint: copy the whole network except (by default) the head.

Policy: every tensor of the encoder and decoder (weights and batch-norm statistics) is copied.
The head (`head.*`, the final 1x1 convolution) is re-initialised by default: a reconstruction
head predicts RGB, which is no useful start for class logits. `copy_head=True` (`--init-head`)
copies it when the shapes match (3 classes), as the paper's reference code does; a head of
another shape is always re-initialised. Nothing is frozen.

A segmentation checkpoint (classes other than the reconstruction's RGB) given with the dataset's
`classes` has its head matched by class name instead: each class of the dataset gets the head
row of the class of that name (whatever its position) and classes it lacks get fresh rows; a
checkpoint whose classes share no name with the dataset's gets a fresh head, and the report says why.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch import nn

from .. import WeedsegError
from .pretrain import RGB

HEAD_PREFIX = "head."


def transfer_weights(model: nn.Module, ckpt: dict[str, Any], copy_head: bool = False,
                     classes: list[str] | None = None) -> dict[str, Any]:
    """Load the pretrained tensors of `ckpt` into `model` per the policy above; returns a report.

    `classes` are the model's class names (the dataset's). The report lists the `copied` tensor
    names, the `reinitialised` ones with the reason and, for a head matched by name, `head_classes`.
    """
    source, target = dict(ckpt["state_dict"]), model.state_dict()
    copied, reinitialised, report = [], {}, {}
    head_reason = "head (re-initialised by default; --init-head copies it)"
    if classes is not None and ckpt.get("classes", RGB) != RGB:
        rows, head = match_head_rows(ckpt["classes"], classes)
        copy_head = bool(head["matched"])
        if copy_head:
            report["head_classes"] = head
            for name in (n for n in target if n.startswith(HEAD_PREFIX) and n in source):
                source[name] = torch.stack([source[name][r] if r is not None else target[name][i]
                                            for i, r in enumerate(rows)])
        else:
            head_reason = f"the pretrained model's classes {ckpt['classes']} share no name with this dataset's {classes}"
    for name, tensor in target.items():
        src = source.get(name)
        if src is None:
            reinitialised[name] = "not in the pretrained model"
        elif name.startswith(HEAD_PREFIX) and not copy_head:
            reinitialised[name] = head_reason
        elif src.shape != tensor.shape:
            reinitialised[name] = f"shape {tuple(src.shape)} in the pretrained model, {tuple(tensor.shape)} here"
        else:
            copied.append(name)
    if not copied:
        raise WeedsegError("the pretrained checkpoint shares no tensor with this model")
    model.load_state_dict({**target, **{name: source[name] for name in copied}})
    return {"copied": copied, "reinitialised": reinitialised, **report}


def match_head_rows(pretrained: list[str], classes: list[str]) -> tuple[list[int | None], dict[str, Any]]:
    """For each class, the pretrained head row of the same name (None: a new class), and what was matched."""
    shared = [name for name in classes if name in pretrained]
    rows = [pretrained.index(name) if name in pretrained else None for name in classes]
    return rows, {"matched": shared, "reordered": shared != [n for n in pretrained if n in classes],
                  "new": [n for n in classes if n not in pretrained],
                  "unused": [n for n in pretrained if n not in classes]}


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
    head = report.get("head_classes")
    if head:
        lines.append(f"head matched by class name: {', '.join(head['matched'])}"
                     + (" (in another order than the pretrained model's)" if head["reordered"] else ""))
        if head["new"]:
            lines.append(f"new classes, head rows re-initialised: {', '.join(head['new'])}")
        if head["unused"]:
            lines.append(f"pretrained classes this dataset lacks, dropped: {', '.join(head['unused'])}")
    return "\n".join(lines)
