"""Data parallelism for PPO: what the agent needs from a group of processes, and nothing more.

Under `accelerate launch --num_processes W` (or `torchrun`), each of the W processes owns one shard of the
global batch of episodes: it collects them, computes their losses and gradients, and the gradients are summed
across processes (one flattened all-reduce per minibatch, as DDP does in buckets). Every mean the agent takes
(token-mean losses, advantage whitening, metrics) is a *global* mean: local sums and counts are all-reduced
before dividing, so W processes compute the same update as one process holding the whole batch, up to the
order of floating-point sums.

`DataParallel()` with no process group (a plain `python`/`promptgym` run) is the identity: rank 0 of 1, every
reduction returns its input. The process group itself is set up by accelerate's `PartialState` from the
environment variables the launcher sets (gloo on CPU, NCCL on GPUs).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GlobalRows:
    """Which rows of a global batch of `size` rows (over all processes) this process holds: local row i is
    global row `held[i]`. One process holds them all (`GlobalRows.whole`)."""

    held: torch.Tensor  # [n] long
    size: int

    @classmethod
    def whole(cls, size: int) -> GlobalRows:
        return cls(torch.arange(size), size)

    def minibatches(self, order: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
        """For each run of `batch_size` entries of `order` (a permutation of the global rows), the local rows this
        process holds of it (possibly none), in `order`'s order."""
        local_of = torch.full((self.size,), -1, dtype=torch.long)
        local_of[self.held] = torch.arange(len(self.held))
        for start in range(0, self.size, batch_size):
            rows = local_of[order[start : start + batch_size]]
            yield rows[rows >= 0]


class DataParallel:
    """Rank, world size and the global reductions PPO needs; a single process when no group is running."""

    def __init__(self, rank: int = 0, world_size: int = 1) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank}, world_size={world_size}: expected 0 <= rank < world_size")
        if world_size > 1 and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise RuntimeError(
                f"world_size={world_size} but no torch.distributed process group is initialised; "
                "build it with DataParallel.from_environment() under `accelerate launch` or `torchrun`"
            )
        self.rank = rank
        self.world_size = world_size

    @classmethod
    def from_environment(cls, cpu: bool = False) -> DataParallel:
        """The process group a launcher set up (via accelerate's `PartialState`); one process if none."""
        from accelerate import PartialState

        state = PartialState(cpu=cpu)
        return cls(state.process_index, state.num_processes)

    def __repr__(self) -> str:
        return f"DataParallel(rank={self.rank}, world_size={self.world_size})"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, total: int) -> slice:
        """This process's contiguous share of `total` items (`total` must divide evenly)."""
        if total % self.world_size:
            raise ValueError(f"{total} items cannot be split evenly over {self.world_size} processes")
        size = total // self.world_size
        return slice(self.rank * size, (self.rank + 1) * size)

    def rows_of(self, n_episodes: int, derived: Sequence[int] = ()) -> GlobalRows:
        """This process's rows of a global batch of `n_episodes` episodes (its `shard`), followed by one row per
        entry of `derived`, the global episode that row derives from (a row is held where its episode is)."""
        shard = self.shard(n_episodes)
        held = [*range(shard.start, shard.stop)]
        held += [n_episodes + j for j, episode in enumerate(derived) if shard.start <= episode < shard.stop]
        return GlobalRows(torch.tensor(held, dtype=torch.long), n_episodes + len(derived))

    # -- reductions (identity in one process)
    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Element-wise sum of `tensor` over processes (a new tensor; the input is left alone)."""
        if not self.enabled:
            return tensor
        out = tensor.detach().clone()
        torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM)
        return out

    def sum_float(self, *values: float) -> list[float]:
        """Sums of Python numbers over processes, in one all-reduce."""
        if not self.enabled:
            return [float(v) for v in values]
        return self.sum(torch.tensor(values, dtype=torch.float64, device=self.device)).tolist()

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor[n, ...]` of every process concatenated along dim 0 in rank order (same shape on each)."""
        if not self.enabled:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def masked_mean(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Global mean of `x` over the True entries of `mask` (0 when there are none anywhere)."""
        x, mask = x.float(), mask.to(x.device)
        total, count = self.sum(torch.stack([(x * mask).sum(), mask.sum().float()]))
        return total / count.clamp(min=1)

    def all_reduce_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Sum the gradients of `parameters` over processes in place (a missing gradient counts as zeros)."""
        if not self.enabled:
            return
        params = [p for p in parameters if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
        for p, chunk in zip(params, flat.split([p.numel() for p in params])):
            p.grad.copy_(chunk.view_as(p.grad))

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Copy the main process's parameters and buffers into every process (identical starting weights)."""
        if not self.enabled:
            return
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                torch.distributed.broadcast(tensor.data, src=0)

    def check_in_sync(self, module: torch.nn.Module) -> None:
        """Raise if the processes' copies of `module` have drifted apart (a checksum per process)."""
        if not self.enabled:
            return
        with torch.no_grad():
            checksum = torch.stack([p.detach().double().sum() for p in module.parameters()]).sum().reshape(1)
        sums = self.gather(checksum.to(self.device)).tolist()
        if max(sums) - min(sums) > 1e-6 * max(1.0, abs(sums[0])):
            raise RuntimeError(f"data-parallel processes hold different weights (parameter checksums {sums})")

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def close(self) -> None:
        """Leave the group together and destroy it (a no-op in one process). Call at the end of a run: a process
        that exits with the group alive can abort in C++ while Python finalises ("terminate called without an
        active exception", SIGABRT; pytorch/pytorch#179291), which a non-main process that finished first did."""
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    @property
    def device(self) -> torch.device:
        """Where collective tensors live: the current CUDA device under NCCL, else the CPU."""
        if self.enabled and torch.distributed.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


SINGLE_PROCESS = DataParallel()
