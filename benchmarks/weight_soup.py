"""Average the weights of checkpoints that were trained from the same model (a uniform "model soup").

    python benchmarks/weight_soup.py OUT.pt A/best.pt B/best.pt [...]

Floating-point tensors (weights and batch-norm statistics) are averaged; the rest (batch counters) and
the description (classes, normalisation, config) come from the first checkpoint. Score OUT.pt with
`weedseg evaluate` like any run.
"""

from __future__ import annotations

import sys

import torch

from weedseg.checkpoint import atomic_torch_save, load_checkpoint


def soup(paths: list[str]) -> dict:
    """The first checkpoint with every floating-point tensor replaced by its mean over all of them."""
    ckpts = [load_checkpoint(p) for p in paths]
    first = ckpts[0]["state_dict"]
    state = {k: torch.stack([c["state_dict"][k].double() for c in ckpts]).mean(0).to(v.dtype)
             if v.is_floating_point() else v for k, v in first.items()}
    return {**ckpts[0], "state_dict": state}


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    atomic_torch_save(soup(sys.argv[2:]), sys.argv[1])
    print(f"{sys.argv[1]}: the mean of {len(sys.argv) - 2} checkpoints")
