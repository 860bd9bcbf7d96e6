"""One rank of a gloo run with the denoiser sharded by FSDP2 (used by test_fsdp.py):
python fsdp_worker.py SPEC.yaml OUT RANK WORLD PORT [STOP_AT_STEP] [resume]

Writes OUT-rankR.json: whether the trainable parameters are DTensors and how many of their elements this rank
holds, then trains (stopping after STOP_AT_STEP when given; resuming when asked)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def main() -> None:
    spec, out, rank, world, port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    stop_at = int(sys.argv[6]) if len(sys.argv) > 6 and sys.argv[6] != "-" else None
    resume = len(sys.argv) > 7 and sys.argv[7] == "resume"
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from torch.distributed.tensor import DTensor

        from rewardtune.engine import control
        from rewardtune.engine.build import build_trainer
        from rewardtune.spec.load import load_spec

        def stop(ev):
            if stop_at is not None and ev.step == stop_at:
                control.request_stop("test interrupt")

        tr = build_trainer(load_spec(spec), output_dir=out, progress=False, callbacks=[stop])
        params = tr.diff.trainable_parameters()
        info = {"dtensor": all(isinstance(p, DTensor) for p in params),
                "local": sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in params),
                "total": sum(p.numel() for p in params)}
        Path(f"{out}-rank{rank}.json").write_text(json.dumps(info))
        tr.run(resume=resume)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
