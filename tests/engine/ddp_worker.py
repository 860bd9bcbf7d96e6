"""One rank of a gloo data-parallel run (used by test_ddp.py):
python ddp_worker.py SPEC.yaml OUT RANK WORLD PORT [STOP_IN_EVAL_AT_STEP|-] [resume]

With STOP_IN_EVAL_AT_STEP, rank 0 alone is asked to stop as the mid-run eval of that step starts, as a signal
arriving then would (that eval is then interrupted within one UNet call on rank 0, and no other rank evaluates)."""
from __future__ import annotations

import os
import sys

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
        import rewardtune.api as api
        from rewardtune.engine import control
        from rewardtune.engine.trainer import Trainer

        if stop_at is not None and rank == 0:
            evaluate = Trainer.evaluate

            def stop_as_the_eval_starts(self, tag, writer, step=None):
                if tag == f"step_{stop_at:06d}":
                    control.request_stop("test: stop during a mid-run eval")
                return evaluate(self, tag, writer, step)

            Trainer.evaluate = stop_as_the_eval_starts
        api.run(spec, output_dir=out, progress=False, resume=resume)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
