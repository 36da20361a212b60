"""One plain training loop for every preset: SGD + cosine, per-module LR multipliers, gradient clipping,
AMP on CUDA, ``torchrun`` DDP (NCCL on GPUs, gloo on CPU), resumable checkpoints.

Run directory layout (``out_dir``; file names and the rest of the folder: ``adafocus.core.run``):
    config.json   the preset, as trained
    last.pt       model + optimizer + schedule position, written atomically after every epoch
    best.pt       the model with the best validation accuracy at the last exit (with its model card)
    log.tsv       one row per epoch
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from adafocus.core.checkpoint import load_checkpoint, save_checkpoint
from adafocus.core.config import Preset
from adafocus.core.device import cuda_autocast, resolve_device
from adafocus.core.exits import ExitPolicy, accuracy_by_exit, exit_scores, solve_budget
from adafocus.core.io import atomic_write_json, atomic_write_text
from adafocus.core.model import UniAdaFocus
from adafocus.core.objective import training_loss
from adafocus.core.run import ModelCard, RunFolder, checkpoint_extra
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, WeightedRandomSampler

# Which module's parameters follow which LR multiplier (TrainConfig.lr_multipliers).
PARAMETER_GROUPS = {
    "glance": ("glance_encoder", "glance_head", "proxy_head"),  # the authors' aux_fc trains at the glance ratio
    "spatial_policy": ("spatial_policy",),
    "temporal_policy": ("temporal_policy",),
    "classifier": ("classifier",),
    "local": ("local_encoder", "local_head"),
}


def cosine_lr(base_lr: float, step: int, total_steps: int) -> float:
    """Cosine decay from ``base_lr`` at step 0 to 0 at ``total_steps`` (no warm-up, as the paper)."""
    return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def parameter_groups(model: UniAdaFocus, lr: float, multipliers: dict[str, float]) -> list[dict]:
    """SGD parameter groups with per-module LR multipliers; every parameter lands in exactly one group."""
    groups, seen = [], set()
    for group, module_names in PARAMETER_GROUPS.items():
        params = [p for name in module_names if getattr(model, name, None) is not None
                  for p in getattr(model, name).parameters()]
        if params:
            mult = multipliers.get(group, 1.0)
            groups.append({"params": params, "lr": lr * mult, "lr_mult": mult, "name": group})
            seen.update(id(p) for p in params)
    missing = [n for n, p in model.named_parameters() if id(p) not in seen]
    if missing:
        raise RuntimeError(f"parameters without an LR group: {missing[:5]}")
    return groups


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistributedContext:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1); else a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(),
                              local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def _to_device(batch: dict, device: torch.device) -> tuple[Tensor, Tensor]:
    return batch["clip"].to(device, non_blocking=True), torch.as_tensor(batch["label"]).to(device)


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, loader: DataLoader, device: torch.device, batches: int, *,
                           diversity: bool = True) -> None:
    """"Precise BN": recompute every BatchNorm's running statistics for the current weights, as the plain mean
    over ``batches`` training batches (training-mode forward, no gradient, weights unchanged). The running
    averages kept while training lag weights that still move fast; on a small task with a subtle signal that
    lag made eval-mode predictions collapse to one class (synthetic lesion task, a tiny_cnn glance: eval
    accuracy 0.50 with the kept statistics, 0.81 with recomputed ones)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average
    model.train()
    for _, batch in zip(range(batches), loader):
        model(_to_device(batch, device)[0], diversity=diversity)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


@torch.no_grad()
def collect_logits(model: UniAdaFocus, loader: DataLoader, device: torch.device,
                   progress: Callable | None = None) -> tuple[Tensor, Tensor]:
    """All exits' logits ``[N, K, C]`` and labels ``[N]`` over a loader (eval mode, no early exit)."""
    model.eval()
    all_logits, all_labels = [], []
    for batch in (progress(loader) if progress else loader):
        clip, labels = _to_device(batch, device)
        all_logits.append(model.infer(clip).logits.float().cpu())
        all_labels.append(labels.cpu())
    return torch.cat(all_logits), torch.cat(all_labels)


def to_channels_last(model: nn.Module) -> nn.Module:
    """Channels-last memory for every 4-D parameter and buffer (2-D conv weights); 5-D Conv3d weights (the
    spatial policy, X3D) keep their layout, since ``Module.to(memory_format=channels_last)`` raises on them."""
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.dim() == 4:
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
    return model


def prepare_for_training(model: nn.Module, device: torch.device, *, channels_last: bool | None = None) -> nn.Module:
    """Move ``model`` to ``device`` and, by default on CUDA only, switch 2-D convolutions to channels-last
    (faster with AMP). The layout change is device-independent, so a CPU test runs the CUDA path with
    ``channels_last=True``."""
    model = model.to(device)
    if channels_last if channels_last is not None else device.type == "cuda":
        to_channels_last(model)
    return model


def warm_start(model: nn.Module, init: str | Path) -> list[str]:
    """Load every tensor of the run folder / checkpoint ``init`` whose name and shape fit ``model`` (fine-tuning:
    a model for other classes keeps everything but its class outputs). Returns the names left as initialised;
    raises when nothing but those would load (not the same architecture)."""
    state = load_checkpoint(RunFolder.locate(init).checkpoint)["model_state"]
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    fresh = [k for k in own if k not in fitting]
    if len(fitting) < len(own) / 2:
        raise ValueError(f"{init} does not fit this model ({len(fresh)} of {len(own)} tensors differ); "
                         "fine-tune with the preset it was trained with")
    model.load_state_dict(fitting, strict=False)
    return fresh


def backward_and_step(loss: torch.Tensor, model: nn.Module, optimizer: torch.optim.Optimizer,
                      scaler: torch.amp.GradScaler, grad_clip: float | None) -> None:
    """One optimiser step on ``loss``: (scaled) backward, gradient norm clipped to ``grad_clip`` if set."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()


def is_better(accuracy: float, loss: float, best_accuracy: float, best_loss: float) -> bool:
    """Model selection: higher validation accuracy (last exit) wins; equal accuracy goes to the lower
    validation loss. On a small validation split many epochs tie on accuracy, and the first of them is
    often an under-trained model. An epoch without validation (NaN) never wins."""
    if math.isnan(accuracy):
        return False
    return accuracy > best_accuracy or (accuracy == best_accuracy and loss < best_loss)


def balanced_sampler(dataset: Dataset, seed: int) -> WeightedRandomSampler | None:
    """Draws len(dataset) samples per epoch, with replacement, each class equally often on average; None
    for a dataset that does not list its labels (`dataset.labels`), which is then drawn in shuffled order."""
    labels = getattr(dataset, "labels", None)
    if labels is None:
        return None
    labels = torch.as_tensor(list(labels))
    weights = 1.0 / torch.bincount(labels).double()[labels]
    return WeightedRandomSampler(weights, num_samples=len(labels), replacement=True,
                                 generator=torch.Generator().manual_seed(seed))


def train(preset: Preset, train_set: Dataset, val_set: Dataset, out_dir: str | Path, *,
          device: str = "auto", resume: bool = True, collate_fn: Callable | None = None,
          progress: bool = True, log: Callable[[str], None] = print, card: ModelCard | None = None) -> dict:
    """Train ``UniAdaFocus(preset.model)``; returns a summary dict. Resumes from ``out_dir/last.pt``.
    ``card`` (what the model takes and says, see core.run) is saved inside every checkpoint."""
    out_dir = Path(out_dir)
    run = RunFolder(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)
    ctx = init_distributed(dev)
    if ctx.enabled and dev.type == "cuda":
        dev = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(dev)
    cfg = preset.train
    torch.manual_seed(cfg.seed + ctx.rank)

    model = prepare_for_training(UniAdaFocus(preset.model), dev)
    optimizer = torch.optim.SGD(parameter_groups(model, cfg.lr, cfg.lr_multipliers), lr=cfg.lr,
                                momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    use_amp = cfg.amp and dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and not torch.cuda.is_bf16_supported())

    start_epoch, best_acc, best_loss = 0, -1.0, math.inf
    last_path, best_path = run.last, run.best
    if cfg.init and not (resume and last_path.exists()):
        fresh = warm_start(model, cfg.init)
        if ctx.is_main:
            log(f"initialised from {cfg.init}; {len(fresh)} tensors whose shape depends on the classes start fresh"
                + (f" ({', '.join(sorted({k.rsplit('.', 1)[0] for k in fresh})[:6])} ...)" if fresh else ""))
    if resume and last_path.exists():
        state = load_checkpoint(last_path)
        if state["config"] != preset.to_dict():
            raise ValueError(f"{last_path} was trained with a different config; use a new --out or --no-resume")
        model.load_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer_state"])
        scaler.load_state_dict(state["scaler_state"])
        start_epoch, best_acc = state["epoch"] + 1, state["best_accuracy"]
        best_loss = state.get("best_val_loss", math.inf)
        if ctx.is_main:
            log(f"resumed from {last_path} after epoch {state['epoch'] + 1}")
    if ctx.is_main:
        atomic_write_json(run.config, preset.to_dict())
        if card is not None:
            run.write_card(card)

    train_model: nn.Module = model
    if ctx.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None)
    if ctx.enabled and cfg.balance_classes:
        raise ValueError("balance_classes works in a single process; train without torchrun")
    sampler = (DistributedSampler(train_set, shuffle=True, seed=cfg.seed) if ctx.enabled
               else balanced_sampler(train_set, cfg.seed) if cfg.balance_classes else None)
    if cfg.balance_classes and sampler is None and ctx.is_main:
        log(f"balance_classes: {type(train_set).__name__} does not list its labels; drawing it in shuffled order")
    per_rank_batch = max(1, cfg.batch_size // ctx.world_size)
    loader_kwargs = {"num_workers": cfg.workers, "collate_fn": collate_fn, "pin_memory": dev.type == "cuda",
                         "persistent_workers": cfg.workers > 0}
    train_loader = DataLoader(train_set, batch_size=per_rank_batch, shuffle=sampler is None, sampler=sampler,
                              drop_last=True, **loader_kwargs)
    val_loader = DataLoader(val_set, batch_size=per_rank_batch, shuffle=False, **loader_kwargs)
    if len(train_loader) == 0:
        raise ValueError(f"training set has {len(train_set)} samples, fewer than one batch of {per_rank_batch}")
    total_steps = cfg.epochs * len(train_loader)

    log_path = run.log
    for epoch in range(start_epoch, cfg.epochs):
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        train_model.train()
        sums: dict[str, float] = {}
        started = time.perf_counter()
        batches = train_loader
        if progress and ctx.is_main:
            from tqdm import tqdm
            batches = tqdm(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True)
        for i, batch in enumerate(batches):
            step = epoch * len(train_loader) + i
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(cfg.lr, step, total_steps) * group["lr_mult"]
            clip, labels = _to_device(batch, dev)
            with cuda_autocast(dev, use_amp):
                outputs = train_model(clip, diversity=preset.loss.diversity)
                loss, terms = training_loss(outputs, labels, preset.loss)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}, step {i}: {terms}")
            backward_and_step(loss, model, optimizer, scaler, cfg.grad_clip)
            terms["loss"] = float(loss.detach())
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value
            if hasattr(batches, "set_postfix") and i % 10 == 0:
                batches.set_postfix(loss=f"{terms['loss']:.3f}")
        means = {name: value / len(train_loader) for name, value in sums.items()}

        val_acc = val_loss = float("nan")
        if cfg.precise_bn_batches:
            recalibrate_batch_norm(model, train_loader, dev, cfg.precise_bn_batches, diversity=preset.loss.diversity)
        if ctx.is_main and ((epoch + 1) % cfg.val_every == 0 or epoch + 1 == cfg.epochs):
            logits, labels = collect_logits(model, val_loader, dev)
            val_acc = float(accuracy_by_exit(logits, labels)[-1])
            val_loss = float(nn.functional.cross_entropy(logits[:, -1], labels))
        if ctx.is_main:
            improved = is_better(val_acc, val_loss, best_acc, best_loss)
            if improved:
                best_acc, best_loss = val_acc, val_loss
            extra = {"optimizer_state": optimizer.state_dict(), "scaler_state": scaler.state_dict(), "epoch": epoch,
                         "best_accuracy": best_acc, "best_val_loss": best_loss, **checkpoint_extra(card)}
            save_checkpoint(last_path, model_state=model.state_dict(), config=preset.to_dict(), **extra)
            if improved:
                save_checkpoint(best_path, model_state=model.state_dict(), config=preset.to_dict(), **extra)
            _append_log(log_path, {"epoch": epoch + 1, "lr": cosine_lr(cfg.lr, (epoch + 1) * len(train_loader),
                                                                      total_steps),
                                   **{f"train_{k}": v for k, v in means.items()}, "val_accuracy": val_acc,
                                   "val_loss": val_loss,
                                   "seconds": time.perf_counter() - started})
            log(f"epoch {epoch + 1}/{cfg.epochs}  loss {means['loss']:.4f}  val acc {val_acc:.4f}  "
                f"({time.perf_counter() - started:.1f}s)")
        if ctx.enabled:
            dist.barrier()
    if ctx.enabled:
        dist.destroy_process_group()
    return {"best_accuracy": best_acc, "best_checkpoint": str(best_path), "run_dir": str(out_dir)}


def _append_log(path: Path, row: dict) -> None:
    """Rewrite the TSV with one more row (atomic, so a crash never leaves half a line)."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    header = "\t".join(row)
    if not lines or lines[0] != header:
        lines = [header]
    lines.append("\t".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row.values()))
    atomic_write_text(path, "\n".join(lines) + "\n")


def calibrate(model: UniAdaFocus, loader: DataLoader, budget: float, *, criterion: str = "entropy",
              device: str = "auto", out_dir: str | Path | None = None) -> ExitPolicy:
    """Fit exit thresholds for ``budget`` GMACs per sample on a calibration loader.

    The loader must give un-augmented samples that are not in the test set. With ``out_dir`` the
    calibration logits (``calibration.pt``, for re-fitting other budgets later) and the policy
    (``exit_policy.json``) are written there (names: ``adafocus.core.run.RunFolder``).
    """
    dev = resolve_device(device)
    logits, labels = collect_logits(model.to(dev), loader, dev)
    costs = model.exit_costs()
    policy = solve_budget(exit_scores(logits, criterion), costs, budget, criterion=criterion)
    if out_dir is not None:
        run = RunFolder(out_dir)
        save_checkpoint(run.calibration, model_state={}, config={"criterion": criterion},
                        logits=logits, labels=labels, exit_costs=costs)
        atomic_write_json(run.exit_policy(), policy.to_dict())
    return policy
