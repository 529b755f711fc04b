"""Outcome collection spread over processes, GPUs and nodes with Lightning's distributed prediction.

``collect`` runs ``Trainer.predict`` (DDP) over the dataset rows a model's outcome folder still lacks:
each process takes every ``world_size``-th of those rows (no padding, no duplicates), builds the model's
backend itself, answers its rows batch by batch and writes each batch at once as its own Parquet part
``part-r<rank>-NNNNN.parquet`` in the model's outcome folder, so a killed run loses at most the batches
in flight. ``outcomes.load`` merges these parts with single-process ``part-NNNNN.parquet`` ones, and a
rerun (any number of processes, or one) resumes from whatever is there. The outcome folder must be on a
filesystem all processes share (one machine, or a shared mount across nodes).

Configured by the run config's ``collect`` section (``config.CollectConfig``) or the command line::

    collect: {devices: 4, strategy: ddp, accelerator: gpu, num_nodes: 1, batch_size: 16}

    router-train collect CONFIG --devices 4 --strategy ddp [--accelerator gpu] [--num-nodes 2]

Strategies: ``ddp`` (Lightning re-runs the same command once per extra process: the usual choice for a
command line, a cluster launcher such as SLURM or torchrun, and several nodes) or ``ddp_spawn`` (the
processes are forked from this one with ``multiprocessing``; usable inside Python sessions and tests,
where re-running the command is not possible). On GPUs give transformers models ``device: cuda`` (not
``cuda:0``): each process then uses its own GPU. Processes that a launcher started as ranks other than 0
stop after collection (``pipeline.stage_collect``); rank 0 goes on with the later stages.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from . import outcomes
from .backends import Backend

log = logging.getLogger(__name__)

# environment variables through which launchers (Lightning's ``ddp``, torchrun, SLURM, LSF) give a
# process its rank; any non-zero one means this process is not the one that goes on after collection
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def is_worker() -> bool:
    """True in a process a launcher started as a rank other than global rank 0 (from its environment)."""
    return any(os.environ.get(k, "0").strip() not in ("", "0") for k in _RANK_VARIABLES)


def end_process_group() -> None:
    """Leave the process group a ``ddp`` collection left initialised in this process (rank 0, once its
    workers are done), so later stages start as a plain single process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class _Rows(torch.utils.data.Dataset):
    """Rows ``indices`` of a ``datasets.Dataset``, each a dict (image decoded)."""

    def __init__(self, ds, indices: list[int]):
        self.ds, self.indices = ds, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict:
        return self.ds[self.indices[k]]


class ShardSampler(torch.utils.data.Sampler):
    """Rank ``rank`` of ``world_size`` takes positions ``rank, rank + world_size, ...`` of ``n``: every
    position exactly once over all ranks, no padding (unlike ``DistributedSampler``), and a rank may get
    none (unlike Lightning's ``UnrepeatedDistributedSampler``, which asserts every rank gets one), as
    happens when a resumed run has fewer rows left than processes."""

    def __init__(self, n: int, rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


def _collate(items: list[dict]) -> dict:
    return {k: [it[k] for it in items] for k in items[0]}


class CollectModule(L.LightningModule):
    """Predicts outcome rows of one model: ``predict_step`` answers a batch with the backend (built by
    ``make_backend()`` in each process, on its first batch) and returns the batch's outcome rows.

    ``make_backend`` must be picklable for ``ddp_spawn`` (a module-level function or a
    ``functools.partial`` of one, such as ``pipeline.make_backend`` with the config and model name)."""

    def __init__(self, ds, model: str, tier: str, make_backend: Callable[[], Backend], out_dir: Path,
                 batch_size: int = 64, num_workers: int = 0, grade: Callable | None = None):
        super().__init__()
        self.ds, self.model_name, self.tier, self.grade = ds, model, tier, grade
        self.make_backend, self.out_dir = make_backend, Path(out_dir)
        self.batch_size, self.num_workers = max(1, int(batch_size)), int(num_workers)
        self.todo: list[int] = []
        self.backend: Backend | None = None
        # a resumed run may leave some ranks no rows; they simply answer nothing
        self.allow_zero_length_dataloader_with_multiple_devices = True

    def __getstate__(self):
        state = dict(self.__dict__)
        state["backend"] = None  # built again in each process
        return state

    def setup(self, stage: str) -> None:
        """The rows still missing, read by every rank between Lightning's setup barriers (no part is
        written then); rank 0's list is used everywhere, so every rank shards the same list."""
        done = outcomes.done_ids(self.out_dir)
        local = [i for i, s in enumerate(self.ds["sample_id"]) if s not in done]
        self.todo = self.trainer.strategy.broadcast(local, src=0)
        if self.todo != local:
            log.warning("rank %d sees other outcome parts in %s than rank 0: put the outcome folder on a "
                        "filesystem every process shares", self.trainer.global_rank, self.out_dir)

    def predict_dataloader(self):
        sampler = ShardSampler(len(self.todo), self.trainer.global_rank, self.trainer.world_size)
        return torch.utils.data.DataLoader(_Rows(self.ds, self.todo), batch_size=self.batch_size, sampler=sampler,
                                           collate_fn=_collate, num_workers=self.num_workers)

    def _backend(self) -> Backend:
        if self.backend is None:
            self.backend = self.make_backend()
            device = getattr(self.backend, "device", None)
            root = self.trainer.strategy.root_device
            if isinstance(device, torch.device) and root.type == "cuda" and device != root:
                log.warning("rank %d: %s runs on %s, not on this process's %s; give it the option device: cuda",
                            self.trainer.global_rank, self.model_name, device, root)
        return self.backend

    def predict_step(self, batch: dict, batch_idx: int):
        backend = self._backend()
        answers = outcomes._answer_batch(backend, batch["image"], batch["question"], batch["sample_id"])
        if len(answers) != len(batch["sample_id"]):
            raise RuntimeError(f"{backend.name} returned {len(answers)} answers for {len(batch['sample_id'])} queries")
        return outcomes.outcome_rows(batch, self.model_name, self.tier, answers, self.grade)


class OutcomeWriter(BasePredictionWriter):
    """Writes each predicted batch as ``part-r<global rank>-NNNNN.parquet`` (atomically) as soon as it is
    answered, numbering after the rank's parts already there."""

    def __init__(self, out_dir: Path):
        super().__init__(write_interval="batch")
        self.out_dir = Path(out_dir)
        self.next: int | None = None

    def on_predict_start(self, trainer, pl_module) -> None:
        self.next = outcomes.next_part(self.out_dir, trainer.global_rank)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx) -> None:
        outcomes._write_part(prediction, self.out_dir, self.next, stem=f"part-r{trainer.global_rank}")
        self.next += 1


def collect(ds, model: str, tier: str, make_backend: Callable[[], Backend], out_dir: Path, batch_size: int = 64,
            devices: int | str | list = "auto", strategy: str = "ddp", num_nodes: int = 1,
            accelerator: str = "auto", num_workers: int = 0, grade: Callable | None = None) -> Path:
    """Like ``outcomes.collect`` (same rows, same resuming), spread over ``devices`` processes per node on
    ``num_nodes`` nodes with Lightning strategy ``strategy`` ("ddp", "ddp_spawn", ...) and
    ``accelerator`` ("cpu", "gpu", "auto"). Each process writes ``part-r<rank>-NNNNN.parquet`` parts to
    ``out_dir``. Nothing is started when every row is already there. Returns ``out_dir``.

    ``num_workers``: DataLoader worker processes per rank decoding images (0: in the rank itself).
    ``grade``: as in ``outcomes.collect`` (picklable, e.g. ``outcomes.grader(...)``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = outcomes.done_ids(out_dir)
    if all(s in done for s in ds["sample_id"]):
        return out_dir
    outcomes.check_gradable(ds.select([i for i, s in enumerate(ds["sample_id"]) if s not in done]), model)
    trainer = L.Trainer(accelerator=accelerator, devices=devices, strategy=strategy, num_nodes=num_nodes,
                        logger=False, enable_checkpointing=False, enable_model_summary=False,
                        use_distributed_sampler=False, inference_mode=True, default_root_dir=out_dir,
                        callbacks=[OutcomeWriter(out_dir)])
    module = CollectModule(ds, model, tier, make_backend, out_dir, batch_size, num_workers, grade)
    log.info("collect %s: %d of %d samples left, %d processes (%s)", model, len(ds) - len(done & set(ds["sample_id"])),
             len(ds), trainer.world_size, strategy)
    trainer.predict(module, return_predictions=False)
    # ranks finish at different times (a rank may have had no rows): wait until every part is written
    # before anyone reads the folder (a no-op where no process group is left, as after ddp_spawn)
    trainer.strategy.barrier("outcomes written")
    return out_dir
