"""One rank of a gloo data-parallel run (used by test_ddp.py): python ddp_worker.py SPEC.yaml OUT RANK WORLD PORT."""
from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist


def main() -> None:
    spec, out, rank, world, port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        import rewardtune.api as api

        api.run(spec, output_dir=out, progress=False)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
