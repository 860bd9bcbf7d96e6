"""The training engine: DDIM sampling with truncated backprop, the methods, the objective, the training loop.

Entry points (the SLURM launcher builds on these):
- `rewardtune.api.run(...)` / `rewardtune.engine.build.build_trainer(spec, ...)` -> `Trainer.run(resume=...)`;
- rank and world size come from `torch.distributed` when it is initialized (`engine.distributed.dist_info`);
- `engine.control.request_stop()` / `install_signal_handlers()` ask the loop to stop (within one UNet call) and
  checkpoint its last finished step; the run directory's layout is `rewardtune.rundir.RunDir`'s.

Importing this package is cheap; the submodules import torch.
"""
