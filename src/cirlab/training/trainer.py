"""The training loop: deterministic batches, step decay, checkpoints, resume, TensorBoard, Ctrl-C.

Batch i is a pure function of (seed, i): its pairs and augmentations come from
`np.random.default_rng([seed, i])`. The sampler position is therefore the iteration number, and a run
resumed from a checkpoint (which also restores the optimiser and torch's RNG for dropout) ends with the
same weights as the run never interrupted.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from cirlab.datasets import CIRDataset
from cirlab.datasets.transforms import ImageTransform, PixelCache
from cirlab.inference.distributed import DistContext, any_rank, broadcast_buffers, init_from_env
from cirlab.inference.feature_cache import build_feature_cache
from cirlab.inference.precision import autocast, check_precision
from cirlab.losses import LOSSES
from cirlab.models import CompositionModel, build_model
from cirlab.training.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from cirlab.training.config import TrainConfig
from cirlab.training.distinct import encode_distinct, supports_distinct
from cirlab.training.feature_cache import CachedPairBatches
from cirlab.training.precision import compile_model, grad_scaler
from cirlab.training.run_dir import (
    METRICS_FILE,
    check_batch_size,
    make_transform,
    open_dataset,
    run_preprocess,
    save_config,
    save_run_model,
)
from cirlab.utils.device import resolve_device
from cirlab.utils.errors import CirlabError
from cirlab.utils.io import write_json_atomic
from cirlab.utils.threads import available_cores, tick

EvalFn = Callable[[CompositionModel], dict[str, Any]]


class PairBatches(Dataset):
    """Item i = batch i: (source images, texts, target images), drawn with rng([seed, i]).

    Under DDP every rank draws the same global batch and keeps its own slice (`rank::world_size`), so the
    pairs seen per step do not depend on how many processes share them.

    With `pixel_cache` and a deterministic transform of a fixed size (no random crop or flip: `augment="none"`,
    the releases' recipe) whose images fit `PIXEL_CACHE_BYTES` (CSS), each image is decoded once into a uint8
    `PixelCache` and batches are gathered and normalised as tensors: the same values, bit for bit, without the
    per-image PIL and tensor work. Meant for batches made in the training process (a DataLoader worker would
    fill a copy of its own)."""

    def __init__(self, dataset: CIRDataset, transform: ImageTransform, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, pixel_cache: bool = True, distinct: bool = False) -> None:
        self.dataset, self.transform, self.batch_size, self.seed = dataset, transform, batch_size, seed
        self.rank, self.world_size, self.distinct = rank, world_size, distinct
        self.pixels = (PixelCache(transform, dataset.load_image, len(dataset))
                       if pixel_cache and PixelCache.fits(transform, len(dataset)) else None)

    def __len__(self) -> int:
        return 1 << 62

    def __getitem__(self, i: int) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        rng = np.random.default_rng([self.seed, i])
        pairs = self.dataset.sample_pairs(rng, self.batch_size)[self.rank::self.world_size]
        if self.pixels is not None:  # a deterministic transform draws nothing from rng
            return (self.pixels.batch([p.source for p in pairs]), [p.text for p in pairs],
                    self.pixels.batch([p.target for p in pairs]))
        src = torch.stack([self.transform(self.dataset.load_image(p.source), rng) for p in pairs])
        tgt = torch.stack([self.transform(self.dataset.load_image(p.target), rng) for p in pairs])
        return src, [p.text for p in pairs], tgt

    def features(self, model: CompositionModel, batch: tuple[torch.Tensor, list[str], torch.Tensor],
                 device: torch.device) -> tuple[Any, Any, Any]:
        """Encode one batch: (source features, text features, target features); with `distinct`, each distinct
        image of a side once (`cirlab.training.distinct`)."""
        src, texts, tgt = (x.to(device, non_blocking=True) if isinstance(x, torch.Tensor) else x for x in batch)
        if self.distinct:
            return (encode_distinct(model.encode_image, model.image_encoder, src), model.encode_text(texts),
                    encode_distinct(model.encode_image, model.image_encoder, tgt))
        return model.encode_image(src), model.encode_text(texts), model.encode_image(tgt)


def make_optimizer(config: TrainConfig, model: CompositionModel) -> torch.optim.Optimizer:
    """SGD is torch's fused kernel where this torch has one for the parameters' device (the same arithmetic as
    the per-tensor loop, bit for bit: tests/test_train_speed_paths.py; about half its time on the CPU), else the
    loop. Adam and AdamW keep torch's default implementation."""
    groups = model.parameter_groups(config.lr, config.trunk_lr_mult())
    if config.optimizer == "sgd":
        sgd = {"lr": config.lr, "momentum": config.momentum, "weight_decay": config.weight_decay}
        try:
            return torch.optim.SGD(groups, fused=True, **sgd)
        except (RuntimeError, TypeError):  # no fused SGD in this torch, or none for this device
            return torch.optim.SGD(groups, **sgd)
    if config.optimizer in ("adam", "adamw"):
        cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
        return cls(groups, lr=config.lr, eps=config.adam_eps, weight_decay=config.weight_decay)
    raise CirlabError(f"unknown --optimizer {config.optimizer!r}; choose from: adam, adamw, sgd")


def learning_rate(config: TrainConfig, iteration: int) -> float:
    """Step decay: lr * decay^(number of decay steps so far); steps fall every `lr_decay_every` iterations,
    none at or after `lr_decay_until` (when set)."""
    if config.lr_decay_every <= 0:
        return config.lr
    steps = iteration // config.lr_decay_every
    if config.lr_decay_until > 0:
        steps = min(steps, (config.lr_decay_until - 1) // config.lr_decay_every)
    return config.lr * config.lr_decay ** steps


class TrainStep(nn.Module):
    """One step's forward pass as a module (batch -> named loss terms), so that DDP can wrap it."""

    def __init__(self, model: CompositionModel, batches: PairBatches | CachedPairBatches, loss_fn: Callable,
                 device: torch.device) -> None:
        super().__init__()
        self.model, self.batches, self.loss_fn, self.device = model, batches, loss_fn, device

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        return self.model.training_losses(*self.batches.features(self.model, batch, self.device), self.loss_fn)


class _NoWriter:
    """Stands in for TensorBoard's writer on ranks other than 0."""

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


class Trainer:
    """Trains one run directory; `evaluate` (optional) is called every `eval_every` iterations and at the end."""

    def __init__(self, config: TrainConfig, run_dir: str | Path, evaluate: EvalFn | None = None,
                 progress: bool = True) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.evaluate = evaluate
        self.progress = progress
        self.device = resolve_device(config.device)
        self.ctx = DistContext()
        self.batches: PairBatches | CachedPairBatches | None = None
        self._stop_requested = False

    def _request_stop(self, signum: int, frame: Any) -> None:
        if self._stop_requested:
            raise KeyboardInterrupt
        self._stop_requested = True

    def setup(self, resume: bool) -> None:
        cfg = self.config
        LOSSES.get(cfg.loss)
        check_precision(cfg.precision, self.device)
        self.ctx = init_from_env(self.device)
        if self.ctx.enabled:
            if cfg.batch_size % self.ctx.world_size:
                raise CirlabError(f"--batch-size {cfg.batch_size} must be divisible by the {self.ctx.world_size} "
                                  "torchrun processes")
            if cfg.feature_cache:
                raise CirlabError("--feature-cache trains in a single process; run it without torchrun")
            if self.device.type == "cuda":
                self.device = torch.device("cuda", self.ctx.local_rank)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.dataset = open_dataset(cfg, cfg.train_split)
        if cfg.epochs and not resume:
            cfg.resolve_epochs(self.dataset.epoch_size())
        check_batch_size(cfg.batch_size, self.dataset)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg.model, texts=self.dataset.train_texts(), assets_dir=self.run_dir if resume
                                 else None).to(self.device)
        self.preprocess = run_preprocess(cfg, self.model)
        self.optimizer = make_optimizer(cfg, self.model)
        self.scaler = grad_scaler(self.device, cfg.precision)
        self.start_iter, self.history, self.elapsed = 0, [], 0.0
        if resume and has_checkpoint(self.run_dir):
            meta = load_checkpoint(self.run_dir, self.model, self.optimizer)
            self.start_iter, self.history = int(meta["iteration"]), list(meta.get("history", []))
            self.elapsed = float(meta.get("elapsed_s", 0.0))
            if self.scaler.is_enabled() and isinstance(meta.get("grad_scaler"), dict):
                self.scaler.load_state_dict(meta["grad_scaler"])
        elif self.ctx.is_main:  # the run exists from now on; the weights come with the first checkpoint
            save_config(self.run_dir, cfg, self.preprocess)
            self.model.text_encoder.save_assets(self.run_dir)

    def loader_workers(self) -> int:
        """DataLoader worker processes: `workers` when set; on CUDA with image batches otherwise up to 4 (one core
        left to the training process), so that decoding images does not starve the GPU; on the CPU 0 (batches are
        made in the training process, never competing with its compute threads)."""
        if self.config.workers or self.device.type != "cuda" or isinstance(self.batches, CachedPairBatches):
            return self.config.workers
        return max(0, min(4, available_cores() - 1))

    def checkpoint(self, iteration: int) -> None:
        if not self.ctx.is_main:
            return
        if isinstance(self.batches, CachedPairBatches):
            self.batches.cache.flush()  # texts encoded on demand since the last shard
        save_checkpoint(self.run_dir, self.model, self.optimizer, iteration,
                        {"history": self.history, "elapsed_s": self.elapsed,
                         **({"grad_scaler": self.scaler.state_dict()} if self.scaler.is_enabled() else {})})
        save_run_model(self.run_dir, self.config, self.model, self.preprocess)

    def evaluate_now(self, iteration: int, writer: Any) -> dict[str, Any] | None:
        """Call the `evaluate` callback on the model as it is at `iteration` (None without one); the result goes to
        the history and TensorBoard, and the RNG state and train mode are restored so training continues exactly."""
        if self.evaluate is None:
            return None
        rng = torch.get_rng_state()
        broadcast_buffers(self.model, self.ctx)  # each rank's BatchNorm statistics drifted on its own shard
        result = self.evaluate(self.model)
        torch.set_rng_state(rng)
        self.model.train()
        entry = {"iteration": iteration, "eval": result["metrics"]}
        self.history.append(entry)
        for k, v in result["metrics"].items():
            writer.add_scalar(f"eval/{k}", v, iteration)
        return result

    def train(self, resume: bool = False) -> dict[str, Any]:
        """Run to `config.iters` (or the time budget); returns a summary with the final evaluation."""
        from torch.utils.tensorboard import SummaryWriter

        self.setup(resume)
        cfg = self.config
        loss_fn = LOSSES.get(cfg.loss)
        batches: PairBatches | CachedPairBatches
        if cfg.feature_cache:
            cache = build_feature_cache(self.model, self.dataset, self.preprocess.transform(), self.run_dir,
                                        cfg.train_split, self.dataset.train_texts(), self.progress)
            batches = CachedPairBatches(self.dataset, cache, cfg.batch_size, cfg.seed)
        else:
            if cfg.distinct_images and not supports_distinct(self.model.image_encoder):
                raise CirlabError("--distinct-images: this image encoder has dropout or a cumulative batch norm, so "
                                  "one copy per image is not the same training; leave the flag out")
            batches = PairBatches(self.dataset, make_transform(cfg, self.model, train=True), cfg.batch_size, cfg.seed,
                                  self.ctx.rank, self.ctx.world_size, pixel_cache=self.loader_workers() == 0,
                                  distinct=cfg.distinct_images)
        self.batches = batches
        if cfg.compile:
            compile_model(self.model)
        step: nn.Module = TrainStep(self.model, batches, loss_fn, self.device)
        if self.ctx.enabled:
            step = DistributedDataParallel(step, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                           static_graph=True)  # the same parameters are used every step
        loader = DataLoader(batches, batch_size=None, sampler=range(self.start_iter, cfg.iters),
                            num_workers=self.loader_workers(), pin_memory=self.device.type == "cuda",
                            persistent_workers=False,
                            generator=torch.Generator().manual_seed(cfg.seed))  # keeps the global RNG untouched
        main = self.ctx.is_main
        writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.start_iter or None) if main else _NoWriter()
        previous = signal.signal(signal.SIGINT, self._request_stop)
        self.model.train()
        iteration = self.start_iter
        interrupted = False
        started = time.perf_counter() - self.elapsed
        t0 = time.perf_counter()
        bar = tqdm(total=cfg.iters, initial=self.start_iter, desc=f"train {cfg.model.name}",
                   disable=not (self.progress and main), dynamic_ncols=True)
        try:
            for batch in loader:
                lr = learning_rate(cfg, iteration)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_mult", 1.0)
                with autocast(self.device, cfg.precision):
                    terms = step(batch)
                    loss = self.model.total_loss(terms)
                if not torch.isfinite(loss):
                    raise CirlabError(f"loss became {loss.item()} at iteration {iteration}; lower --lr")
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()  # the scaler passes through unless fp16 on CUDA
                if cfg.grad_clip > 0:
                    self.scaler.unscale_(self.optimizer)
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                if self.device.type == "cpu":
                    tick()  # fewer torch threads while other processes use the CPUs (cirlab.utils.threads)
                iteration += 1
                self.elapsed = time.perf_counter() - started
                bar.update(1)
                if iteration % cfg.log_every == 0 or iteration == cfg.iters:
                    values = {k: float(v.detach()) for k, v in terms.items()}
                    speed = (iteration - self.start_iter) * cfg.batch_size / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(loss=f"{loss.item():.3f}", samples_s=f"{speed:.0f}")
                    writer.add_scalar("train/loss", loss.item(), iteration)
                    writer.add_scalar("train/lr", lr, iteration)
                    writer.add_scalar("train/norm_scale", float(self.model.norm_scale.detach()), iteration)
                    for k, v in values.items():
                        writer.add_scalar(f"train/{k}", v, iteration)
                    self.history.append({"iteration": iteration, "loss": loss.item(), **values,
                                         "elapsed_s": round(self.elapsed, 2)})
                if cfg.eval_every and iteration % cfg.eval_every == 0 and iteration < cfg.iters:
                    self.evaluate_now(iteration, writer)
                if cfg.checkpoint_every and iteration % cfg.checkpoint_every == 0:
                    self.checkpoint(iteration)
                out_of_time = bool(cfg.minutes) and self.elapsed > cfg.minutes * 60
                if any_rank(self._stop_requested, self.ctx):
                    interrupted = True
                    break
                if any_rank(out_of_time, self.ctx):
                    break
        except KeyboardInterrupt:
            interrupted = True
        finally:
            bar.close()
            signal.signal(signal.SIGINT, previous)
        self.checkpoint(iteration)
        summary: dict[str, Any] = {"iterations": iteration, "train_seconds": round(self.elapsed, 1),
                                   "interrupted": interrupted}
        if not interrupted:
            result = self.evaluate_now(iteration, writer)
            if result is not None:
                summary.update(result)
                self.checkpoint(iteration)
        writer.close()
        if main:
            write_json_atomic(self.run_dir / METRICS_FILE, {**summary, "history": self.history})
        return summary

