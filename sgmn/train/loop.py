"""The training loop: one process or torchrun DDP, AMP, accumulation, checkpoints, exact resume.

Two layers:
- :class:`Trainer` trains any ``nn.Module`` whose ``forward(batch)`` returns
  ``{"loss": tensor, "losses": {term: tensor}}`` on any map-style dataset (``set_epoch(e)`` is
  called when the dataset has it, so epoch-seeded augmentation is reproducible).
- :func:`train` is what ``sgmn train`` runs: read the data, hold out validation rooms, encode
  text once (cached), build ``TrainPairs``, create or resume the model and run a ``Trainer``
  whose validation is ``sgmn.eval.protocol.evaluate`` (R@1 picks ``best/``).

Run folder (rank 0 writes, see docs/architecture.md "Runs")::

    RUN/config.json  train_config.json  log.jsonl
    RUN/epoch-NNN/   config.json  model.safetensors  train_state.pt
    RUN/last/        the latest checkpoint (also written when --max-steps stops mid-epoch)
    RUN/best/        the epoch with the best validation R@1

Exact resume. The data order comes from a ``DistributedSampler`` (also with one process) seeded
by ``seed + epoch``; the dataset's augmentation is seeded by epoch; ``train_state.pt`` stores the
optimiser, scheduler, scaler, epoch, step, the micro-batch position inside the epoch and the
python / numpy / torch / cuda RNG states of *every* rank, taken after validation. A run stopped
after epoch k (or mid-epoch by ``max_steps``) and resumed therefore ends with the same weights as
an uninterrupted one (with ``num_workers=0``; worker processes are seeded from the torch RNG,
so it holds with workers as well as long as the dataset itself is deterministic per epoch).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from sgmn.errors import DataError, SGMNError
from sgmn import distributed as dist_utils
from sgmn.train.config import TrainConfig, starts_pretrained
from sgmn.train.optim import build_optimizer, build_scheduler, clip_gradients, clip_groups

TRAIN_STATE = "train_state.pt"
# Fields that shape the data order and the lr schedule: changing them on resume breaks exactness.
_SCHEDULE_FIELDS = ("epochs", "batch_size", "grad_accum", "lr", "backbone_lr_factor", "warmup_ratio", "seed")
Validator = Callable[[nn.Module, int], dict]  # (unwrapped model, epoch) -> metrics with "R@1"


class NonFiniteLossError(SGMNError):
    """The loss became NaN or infinite; names the step and the terms that were not finite."""


@dataclass
class TrainResult:
    out_dir: Path
    epochs_completed: int  # full epochs done (including those of a resumed run)
    step: int  # optimiser steps done
    stopped_early: bool  # max_steps reached before the last epoch ended
    best_metric: Optional[float] = None  # best validation R@1
    last_losses: dict[str, float] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # one row per epoch: losses + validation


# ---- small helpers -------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist_utils.local_rank())
        return torch.device("cpu")
    return torch.device(name)


def make_deterministic(enabled: bool) -> None:
    """Deterministic kernels (bit-identical runs for a seed), warning where an op has none."""
    if enabled and torch.cuda.is_available():
        # cuBLAS needs a fixed workspace for deterministic matrix products (read at CUDA init)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    # cuDNN autotuning picks kernels by timing, which is itself non-deterministic.
    torch.backends.cudnn.benchmark = not enabled


def configure_cuda_math(tf32: bool) -> None:
    """TF32 tensor cores for fp32 matrix products and convolutions (CUDA only; no-op on CPU)."""
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def move_to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch


def _link_or_copy(src: str, dst: str) -> None:
    # last/ and best/ share files with an epoch folder when the file system allows it.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _replace_dir(src: Path, dst: Path) -> None:
    # Removing first matters: writing into a hard-linked file would change the epoch folder too.
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, copy_function=_link_or_copy)


class _ResumableSampler(DistributedSampler):
    """A DistributedSampler that can skip the first ``skip`` indices of this rank once (mid-epoch resume)."""

    skip = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.skip :])

    def __len__(self) -> int:
        return super().__len__() - self.skip


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _host(value: Any) -> Any:
    """Device scalars (or dicts of them) -> Python floats: the one place the loop waits for the GPU."""
    if isinstance(value, dict):
        return {k: _host(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return float(value)
    return value


def _add_into(sums: dict, values: dict, scale: float = 1.0) -> None:
    """sums[k] += values[k] * scale, on the device (no host sync)."""
    for k, v in values.items():
        sums[k] = sums[k] + v * scale if k in sums else v * scale


def _trim_batch(batch: dict, size: int) -> dict:
    """The first ``size`` samples of a collated batch (keys that hold one entry per sample)."""
    n = _batch_len(batch)
    out = {}
    for k, v in batch.items():
        if k not in ("skipped", "skip_reasons") and isinstance(v, (torch.Tensor, list)) and len(v) == n:
            v = v[:size]
        out[k] = v
    return out


def prepare_backbone(model: nn.Module, compile: bool, activation_checkpointing: bool) -> None:
    """Apply the ``compile`` / ``activation_checkpointing`` options to ``model.backbone`` in place.

    ``nn.Module.compile`` keeps parameter names, so checkpoints are unchanged. Checkpointing
    recomputes each ViT layer in the backward pass (gradients are the same; memory drops from
    one activation set per layer to one per image)."""
    if not (compile or activation_checkpointing):
        return
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        raise ValueError(
            f"train config fields 'compile' / 'activation_checkpointing' apply to a model's backbone; "
            f"{type(model).__name__} has none"
        )
    if activation_checkpointing:
        if not hasattr(backbone, "activation_checkpointing"):
            raise ValueError(f"train config field 'activation_checkpointing': {type(backbone).__name__} does not support it")
        backbone.activation_checkpointing = True
    if compile:
        backbone.compile()


# ---- the trainer ---------------------------------------------------------------------------


class Trainer:
    """Trains ``model`` on ``dataset``; only rank 0 writes to ``out_dir``."""

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset,
        config: TrainConfig,
        out_dir: Union[str, Path],
        collate_fn: Optional[Callable] = None,
        validate: Optional[Validator] = None,
    ):
        if not config.is_resolved:  # lr / backbone factor follow the model's starting point
            config = config.resolve_recipe(starts_pretrained(model))[0]
        self.config = config
        self.out_dir = Path(out_dir)
        self.dataset = dataset
        self.validate = validate
        self.rank = dist_utils.rank()
        self.world = dist_utils.world_size()
        self.is_main = self.rank == 0
        self.device = resolve_device(config.device)
        make_deterministic(config.resolve_deterministic(self.device.type))
        configure_cuda_math(config.tf32)
        self.precision = config.resolve_precision(self.device.type)  # "auto" resolved

        self.sampler = _ResumableSampler(
            dataset, num_replicas=self.world, rank=self.rank, shuffle=True, seed=config.seed, drop_last=False
        )
        # drop_last: every rank must hold the same batch size for the batch-wide all-gathers.
        self.loader = DataLoader(
            dataset,
            batch_size=config.batch_size,
            sampler=self.sampler,
            num_workers=config.num_workers,
            collate_fn=collate_fn,
            drop_last=True,
            # Its own generator (re-seeded per epoch): creating the iterator draws the workers'
            # base seed, which must not shift the global RNG a mid-epoch resume restores.
            generator=torch.Generator(),
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        self.micro_per_epoch = len(self.loader)
        if self.micro_per_epoch < config.grad_accum:
            raise ValueError(
                f"training set too small: {len(dataset)} pairs give {self.micro_per_epoch} batches of "
                f"{config.batch_size} per rank x {self.world} ranks, fewer than grad_accum={config.grad_accum}"
            )
        self.steps_per_epoch = self.micro_per_epoch // config.grad_accum
        self.total_steps = self.steps_per_epoch * config.epochs

        self.model = model.to(self.device)
        prepare_backbone(self.model, config.compile, config.activation_checkpointing)
        self.optimizer = build_optimizer(self.model, config)
        self.clip_groups = clip_groups(self.model, config.grad_clip_mode)
        self.last_grad_norms: dict[str, torch.Tensor] = {}  # per clipping group, before clipping
        self.scheduler = build_scheduler(self.optimizer, self.total_steps, config.warmup_ratio)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.ddp = None
        if self.world > 1:
            self.ddp = DistributedDataParallel(
                self.model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=config.find_unused_parameters,
            )

        self.epoch = 0  # epochs completed
        self.step = 0  # optimiser steps completed
        self.micro_in_epoch = 0  # micro-batches of the current epoch already done (mid-epoch resume)
        self.best_metric: Optional[float] = None
        self.history: list[dict] = []
        self.skipped = 0  # samples dropped: unreadable ones (all ranks) + those trimmed to keep DDP ranks equal
        self.resumed = False  # set by resume(): only then may out_dir already hold a run

    # ---- checkpoints -----------------------------------------------------------------------
    def _state(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "micro_in_epoch": self.micro_in_epoch,
            "best_metric": self.best_metric,
            "history": self.history,
            "world_size": self.world,
            "rng": dist_utils.all_gather_object(rng_state()),  # every rank's, in rank order
            "train_config": self.config.to_dict(),
        }

    def save_checkpoint(self, folder: Path) -> None:
        state = self._state()  # collective: all ranks take part
        if self.is_main:
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            unwrap(self.model).save_pretrained(folder)
            torch.save(state, folder / TRAIN_STATE)
        dist_utils.barrier()

    def resume(self, path: Union[str, Path]) -> None:
        """Restore weights, optimiser, scheduler, scaler, counters and RNG from a checkpoint or run."""
        folder = resolve_checkpoint(path)
        state = torch.load(folder / TRAIN_STATE, map_location="cpu", weights_only=False)
        _load_weights(unwrap(self.model), folder)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.micro_in_epoch = state["micro_in_epoch"]
        self.best_metric = state["best_metric"]
        self.history = list(state["history"])
        self.resumed = True
        saved = state.get("train_config", {})
        changed = [k for k in _SCHEDULE_FIELDS if k in saved and saved[k] != self.config.to_dict()[k]]
        if changed and self.is_main:
            print(
                f"[sgmn train] resuming {folder} with different {changed} than it was trained with: "
                "the data order / lr schedule will not continue the original run exactly"
            )
        rngs = state["rng"]
        if len(rngs) != self.world:
            print(
                f"[sgmn train] resuming {folder} saved with {len(rngs)} ranks on {self.world}: "
                "RNG states re-seeded, the data order will differ from an uninterrupted run"
            )
            seed_everything(self.config.seed + 1000 * self.epoch + self.rank)
        else:
            set_rng_state(rngs[self.rank])

    # ---- logging -----------------------------------------------------------------------------
    def _chance(self, losses: dict) -> dict:
        """Chance levels of the logged terms, beside them in each row: L_pair is a (1 + k)-way
        cross-entropy (the true clip against k mined negatives), so a cross encoder that has learnt
        nothing sits at ln(1 + k)."""
        k = getattr(getattr(unwrap(self.model), "config", None), "smf_k", None)
        return {"pair_chance": math.log(1 + k)} if "pair" in losses and k else {}

    def log(self, row: dict) -> None:
        if self.is_main:
            with open(self.out_dir / "log.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    # ---- the loop ----------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        cfg = self.config
        # A fresh run must not continue another run's log.jsonl and checkpoints (the rows of two
        # runs would interleave); rank 0's answer is shared so that every rank stops together.
        taken = dist_utils.all_gather_object(self.is_main and not self.resumed and (self.out_dir / "log.jsonl").exists())[0]
        if taken:
            raise FileExistsError(
                f"{self.out_dir} already holds a training run (log.jsonl): continue it with --resume "
                f"{self.out_dir}, or train into another --out folder"
            )
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            cfg.save_json(self.out_dir / "train_config.json")
            model_cfg = getattr(unwrap(self.model), "config", None)
            if hasattr(model_cfg, "to_dict") or isinstance(model_cfg, dict):
                d = model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else model_cfg
                (self.out_dir / "config.json").write_text(json.dumps(d, indent=2) + "\n")
        net = self.ddp or self.model
        net.train()
        stopped_early = False
        last_losses: dict[str, float] = {}

        while self.epoch < cfg.epochs:
            if cfg.max_steps is not None and self.step >= cfg.max_steps:
                stopped_early = True
                break
            epoch = self.epoch
            self.sampler.set_epoch(epoch)
            self.sampler.skip = self.micro_in_epoch * cfg.batch_size
            self.loader.generator.manual_seed(cfg.seed * 100_003 + epoch * 1_009 + self.rank)
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            epoch_sums: dict[str, float] = {}
            epoch_steps = 0
            micro_total = self.steps_per_epoch * cfg.grad_accum  # a trailing partial accumulation is dropped
            bar = tqdm(
                total=micro_total,
                initial=self.micro_in_epoch,
                desc=f"epoch {epoch + 1}/{cfg.epochs}",
                disable=not self.is_main,
                dynamic_ncols=True,
            )
            window_start, window_clips = time.perf_counter(), 0
            # Loss sums stay on the device; the host reads them every log_every steps (and at the
            # end of an epoch), so the CPU can queue the next steps while the GPU works.
            accum_losses: dict[str, torch.Tensor] = {}
            self._unchecked = {}  # sums since the last finiteness check
            self._unchecked_from = self.step + 1
            for batch in self.loader:
                if self.micro_in_epoch >= micro_total:
                    break
                micro = self.micro_in_epoch % cfg.grad_accum
                final_micro = micro == cfg.grad_accum - 1
                batch = self._check_skipped(batch)
                batch = move_to_device(batch, self.device)
                sync = contextlib.nullcontext() if (final_micro or self.ddp is None) else self.ddp.no_sync()
                with sync:
                    with _autocast(self.device, self.precision):
                        out = net(batch)
                    loss = out["loss"].float()
                    self.scaler.scale(loss / cfg.grad_accum).backward()
                terms = {k: v.detach().float() for k, v in out.get("losses", {}).items()}
                terms["loss"] = loss.detach()
                _add_into(accum_losses, terms, 1.0 / cfg.grad_accum)
                window_clips += _batch_len(batch) * self.world
                self.micro_in_epoch += 1
                bar.update(1)
                if not final_micro:
                    continue

                lrs = self._lrs()  # the lr this step used (the scheduler moves on inside the step)
                grad_norm = self._optimizer_step()
                self.step += 1
                epoch_steps += 1
                step_losses = accum_losses
                _add_into(epoch_sums, accum_losses)
                _add_into(self._unchecked, accum_losses)
                accum_losses = {}
                if self.step % cfg.log_every == 0 or self.step == 1:
                    last_losses = self._check_finite(epoch + 1, step_losses)
                    grad_norm = _host(grad_norm)
                    if self.is_main:
                        bar.set_postfix(loss=f"{last_losses['loss']:.4f}", lr=f"{max(lrs):.2e}")
                    elapsed = time.perf_counter() - window_start
                    self.log(
                        {
                            "kind": "step",
                            "epoch": epoch + 1,
                            "step": self.step,
                            "loss": last_losses["loss"],
                            "losses": {k: v for k, v in last_losses.items() if k != "loss"},
                            **self._chance(last_losses),
                            "lr": max(lrs),  # new modules; the backbone's is in lr_groups
                            "lr_groups": dict(zip(self._group_names(), lrs)),
                            "grad_norm": grad_norm,
                            "grad_norms": {k: float(v) for k, v in self.last_grad_norms.items()},
                            "clips_per_s": window_clips / elapsed if elapsed > 0 else None,
                        }
                    )
                    window_start, window_clips = time.perf_counter(), 0
                if cfg.max_steps is not None and self.step >= cfg.max_steps:
                    break
            bar.close()
            if epoch_steps:
                last_losses = self._check_finite(epoch + 1, step_losses)

            epoch_done = self.micro_in_epoch >= micro_total
            if not epoch_done:  # stopped by max_steps inside the epoch
                stopped_early = True
                self.save_checkpoint(self.out_dir / "last")
                break
            self.epoch += 1
            self.micro_in_epoch = 0
            row = {"kind": "epoch", "epoch": self.epoch, "step": self.step, "skipped_samples": self.skipped}
            row["losses"] = {k: _host(v) / max(epoch_steps, 1) for k, v in epoch_sums.items()}
            row.update(self._chance(row["losses"]))
            metric = self._run_validation()
            if metric is not None:
                row["val"] = metric
            self.history.append(row)
            self.log(row)
            folder = self.out_dir / f"epoch-{self.epoch:03d}"
            self.save_checkpoint(folder)
            if self.is_main:
                _replace_dir(folder, self.out_dir / "last")
                if metric is not None and metric.get("is_best"):
                    _replace_dir(folder, self.out_dir / "best")
            dist_utils.barrier()

        if cfg.max_steps is not None and self.step >= cfg.max_steps and self.epoch < cfg.epochs:
            stopped_early = True
        return TrainResult(
            out_dir=self.out_dir,
            epochs_completed=self.epoch,
            step=self.step,
            stopped_early=stopped_early,
            best_metric=self.best_metric,
            last_losses=last_losses,
            history=self.history,
        )

    def _check_finite(self, epoch: int, step_losses: dict) -> dict[str, float]:
        """Read the losses on the host (a sync: only at log steps and epoch ends) and stop on NaN/inf.

        Returns the last step's losses as floats. The check covers every step since the previous
        one (the sums of their terms), so a non-finite loss is reported within log_every steps."""
        sums = _host(self._unchecked)
        self._unchecked, first, self._unchecked_from = {}, self._unchecked_from, self.step + 1
        if not math.isfinite(sums.get("loss", 0.0)):
            bad = [k for k, v in sums.items() if k != "loss" and not math.isfinite(v)]
            where = f"optimiser step {self.step}" if first == self.step else f"optimiser steps {first}-{self.step}"
            raise NonFiniteLossError(
                f"loss is {sums['loss']} at {where} (epoch {epoch}); non-finite terms: {bad or 'none'}; "
                f"summed terms: {sums}"
            )
        return _host(step_losses)

    def _check_skipped(self, batch: Any) -> Any:
        """Count samples the dataset's skip policy dropped; keep every rank's batch the same size.

        Under DDP the ranks first agree (one small collective on the CPU control group, no GPU
        sync): every rank trims its batch to the smallest rank's, so the batch-wide all-gathers see
        equal shapes and no rank waits for another; the trimmed samples are counted as skipped.
        If a rank has no readable sample left, every rank raises the same error (no hang)."""
        is_dict = isinstance(batch, dict)
        n = int(batch.get("skipped") or 0) if is_dict else 0
        reasons = (batch.get("skip_reasons") or ["?"]) if is_dict else ["?"]
        size = (_batch_len(batch) if "labels" in batch else 0) if is_dict else _batch_len(batch)
        if self.world == 1:
            self.skipped += n
            if n and "labels" not in batch:
                raise DataError(f"every sample of a training batch was unreadable; first: {reasons[0]}")
            return batch
        sizes, skips = dist_utils.control_all_gather([size, n])
        common = min(sizes)
        self.skipped += sum(skips) + sum(sizes) - common * self.world
        if common == 0:
            empty = [r for r, s in enumerate(sizes) if s == 0]
            raise DataError(
                f"every sample of a training batch was unreadable on rank(s) {empty} "
                f"(this rank skipped {n}; first reason here: {reasons[0] if n else 'none'})"
            )
        return _trim_batch(batch, common) if size > common else batch

    def _optimizer_step(self) -> Optional[torch.Tensor]:
        cfg = self.config
        grad_norm = None
        if cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            # the norms stay on the device: they are read only at log steps
            grad_norm, self.last_grad_norms = clip_gradients(self.clip_groups, cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return grad_norm

    def _lrs(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def _group_names(self) -> list[str]:
        return [g.get("name", str(i)) for i, g in enumerate(self.optimizer.param_groups)]

    def _run_validation(self) -> Optional[dict]:
        """Rank 0 evaluates the unwrapped model (every rank when the validator is ``sharded``: it
        then splits the work and combines the result itself); every rank learns the result."""
        if self.validate is None or self.epoch % self.config.val_every != 0:
            return None
        metrics = None
        if self.is_main or getattr(self.validate, "sharded", False):
            model = unwrap(self.model)
            try:
                with torch.no_grad():
                    metrics = dict(self.validate(model, self.epoch))
            finally:
                model.train()
        if self.is_main:
            r1 = metrics.get("R@1")
            if r1 is not None and (self.best_metric is None or r1 > self.best_metric):
                self.best_metric = r1
                metrics["is_best"] = True
        metrics, best = dist_utils.all_gather_object((metrics, self.best_metric))[0]
        self.best_metric = best
        return metrics


def _batch_len(batch: Any) -> int:
    if isinstance(batch, dict):
        for v in batch.values():
            if isinstance(v, torch.Tensor):
                return int(v.shape[0])
            if isinstance(v, list):
                return len(v)
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    return len(batch)


def resolve_checkpoint(path: Union[str, Path]) -> Path:
    """A checkpoint folder (with train_state.pt), or a run folder (its ``last/``)."""
    path = Path(path)
    if (path / TRAIN_STATE).is_file():
        return path
    if (path / "last" / TRAIN_STATE).is_file():
        return path / "last"
    raise FileNotFoundError(
        f"{path}: not a checkpoint to resume from (no {TRAIN_STATE} in it or in {path / 'last'})"
    )


def _load_weights(model: nn.Module, folder: Path) -> None:
    """Load a ``save_pretrained`` folder's weights into an existing model (strict: every key must
    match); reads the file only, no second model is built."""
    from sgmn.model.checkpoint import load_state

    _, state = load_state(folder)
    model.load_state_dict(state, strict=True)


# ---- `sgmn train` ---------------------------------------------------------------------------


def split_validation(data, config: TrainConfig):
    """Return ``(data, val_split_name | None)`` with a validation split to evaluate on.

    A data set with its own ``config.val_split`` keeps it. Otherwise a deterministic
    ``val_fraction`` of the *training rooms* (at least one, never all) is held out as "val": rooms
    are ordered by the SHA-1 of their id, so the choice depends on nothing but the room ids and
    does not change with the training seed. Whole rooms are held out because evaluation ranks a
    clip against its room's gallery.
    """
    if config.val_split in data.splits:
        return data, config.val_split
    if config.val_fraction <= 0:
        return data, None
    train_ids = data.splits["train"]
    rooms = sorted({data.clips[c].room_id for c in train_ids}, key=lambda r: hashlib.sha1(r.encode()).hexdigest())
    if len(rooms) < 2:
        print(f"[sgmn train] only {len(rooms)} training room(s): no validation split held out")
        return data, None
    n_val = min(len(rooms) - 1, max(1, round(config.val_fraction * len(rooms))))
    val_rooms = set(rooms[:n_val])
    splits = dict(data.splits)
    splits["train"] = [c for c in train_ids if data.clips[c].room_id not in val_rooms]
    splits["val"] = [c for c in train_ids if data.clips[c].room_id in val_rooms]
    return dataclasses.replace(data, splits=splits), "val"


def _text_encoder(model_config, cache_dir: Path):
    """The model's text encoder behind a disk cache (the model config's own cache_dir wins)."""
    from sgmn.text import CachedTextEncoder, make_text_encoder

    encoder = make_text_encoder(model_config.text)  # already cached when text.cache_dir is set
    if model_config.text.encoder == "precomputed" or model_config.text.cache_dir:
        return encoder
    return CachedTextEncoder(encoder, cache_dir)


def _fill_text_cache(encoder, data, splits: list[str], batch_size: int = 256) -> None:
    """Encode this rank's share (every world_size-th) of the splits' texts into the encoder's disk
    cache, so that no rank encodes the whole corpus alone while the others wait."""
    from sgmn.text import CachedTextEncoder
    from sgmn.text.base import has_text

    if not isinstance(encoder, CachedTextEncoder):
        return  # precomputed vectors or an encoder without a disk cache: nothing to share
    wanted: dict[str, None] = {}
    for split in splits:
        for clip in data.split_clips(split):
            if clip.asr_vector is None and has_text(clip.asr):
                wanted[clip.asr] = None
    for product in data.products.values():
        if product.title_vector is None and has_text(product.title):
            wanted[product.title] = None
    mine = sorted(wanted)[dist_utils.rank() :: dist_utils.world_size()]
    for start in tqdm(range(0, len(mine), batch_size), desc="text cache", disable=dist_utils.rank() != 0 or not mine):
        encoder.encode(mine[start : start + batch_size])


def _sharded_validator(data, val_split: str, text_val, cfg: TrainConfig) -> Validator:
    """Validation with the work split over the ranks: ``evaluate(distributed=True)``, the sharded
    protocol of ``sgmn eval`` (every rank encodes a share of the gallery and the queries, and
    learns the same rankings and metrics as one process). Every rank must call it."""
    from sgmn.eval.protocol import evaluate

    def validate(model: nn.Module, epoch: int) -> dict:
        device = resolve_device(cfg.device)
        with _autocast(device, cfg.resolve_precision(device.type)):  # as in training
            result = evaluate(
                model, data, split=val_split, mode="video", gallery="main", batch_size=cfg.val_batch_size,
                device=device, text=text_val, num_workers=cfg.num_workers, progress=dist_utils.rank() == 0,
                distributed=True,  # (0, 1) shard without a process group
            )
        return {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}

    validate.sharded = True
    return validate


def train(
    data_root: Union[str, Path],
    format: str,
    model_name: str,
    out_dir: Union[str, Path],
    train_config: Optional[TrainConfig] = None,
    model_overrides: Optional[dict[str, Any]] = None,
    resume: Optional[Union[str, Path]] = None,
) -> TrainResult:
    """Train ``model_name`` (a registered variant + dotted overrides) on a data set; see module doc.

    With ``resume`` the model is rebuilt from the checkpoint's ``config.json`` (``model_name`` and
    ``model_overrides`` are then ignored) and training continues where it stopped. Works in one
    process and under ``torchrun`` (the process group is joined here when torchrun started us).
    """
    import sgmn
    from sgmn.data.dataset import TrainPairs, collate
    from sgmn.data.readers import read_dataset

    cfg = train_config or TrainConfig()
    out_dir = Path(out_dir)
    # before anything is computed (text vectors included)
    make_deterministic(cfg.resolve_deterministic(resolve_device(cfg.device).type))
    joined_here = not dist_utils.is_distributed() and dist_utils.setup_distributed(cfg.dist_timeout_s)
    try:
        rank = dist_utils.rank()
        data = read_dataset(data_root, format, on_error=cfg.on_error)
        if data.skipped and rank == 0:
            print(f"[sgmn train] reader skipped records: {dict(data.skipped)}")
        if "train" not in data.splits:
            raise ValueError(f"{data_root}: the data set has no 'train' split (has: {sorted(data.splits)})")
        data, val_split = split_validation(data, cfg)

        seed_everything(cfg.seed)  # the same initial weights on every rank
        if resume is not None:
            model = sgmn.load_model(resolve_checkpoint(resume))
        else:
            model = sgmn.create_model(model_name, **(model_overrides or {}))
        mcfg = model.config
        # The learning rates follow the starting point (scratch vs pretrained backbone) unless set.
        if not cfg.is_resolved:
            cfg, recipe_line = cfg.resolve_recipe(starts_pretrained(model))
            if rank == 0:
                print(f"[sgmn train] {recipe_line} (saved in {out_dir / 'train_config.json'})", flush=True)
        seed_everything(cfg.seed + rank)  # different dropout per rank

        text_train = text_val = None
        # The same rule as evaluation: baselines and text-less variants read record vectors only.
        if getattr(mcfg, "use_text", True) and getattr(mcfg, "architecture", "sgmn") == "sgmn":
            from sgmn.text import TextVectors

            cache_dir = Path(cfg.text_cache_dir) if cfg.text_cache_dir else out_dir / "text-cache"
            encoder = _text_encoder(mcfg, cache_dir)
            # Every rank encodes its share of the texts into the disk cache, then reads them all.
            _fill_text_cache(encoder, data, ["train"] + ([val_split] if val_split else []))
            dist_utils.barrier()
            text_train = TextVectors(data, "train", encoder, progress=rank == 0)
            if val_split is not None:
                text_val = TextVectors(data, val_split, encoder, progress=rank == 0)
        else:
            from sgmn.data.dataset import NoTextVectors

            # As in evaluation: the model ignores text, so none is encoded (records' strings
            # without vectors would otherwise be refused by the dataset).
            text_train = NoTextVectors(mcfg.text.dim)

        dataset = TrainPairs(
            data,
            "train",
            num_frames=mcfg.num_frames,
            image_size=mcfg.vision.image_size,
            patch_size=mcfg.vision.patch_size,
            geometry=mcfg.geometry,
            text=text_train,
            train=True,
            seed=cfg.seed,
            on_error=cfg.on_error,
            use_boxes=bool(getattr(mcfg, "detector_boxes", False)),
        )

        validate = None
        if val_split is not None:
            validate = _sharded_validator(data, val_split, text_val, cfg)

        trainer = Trainer(model, dataset, cfg, out_dir, collate_fn=collate, validate=validate)
        if resume is not None:
            trainer.resume(resume)
        if rank == 0:
            print(
                f"[sgmn train] {len(dataset)} training pairs, {trainer.steps_per_epoch} steps/epoch, "
                f"global batch {cfg.batch_size * dist_utils.world_size()} x accum {cfg.grad_accum}, "
                f"validation: {val_split or 'none'}, device {trainer.device}"
            )
        result = trainer.fit()
        del trainer  # DDP's reducer goes before its process group (gloo can abort at exit otherwise)
        return result
    finally:
        if joined_here:
            dist_utils.cleanup_distributed()
