"""Data-parallel training under ``torchrun``: process-group set-up, rank-sharded samplers and small collectives.

``torchrun --nproc-per-node N -m ichd train cnn --config CFG --fold K`` starts N copies of the command with
``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` in their environment; :func:`distributed_session` detects them, joins
the process group (``nccl`` on CUDA with device ``cuda:LOCAL_RANK``, ``gloo`` on the CPU) and leaves it again
at the end, also on errors. Without those variables (or with ``WORLD_SIZE=1``) everything runs as one plain
process and nothing here changes the result.

Conventions (see ``docs/scaling.md``):

* ``optim.batch_size`` is the **global** batch: each of the N processes trains on ``batch_size / N`` slices per
  step (it must divide), so one config file gives the same optimisation whatever the number of processes.
* Every rank draws the epoch's training indices from the same seeded generator (identical everywhere) and keeps
  its share ``r::N`` (:class:`ShardSampler`); the union of the ranks' k-th batches is exactly the k-th batch of
  a single-process run.
* Validation is sharded the same way (:class:`EvalShardSampler`) and gathered back into the original order
  (:func:`interleave`), so every validation slice is predicted exactly once.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from ichd import errors
from ichd.errors import ConfigError, InputError
from ichd.utils.logging import get_logger

log = get_logger(__name__)
T = TypeVar("T")

#: Environment variables torchrun sets for every worker.
ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in a (possibly one-process) data-parallel job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """More than one process: gradients are averaged with DistributedDataParallel."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs, shows progress and writes files."""
        return self.rank == 0


SINGLE = DistInfo()


def env_info(environ: dict[str, str] | None = None) -> DistInfo | None:
    """The :class:`DistInfo` torchrun put in the environment, or ``None`` when not launched by torchrun."""
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local = int(env.get("LOCAL_RANK", env["RANK"]))
    except ValueError:
        raise InputError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers, got "
                         f"{[env.get(k) for k in ENV_VARS]}", hint="start the command with torchrun") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise InputError(f"inconsistent torchrun environment: RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local}")
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def current() -> DistInfo:
    """This process's place in the initialised process group (:data:`SINGLE` when there is none)."""
    if not _initialized():
        return SINGLE
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local)


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def process_device(name: str | None, info: DistInfo):  # -> torch.device
    """The device of this rank: ``cuda:LOCAL_RANK`` when ``name`` asks for (or "auto" finds) CUDA, else CPU."""
    import torch

    from ichd.utils.device import resolve_device

    base = resolve_device(name)
    if base.type != "cuda" or not info.enabled:
        return base
    if name not in (None, "", "auto", "cuda") and base.index not in (None, info.local_rank):
        log.warning("device %r ignored under torchrun: rank %d uses cuda:%d (LOCAL_RANK)", name, info.rank,
                    info.local_rank)
    if info.local_rank >= torch.cuda.device_count():
        raise InputError(f"LOCAL_RANK {info.local_rank} but only {torch.cuda.device_count()} CUDA device(s) here",
                         hint="start at most one process per GPU (--nproc-per-node)")
    return torch.device("cuda", info.local_rank)


@contextlib.contextmanager
def distributed_session(device_name: str | None = "auto") -> Iterator[tuple[DistInfo, Any]]:
    """``(DistInfo, device)`` for the body; under torchrun the default process group is initialised first and
    destroyed afterwards (also when the body raises). Ranks other than 0 show no progress bars and log only
    warnings and errors. Without torchrun: :data:`SINGLE` and :func:`~ichd.utils.device.resolve_device`."""
    import torch
    import torch.distributed as dist

    from ichd.utils import progress

    info = env_info()
    if info is None or not info.enabled:
        yield SINGLE, process_device(device_name, SINGLE)
        return
    if not dist.is_available():
        raise InputError("this torch build has no torch.distributed", hint="run without torchrun")
    device = process_device(device_name, info)
    owner = not dist.is_initialized()
    if owner:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        log.info("rank %d/%d joined the %s process group on %s", info.rank, info.world_size, backend, device)
    elif dist.get_world_size() != info.world_size or dist.get_rank() != info.rank:
        raise InputError("an existing process group disagrees with RANK/WORLD_SIZE")
    logger = get_logger()
    old_level, old_progress = logger.level, progress._ENABLED
    if not info.is_main:
        progress.set_progress_enabled(False)
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)
    try:
        yield info, device
    finally:
        progress.set_progress_enabled(old_progress)
        logger.setLevel(old_level)
        if owner and dist.is_initialized():
            dist.destroy_process_group()


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """Each process's share of the global ``batch_size``; it must divide evenly."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if batch_size % world_size:
        raise ConfigError(f"optim.batch_size {batch_size} (the global batch) does not split over {world_size} "
                          "processes", hint=f"use a multiple of {world_size}, e.g. "
                                            f"{max(world_size, batch_size // world_size * world_size)}")
    return batch_size // world_size


def rank_seed(seed: int, rank: int) -> int:
    """The seed of per-process randomness (dropout, augmentation) on ``rank``: ``seed`` itself on rank 0 (so a
    single process is unchanged), an independent derived seed elsewhere (ranks must not share dropout masks or
    augmentation draws). Sampling order is *not* per rank: it uses the shared loader generator."""
    if rank == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed) % 2**63, int(rank)]).generate_state(1, np.uint64)[0] % 2**63)


class ShardSampler:
    """Rank ``rank``'s share of another sampler's draws.

    Every epoch the wrapped sampler (a :class:`~torch.utils.data.WeightedRandomSampler` or
    :class:`~torch.utils.data.RandomSampler` whose generator the trainer re-seeds identically on every rank) is
    drawn once in full, the draws are cut to a multiple of ``world_size`` and this rank keeps positions
    ``rank, rank + N, rank + 2N, ...``. Shards are disjoint, of equal length (DDP needs the same number of steps
    on every rank) and together cover the epoch's draws; with a per-rank batch of ``B / N`` the ranks' k-th
    batches together are the single-process k-th batch of size ``B``. Resumes reproduce the shards because the
    draws come from the re-seeded generator.
    """

    def __init__(self, base: Any, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.base = base
        self.rank = int(rank)
        self.world_size = int(world_size)

    @property
    def generator(self) -> Any:
        return getattr(self.base, "generator", None)

    def __len__(self) -> int:
        return len(self.base) // self.world_size

    def __iter__(self) -> Iterator[int]:
        draws = [int(i) for i in self.base]
        n = len(draws) // self.world_size * self.world_size
        return iter(draws[self.rank:n:self.world_size])


class EvalShardSampler:
    """Validation share of ``rank``: items ``rank, rank + N, ...`` of ``0..n-1`` in order (shards may differ in
    length by one; nothing is repeated or dropped). :func:`interleave` puts gathered shards back in order."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.n, self.rank, self.world_size = int(n), int(rank), int(world_size)

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))


def interleave(parts: Sequence[Any]) -> Any:
    """Undo :class:`EvalShardSampler`: ``parts[r]`` holds items ``r, r + N, ...``; returns all items in order
    (a numpy array when the parts are arrays, else a list)."""
    world = len(parts)
    total = sum(len(p) for p in parts)
    if isinstance(parts[0], np.ndarray):
        like = parts[0]  # rank 0 holds the most items; an empty shard may have a placeholder shape
        out: Any = np.empty((total, *like.shape[1:]), dtype=like.dtype)
    else:
        out = [None] * total
    for r, part in enumerate(parts):
        if len(part) != len(range(r, total, world)):
            raise ValueError(f"shard {r} has {len(part)} items, {len(range(r, total, world))} expected")
        if len(part):
            out[r::world] = part if isinstance(out, np.ndarray) else list(part)
    return out


# -- collectives that are no-ops in a single process --------------------------------------------------------------

def _comm_device():  # -> torch.device
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if not _initialized():
        return
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[_comm_device().index])
    else:
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (picklable objects; returns ``obj`` itself without a group)."""
    if not _initialized():
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_comm_device())
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` without a group)."""
    if not _initialized():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sum of ``values`` over ranks (float64; ``values`` unchanged without a group)."""
    if not _initialized():
        return [float(v) for v in values]
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.cpu().tolist()]


def all_reduce_max(value: float) -> float:
    """The largest ``value`` over ranks."""
    if not _initialized():
        return float(value)
    import torch
    import torch.distributed as dist

    t = torch.tensor([float(value)], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def wrap_model(model: Any, device: Any) -> Any:
    """``DistributedDataParallel(model)`` on ``device`` (which ``model`` is already on). Its constructor copies
    rank 0's weights and buffers to every rank. Keep a reference to ``model``: checkpoints save the unwrapped
    module, so their keys carry no ``module.`` prefix and load in a single process."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, output_device=device.index if ids else None)


def convert_sync_batchnorm(model: Any) -> Any:
    """``model`` with every BatchNorm replaced by SyncBatchNorm (same parameters and state-dict keys)."""
    import torch

    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def has_batchnorm(model: Any) -> bool:
    from torch.nn.modules.batchnorm import _BatchNorm

    return any(isinstance(m, _BatchNorm) for m in model.modules())


def run_on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and return its (picklable) result on every rank. When it raises, every rank
    raises instead of waiting: rank 0 the original exception, the others an error of the same ichd class and
    message. Without a process group this is just ``fn()``."""
    info = current()
    if not info.enabled:
        return fn()
    result: Any = None
    error: BaseException | None = None
    if info.is_main:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
            error = e
    described = None if error is None else _describe(error)
    box = broadcast_object(("error", described) if error is not None else ("ok", result))
    if error is not None:
        raise error
    if box[0] == "error":
        name, message, hint = box[1]
        cls = getattr(errors, name, None)
        if not (isinstance(cls, type) and issubclass(cls, errors.IchdError)):
            cls, message = errors.IchdError, f"rank 0 failed: {name}: {message}"
        raise cls(message, hint=hint)
    return box[1]


def _describe(error: BaseException) -> tuple[str, str, str | None]:
    if isinstance(error, errors.IchdError):
        return type(error).__name__, error.message, error.hint
    return type(error).__name__, str(error), None
