"""Run ``kidneytumorseg-train`` under torchrun and record, per rank and step, what DDP must guarantee.

Launched by ``test_train_run.py::test_torchrun_ddp_on_cpu``:
``python -m torch.distributed.run --nproc_per_node=2 ddp_probe.py PROBE_DIR train ...``.
The real training code runs unchanged; only ``ktstrain.train.training_step`` is wrapped to write,
after every optimiser step, the SHA-256 of the batch this rank trained on and of its parameters (in
``named_parameters`` order, names included), one JSON line per step to ``PROBE_DIR/rank<R>.jsonl``.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from ktstrain import cli, train


def _sha(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main() -> int:
    probe, argv = Path(sys.argv[1]), sys.argv[2:]
    rank = int(os.environ.get("RANK", "0"))
    out = probe / f"rank{rank}.jsonl"
    step_fn = train.training_step

    def recorded(net, model, img, lab, *args, **kwargs):
        batch = _sha([img, lab])
        loss = step_fn(net, model, img, lab, *args, **kwargs)
        names, params = zip(*model.named_parameters())
        with open(out, "a") as f:
            f.write(json.dumps({"batch": batch, "params": _sha(params), "names": names}) + "\n")
        return loss

    train.training_step = recorded
    torch.set_num_threads(1)
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
