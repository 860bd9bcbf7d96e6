"""Data parallelism without a wrapper: rank and world size come from torch.distributed when it is initialized
(the SLURM launcher sets it up); otherwise everything is a no-op for a single process. With `train.fsdp` the
denoiser is also sharded over the ranks (FSDP2, `shard`)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def dist_initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def dist_info() -> DistInfo:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size())
    return DistInfo()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.world > 1:
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def average_gradients(params: list[torch.nn.Parameter], info: DistInfo) -> None:
    """All-reduce the trainable gradients (one flat buffer) and divide by the world size."""
    if info.world == 1:
        return
    for p in params:  # every rank must all-reduce the same sizes, even one that skipped its backward
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce_sum(flat, info).div_(info.world)
    off = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[off:off + n].view_as(g))
        off += n


def any_flag(flag: bool, info: DistInfo, device: torch.device) -> bool:
    """True on every rank if it is true on any (so all ranks stop or skip together)."""
    if info.world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    return bool(all_reduce_sum(t, info).item() > 0)


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        import torch.distributed as dist

        dist.barrier()


# ------------------------------------------------------------------------------------------------------- FSDP2
def shard(module: torch.nn.Module, block_lists: tuple[str, ...], device: torch.device, info: DistInfo) -> None:
    """FSDP2 (`fully_shard`) over all ranks: each block of the named lists (a ModuleList, or a single block) is one
    unit, gathered only while it runs; the root holds the rest. Parameters (LoRA factors included) become DTensors
    split N ways, and so do their gradients and optimizer moments: a denoiser that does not fit one device does
    over several. Gradients are averaged over the ranks by FSDP's reduce-scatter (not `average_gradients`)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (info.world,))
    for name in block_lists:
        blocks = getattr(module, name, None)
        if blocks is None:
            continue
        for block in (blocks if isinstance(blocks, torch.nn.ModuleList) else [blocks]):
            fully_shard(block, mesh=mesh)
    fully_shard(module, mesh=mesh)


def is_dtensor(t: object) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def gather_full(obj: object) -> object:
    """`obj` with every DTensor replaced by the whole tensor (dicts, lists and tuples walked in order). Collective
    when there are DTensors: every rank must call it, on the same structure."""
    if is_dtensor(obj):
        return obj.full_tensor()  # type: ignore[attr-defined]
    if isinstance(obj, dict):
        return {k: gather_full(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(gather_full(v) for v in obj)
    return obj


def like(full: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """A whole tensor laid out as `ref`: this rank's shard when `ref` is a DTensor, else `full` itself."""
    if not is_dtensor(ref):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(ref.device, ref.dtype), ref.device_mesh, ref.placements)  # type: ignore[attr-defined]
