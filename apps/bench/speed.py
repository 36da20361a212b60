"""`adafocus bench speed`: theoretical (GMACs) against practical (videos/s) savings, measured side by side.

In one run, on the same synthetic clips: the static baseline (both encoders on every glance frame at full
resolution), Uni-AdaFocus without early exit, and with early exit at a few budgets, all with the chosen
inference engine (``--engine``, see adafocus.core.engine); with an engine other than torch the same variants
also run with torch fp32 (today's path), timed in the same turns, so the speed-up is measured side by side. Speed does not depend
on the weights, so nothing is trained or downloaded: the glance encoder gets its ImageNet weights when they
are installed locally (otherwise random ones), the rest is random. Exit scores of such a model carry no
signal, so thresholds fitted on other clips would not transfer; they are fitted by the budget solver on
the timed batch itself, which gives that batch the exit mix a trained model would have at that budget
(the measured GMACs column shows how close it came).

Against the per-component roofline: each variant's call is recorded once, component by component (glance
encoder, policies, local encoder, classifier: every call with the inputs it got, so at the batch it runs in,
which shrinks as samples exit), and each component's calls are then replayed alone and timed. The roofline
time is the sum of those times: what the call would take with nothing between the components (no gathering,
cropping, resizing or exit bookkeeping). It is printed beside the practical time and the GMACs theory, for
the engine's precision and for torch fp32.

``--precision auto`` picks by the CPU's flags alone here (no run folder, untrained weights): bf16 where the CPU
has AVX512-BF16 or AMX, else int8 (nncf), else fp32; its agreement with torch fp32 is measured on the timed batch.
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from adafocus.core.backbones import create_backbone
from adafocus.core.baseline import StaticBaseline
from adafocus.core.config import ModelConfig, get_preset
from adafocus.core.device import cuda_autocast, resolve_device
from adafocus.core.engine import (
    cpu_flags,
    format_agreement,
    needs_calibration,
    prediction_agreement,
    prepare_for_inference,
    resolve_engine,
    resolve_precision,
)
from adafocus.core.exits import ExitPolicy, exit_scores, solve_budget
from adafocus.core.flops import count_gmacs
from adafocus.core.model import UniAdaFocus
from adafocus.core.run import CalibrationDataError
from adafocus.core.weights import WeightsError


def _peak_memory_worker(kind: str, config: dict, batch: int, device: str, budget_fraction, queue,
                        engine: str = "torch", precision: str = "fp32") -> None:
    """Child process: build one variant, run it once, report peak memory growth in MB over the run
    (CUDA: the allocator's peak; CPU: resident set size sampled every millisecond during the run)."""
    import threading

    torch.set_num_threads(1)
    dev = torch.device(device)
    cfg = ModelConfig(**config)
    torch.manual_seed(0)
    module = (StaticBaseline(cfg) if kind == "baseline" else UniAdaFocus(cfg)).eval().to(dev)
    prepare_for_inference(module, engine=engine, precision=precision)
    clip = benchmark_clips(batch, cfg, dev)
    with torch.inference_mode():
        policy = None
        if budget_fraction is not None:
            policy = budget_policies(module, clip, (budget_fraction,))[budget_fraction]
        run = (lambda: module(clip)) if kind == "baseline" else (lambda: module.infer(clip, policy))
        run()  # one warm-up call: one-off kernel caches and thread pools are not the variant's memory
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            before = torch.cuda.memory_allocated(dev)
        else:
            before = _rss_bytes()
        samples, done = [before], threading.Event()

        def sample():
            while not done.is_set():
                samples.append(_rss_bytes())
                time.sleep(0.001)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        run()
        done.set()
        sampler.join()
        samples.append(_rss_bytes())
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            peak = torch.cuda.max_memory_allocated(dev)
        else:
            peak = max(samples)
    queue.put(max(peak - before, 0) / 2 ** 20)


def peak_memory_mb(kind: str, config: ModelConfig, batch: int, device: torch.device,
                   budget_fraction: float | None = None, engine: str = "torch", precision: str = "fp32") -> float:
    """Peak memory of one forward pass of a variant, measured alone in a fresh process (so allocator
    caches of other variants do not hide it)."""
    import multiprocessing as mp

    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_peak_memory_worker,
                              args=(kind, dataclasses.asdict(config), batch, str(device), budget_fraction, queue,
                                    engine, precision))
    # A fixed mmap threshold makes glibc return every large tensor to the system when it is freed, so that
    # resident memory follows the live tensors; by default freed blocks stay in the heap and what the
    # warm-up left behind hides the measured run's peak (read by glibc at start-up, hence the environment).
    # Huge pages are off in that process too: with them, resident memory grows 2 MB at a time and a small
    # model's peak is lost in the rounding (both read at start-up).
    child_environment = {"MALLOC_MMAP_THRESHOLD_": "65536", "THP_MEM_ALLOC_ENABLE": "0"}
    previous = {name: os.environ.get(name) for name in child_environment}
    os.environ.update(child_environment)
    try:
        process.start()
    finally:
        for name, value in previous.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value
    process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"memory measurement of {kind!r} failed (exit code {process.exitcode})")
    return queue.get()


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo), for the record of where a benchmark ran."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    except OSError:
        return "unknown"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def time_per_batch(fn: Callable[[], object], device: torch.device, *, warmup: int, repeats: int) -> float:
    """Median seconds per call after warm-up (CUDA synchronised)."""
    return time_round_robin([fn], device, warmup=warmup, repeats=repeats)[0]


def time_round_robin(fns: list[Callable[[], object]], device: torch.device, *, warmup: int,
                     repeats: int) -> list[float]:
    """Median seconds per call of each function, timed in turns (f1, f2, ..., f1, f2, ...) so that a
    change in machine load during the run hits every variant alike: the ratios stay fair."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    for fn in fns:
        for _ in range(warmup):
            fn()
    sync()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, samples in zip(fns, times):
            start = time.perf_counter()
            fn()
            sync()
            samples.append(time.perf_counter() - start)
    return [statistics.median(samples) for samples in times]


def budget_policies(model: UniAdaFocus, clips: torch.Tensor, fractions: tuple[float, ...]) -> dict[float, ExitPolicy]:
    """Exit policies for budgets at ``fractions`` of the way from the glance-only to the full cost."""
    logits = model.infer(clips).logits.float()
    scores = exit_scores(logits, "entropy")
    costs = model.exit_costs()
    return {f: solve_budget(scores.cpu(), costs, costs[0] + f * (costs[-1] - costs[0]), criterion="entropy")
            for f in fractions}


def benchmark_clips(batch: int, config: ModelConfig, device: torch.device, seed: int = 0) -> torch.Tensor:
    """``[batch, N, C, S, S]`` clips in [0, 1] that differ from each other: smooth random colour fields with a
    random gain per clip. Uniform pixel noise would not do: every clip then has the same statistics, the
    glance features coincide and all exit scores tie, so no budget can be met."""
    generator = torch.Generator().manual_seed(seed)
    frames = batch * config.num_candidates
    coarse = torch.rand(frames, config.in_channels, 4, 4, generator=generator)
    clips = F.interpolate(coarse, size=(config.frame_size, config.frame_size), mode="bilinear", align_corners=False)
    clips = clips.reshape(batch, config.num_candidates, config.in_channels, config.frame_size, config.frame_size)
    gain = torch.rand(batch, 1, config.in_channels, 1, 1, generator=generator)
    return (clips * gain).clamp(0.0, 1.0).to(device)


def offline_weights(config: ModelConfig) -> ModelConfig:
    """The config with ImageNet weights for the glance encoder if they are installed locally (never
    downloaded), random weights everywhere else."""
    glance = None
    try:
        create_backbone(config.glance_backbone, pretrained="imagenet", **dict(config.glance_backbone_kwargs))
        glance = "imagenet"
    except (WeightsError, ValueError):
        pass
    return dataclasses.replace(config, glance_pretrained=glance, local_pretrained=None)


def prepare(module, *, engine: str, precision: str, optimize: bool, calibration: torch.Tensor | None = None) -> str:
    """Ready ``module`` for timing with ``engine`` (see adafocus.core.engine); ``optimize=False`` keeps the
    plain torch modules (no batch-norm folding, no channels-last) and needs the torch engine. ``int8``
    calibrates on ``calibration`` clips, else on benchmark clips of another seed than the timed ones."""
    if not optimize:
        if resolve_engine(engine, module.pixel_mean.device, precision) != "torch":
            raise ValueError("--no-optimize measures plain torch modules; use it with --engine torch")
        module.eval()
        return "torch"
    if needs_calibration(precision) and calibration is None:
        calibration = benchmark_clips(16, module.config, module.pixel_mean.device, seed=1)
    return prepare_for_inference(module, engine=engine, precision=precision, calibration=calibration)


def _variants(model: UniAdaFocus, baseline: StaticBaseline, clip: torch.Tensor,
              policies: dict[float, ExitPolicy]) -> list[tuple[str, Callable[[], object], float | None]]:
    """(name, one timed call, budget fraction or None) of every benchmarked variant."""
    variants = [("static baseline", lambda: baseline(clip), None),
                ("uni-adafocus, no exit", lambda: model.infer(clip), None)]
    for fraction, policy in policies.items():
        variants.append((f"uni-adafocus, exit @ {policy.budget:.3g} GMACs", lambda p=policy: model.infer(clip, p),
                         fraction))
    return variants


# (component, ((owner attribute or "" for the model itself, method), ...)): what the roofline times alone.
# Encoders are timed through their forward (as they run: in micro-batch chunks on the CPU); the static
# baseline has encoders and a head.
ROOFLINE_PARTS = (("glance encoder", (("glance_encoder", "forward"),)),
                  ("policy", (("", "frame_logits"), ("", "patch_actions"))),
                  ("local encoder", (("local_encoder", "forward"),)),
                  ("classifier", (("classifier", "glance_logits"), ("classifier", "focus_logits"),
                                  ("classifier", "focus_step"), ("", "glance_exit"), ("head", "forward"))))


def _detached(value):
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_detached(v) for v in value)
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


def record_component_calls(module, call: Callable[[], object]) -> dict[str, list[tuple[Callable, tuple, dict]]]:
    """Run ``call()`` once and return, per ROOFLINE_PARTS component, every call ``module``'s component got:
    (the method, its arguments (copies), its keyword arguments). A component called from inside another is
    counted in the outer one only. The recorders are set on the instances for the call and removed after it."""
    calls: dict[str, list] = {name: [] for name, _ in ROOFLINE_PARTS}
    depth = [0]
    wrapped = []
    for name, methods in ROOFLINE_PARTS:
        for owner_name, method in methods:
            owner = getattr(module, owner_name, None) if owner_name else module
            if owner is None or not callable(getattr(owner, method, None)):
                continue
            original = getattr(owner, method)

            def recorder(*args, _original=original, _name=name, **kwargs):
                if depth[0] == 0:
                    calls[_name].append((_original, _detached(args), _detached(kwargs)))
                depth[0] += 1
                try:
                    return _original(*args, **kwargs)
                finally:
                    depth[0] -= 1
            setattr(owner, method, recorder)
            wrapped.append((owner, method))
    try:
        call()
    finally:
        for owner, method in wrapped:
            delattr(owner, method)
    return calls


def component_seconds(module, call: Callable[[], object], device: torch.device, *, warmup: int = 1,
                      repeats: int = 3) -> tuple[dict[str, float], float]:
    """({component: seconds alone}, seconds of the whole ``call()``): each ROOFLINE_PARTS component of
    ``module`` alone is its calls during one ``call()`` (``record_component_calls``) replayed back to back;
    the components and the whole call are timed in the same turns (median of ``repeats``), so a change in
    machine load hits the roofline and the practical time alike."""
    calls = record_component_calls(module, call)
    names = [name for name, _ in ROOFLINE_PARTS]
    replays = [lambda recorded=calls[name]: [method(*args, **kwargs) for method, args, kwargs in recorded]
               for name in names]
    *seconds, whole = time_round_robin([*replays, call], device, warmup=warmup, repeats=repeats)
    return {name: (spent if calls[name] else 0.0) for name, spent in zip(names, seconds)}, whole


def bench_speed(model_config: ModelConfig, *, device: str = "auto", batch: int = 8, warmup: int = 2,
                repeats: int = 5, budget_fractions: tuple[float, ...] = (0.25, 0.5),
                amp: bool = True, seed: int = 0, measure_memory: bool = True, optimize: bool = True,
                engine: str = "torch", precision: str = "fp32", roofline: bool = True) -> list[dict]:
    """Rows of {name, engine, gmacs, videos_per_s, seconds (per batch), peak_mb, theoretical_ratio,
    practical_ratio, efficiency}; with an engine other than torch also {torch_videos_per_s, speedup}: the same
    variant with torch fp32, timed in the same turns; with a precision other than fp32 also {agreement}: the
    Uni-AdaFocus rows' predictions and exits against torch fp32 on the timed clips (``prediction_agreement``).
    With ``roofline``: {components_s, roofline_s, roofline_practical_s, roofline_ratio, practical_over_roofline}
    (and torch_... for torch fp32): each component alone at the batch it ran in (``component_seconds``), their
    sum, the whole call timed in the same turns as they were, the baseline's roofline over this one, and that
    practical time over the roofline. ``precision="auto"``: by the
    CPU's flags (``resolve_precision``)."""
    dev = resolve_device(device)
    precision = resolve_precision(engine, dev, precision, allow_int8=True)
    torch.manual_seed(seed)
    cfg = offline_weights(model_config)
    model = UniAdaFocus(cfg).eval().to(dev)
    baseline = StaticBaseline(cfg).eval().to(dev)
    baseline_gmacs, exit_costs = baseline.gmacs(), model.exit_costs()
    reference = None
    if resolve_engine(engine, dev, precision) != "torch":  # today's path on the same weights
        reference = (UniAdaFocus(cfg).eval().to(dev), StaticBaseline(cfg).eval().to(dev))
        reference[0].load_state_dict(model.state_dict())
        reference[1].load_state_dict(baseline.state_dict())
        for module in reference:
            prepare(module, engine="torch", precision="fp32", optimize=True)
    used = prepare(model, engine=engine, precision=precision, optimize=optimize)
    prepare(baseline, engine=engine, precision=precision, optimize=optimize)
    clip = benchmark_clips(batch, cfg, dev, seed)

    with torch.inference_mode(), cuda_autocast(dev, amp):
        # exit thresholds fitted on torch fp32 when it runs beside, as a deployed model's are
        policies = budget_policies(model if reference is None else reference[0], clip, budget_fractions)
        variants = _variants(model, baseline, clip, policies)
        calls = [run for _, run, _ in variants]
        reference_variants = _variants(*reference, clip, policies) if reference is not None else []
        calls += [run for _, run, _ in reference_variants]
        seconds = time_round_robin(calls, dev, warmup=warmup, repeats=repeats)
        rows = []
        for i, (name, run, fraction) in enumerate(variants):
            kind = "baseline" if i == 0 else "model"
            gmacs = baseline_gmacs if i == 0 else (exit_costs[-1] if fraction is None
                                                   else float(run().gmacs.mean()))
            row = {"name": name, "engine": used if used == "torch" else f"{used} {precision}", "gmacs": gmacs,
                   "videos_per_s": batch / seconds[i], "seconds": seconds[i],
                   "peak_mb": peak_memory_mb(kind, cfg, batch, dev, fraction, engine, precision)
                   if measure_memory else None}
            if reference is not None:
                row["torch_seconds"] = seconds[len(variants) + i]
                row["torch_videos_per_s"] = batch / row["torch_seconds"]
                row["speedup"] = row["videos_per_s"] / row["torch_videos_per_s"]
            if reference is not None and precision != "fp32" and i > 0:
                row["agreement"] = prediction_agreement(reference[0], model, clip, policies.get(fraction))
            if roofline:
                row["components_s"], row["roofline_practical_s"] = component_seconds(
                    baseline if i == 0 else model, run, dev, warmup=1, repeats=repeats)
                if reference is not None:
                    row["torch_components_s"], row["torch_roofline_practical_s"] = component_seconds(
                        reference[1] if i == 0 else reference[0], reference_variants[i][1], dev, warmup=1,
                        repeats=repeats)
            rows.append(row)
    base = rows[0]
    for row in rows:
        row["theoretical_ratio"] = base["gmacs"] / row["gmacs"]
        row["practical_ratio"] = row["videos_per_s"] / base["videos_per_s"]
        row["efficiency"] = row["practical_ratio"] / row["theoretical_ratio"]
        if reference is not None:
            row["torch_efficiency"] = (row["torch_videos_per_s"] / base["torch_videos_per_s"]) / row["theoretical_ratio"]
        for prefix in ("", "torch_") if reference is not None else ("",):
            if f"{prefix}components_s" in row:
                row[f"{prefix}roofline_s"] = sum(row[f"{prefix}components_s"].values())
                row[f"{prefix}practical_over_roofline"] = (row[f"{prefix}roofline_practical_s"]
                                                           / row[f"{prefix}roofline_s"])
    for row in rows:
        for prefix in ("", "torch_"):
            if f"{prefix}roofline_s" in row:
                row[f"{prefix}roofline_ratio"] = base[f"{prefix}roofline_s"] / row[f"{prefix}roofline_s"]
    return rows


def encoder_rates(model_config: ModelConfig, *, device: str = "auto", batch: int = 8, warmup: int = 1,
                  repeats: int = 3, optimize: bool = True, engine: str = "torch", precision: str = "fp32",
                  videos: int = 2) -> list[dict]:
    """Where the time goes: each encoder alone on ``min(batch, videos)`` videos' worth of inputs, as GMACs and
    milliseconds per video and the GMACs per second it reaches (with ``engine``; other engines also get
    torch's rate on the same inputs). Encoders that reach fewer GMACs/s than the baseline's local encoder
    keep less of their theoretical saving in practice."""
    dev = resolve_device(device)
    torch.manual_seed(0)
    cfg = dataclasses.replace(model_config, glance_pretrained=None, local_pretrained=None)
    models = {"engine": UniAdaFocus(cfg).eval().to(dev)}
    if resolve_engine(engine, dev, precision) != "torch":
        models["torch"] = UniAdaFocus(cfg).eval().to(dev)
        models["torch"].load_state_dict(models["engine"].state_dict())
        prepare(models["torch"], engine="torch", precision="fp32", optimize=True)
    prepare(models["engine"], engine=engine, precision=precision, optimize=optimize)
    videos = min(batch, videos)
    glance_size = cfg.glance_size or cfg.frame_size
    parts = [(f"glance encoder {cfg.glance_backbone}, {cfg.num_glance} frames at {glance_size}",
              "glance_encoder", cfg.num_glance, glance_size),
             (f"local encoder {cfg.local_backbone}, {cfg.num_focus} patches at {cfg.patch_size}",
              "local_encoder", cfg.num_focus, cfg.patch_size),
             (f"baseline local encoder {cfg.local_backbone}, {cfg.num_glance} frames at {cfg.frame_size}",
              "local_encoder", cfg.num_glance, cfg.frame_size)]
    rows = []
    with torch.inference_mode(), cuda_autocast(dev):
        for name, role, images, size in parts:
            inputs = torch.rand(videos * images, cfg.in_channels, size, size, device=dev)
            encoders = [getattr(m, role) for m in models.values()]
            gmacs = count_gmacs(encoders[0], inputs[:images])  # one video's worth
            seconds = time_round_robin([lambda e=e, x=inputs: e(x) for e in encoders], dev, warmup=warmup,
                                       repeats=repeats)
            row = {"part": name, "gmacs_per_video": gmacs, "ms_per_video": 1000.0 * seconds[0] / videos,
                   "gmacs_per_s": gmacs * videos / seconds[0]}
            if len(seconds) > 1:
                row["torch_gmacs_per_s"] = gmacs * videos / seconds[1]
            rows.append(row)
    return rows


PROFILE_STAGES = (("glance encoder", ("glance_encoder", "forward")),
                  ("glance frames (gather, resize, normalise)", ("", "glance")),
                  ("glance classifier", ("classifier", "glance_logits")),
                  ("temporal policy", ("", "frame_logits")),
                  ("spatial policy + boxes", ("", "patch_actions")),
                  ("crop patches", ("", "focus")),
                  ("local encoder", ("local_encoder", "forward")),
                  ("classifier steps", ("classifier", "focus_step")))


def profile_infer(model: UniAdaFocus, clip: torch.Tensor, policy: ExitPolicy | None) -> dict[str, float]:
    """Seconds of one ``model.infer(clip, policy)`` call spent in each stage of PROFILE_STAGES, plus "other"
    (the early-exit bookkeeping) and "total". Stages nest (the glance frames include the glance encoder,
    cropping includes the local encoder); the inner stage's time is taken out of the outer one. The methods
    are timed through wrappers set on the instances for the call and removed after it."""
    spent: dict[str, float] = dict.fromkeys([name for name, _ in PROFILE_STAGES], 0.0)
    wrapped = []
    for name, (owner_name, method) in PROFILE_STAGES:
        owner = getattr(model, owner_name) if owner_name else model
        original = getattr(owner, method)

        def timed(*args, _original=original, _name=name, **kwargs):
            started = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                spent[_name] += time.perf_counter() - started
        setattr(owner, method, timed)
        wrapped.append((owner, method))
    try:
        started = time.perf_counter()
        model.infer(clip, policy)
        total = time.perf_counter() - started
    finally:
        for owner, method in wrapped:
            delattr(owner, method)
    spent["glance frames (gather, resize, normalise)"] -= spent["glance encoder"]
    spent["crop patches"] -= spent["local encoder"]
    spent["other"] = total - sum(spent.values())
    spent["total"] = total
    return spent


def profile_rows(model_config: ModelConfig, *, device: str = "auto", batch: int = 8, engine: str = "torch",
                 precision: str = "fp32", budget_fractions: tuple[float, ...] = (0.25, 0.5), seed: int = 0,
                 repeats: int = 1) -> list[dict]:
    """Where the time of early-exit inference goes: one profile per variant of ``bench_speed`` (the same
    model, clips and budgets; no exit, then each budget), the median over ``repeats`` calls of each stage."""
    dev = resolve_device(device)
    torch.manual_seed(seed)
    cfg = offline_weights(model_config)
    model = UniAdaFocus(cfg).eval().to(dev)
    model.exit_costs()
    prepare(model, engine=engine, precision=precision, optimize=True)
    clip = benchmark_clips(batch, cfg, dev, seed)
    with torch.inference_mode(), cuda_autocast(dev):
        policies = budget_policies(model, clip, budget_fractions)
        model.infer(clip)  # warm-up
        return _profile_variants(model, clip, policies, repeats)


def _profile_variants(model: UniAdaFocus, clip: torch.Tensor, policies: dict[float, ExitPolicy],
                      repeats: int) -> list[dict]:
    rows = []
    for name, policy in [("no exit", None)] + [(f"exit @ {p.budget:.3g}", p) for p in policies.values()]:
        runs = [profile_infer(model, clip, policy) for _ in range(repeats)]
        rows.append({"variant": name, **{k: statistics.median(r[k] for r in runs) for k in runs[0]}})
    return rows


def format_profile_table(rows: list[dict]) -> str:
    stages = [k for k in rows[0] if k != "variant"]
    lines = [f"{'stage (share of the call)':42s} " + " ".join(f"{r['variant']:>14s}" for r in rows)]
    for stage in stages:
        cells = [f"{r[stage]:8.2f}s" if stage == "total" else f"{r[stage] / r['total']:9.0%}" for r in rows]
        lines.append(f"{stage:42s} " + " ".join(f"{c:>14s}" for c in cells))
    return "\n".join(lines)


def format_encoder_table(rows: list[dict]) -> str:
    side = "torch_gmacs_per_s" in rows[0]
    lines = [f"{'part':60s} {'GMACs/video':>11s} {'ms/video':>9s} {'GMACs/s':>8s}"
             + (f" {'torch GMACs/s':>13s}" if side else "")]
    for r in rows:
        lines.append(f"{r['part']:60s} {r['gmacs_per_video']:11.3f} {r['ms_per_video']:9.1f} {r['gmacs_per_s']:8.1f}"
                     + (f" {r['torch_gmacs_per_s']:13.1f}" if side else ""))
    return "\n".join(lines)


def scaling_rows(model_config: ModelConfig, *, device: str, batch: int, sweep: dict[str, list[int]],
                 warmup: int = 1, repeats: int = 3, measure_memory: bool = True) -> list[dict]:
    """videos/s and peak memory of Uni-AdaFocus (no exit) as one setting grows, the others fixed."""
    dev = resolve_device(device)
    rows = []
    for field, values in sweep.items():
        for value in values:
            cfg = dataclasses.replace(model_config, glance_pretrained=None, local_pretrained=None, **{field: value})
            model = UniAdaFocus(cfg).eval().to(dev).optimize_for_inference()
            clip = benchmark_clips(batch, cfg, dev)
            with torch.inference_mode():
                seconds = time_per_batch(lambda m=model, x=clip: m.infer(x), dev, warmup=warmup, repeats=repeats)
            rows.append({"setting": field, "value": value, "gmacs": model.exit_costs()[-1],
                         "videos_per_s": batch / seconds,
                         "peak_mb": peak_memory_mb("model", cfg, batch, dev) if measure_memory else None})
    return rows


def format_speed_table(rows: list[dict]) -> str:
    """The speed table; with a torch fp32 reference, its videos/s, the engine's speed-up over it and torch's
    own practice/theory follow, measured in the same turns."""
    side = "torch_videos_per_s" in rows[0]
    header = (f"{'variant':42s} {'GMACs/video':>11s} {'videos/s':>9s} {'peak MB':>8s} "
              f"{'theory x':>8s} {'practice x':>10s} {'practice/theory':>15s}")
    if side:
        header += f" | {'torch fp32 videos/s':>19s} {'speed-up':>8s} {'torch practice/theory':>21s}"
    lines = [header, "-" * len(header)]
    for r in rows:
        memory = "n/a" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
        line = (f"{r['name']:42s} {r['gmacs']:11.3f} {r['videos_per_s']:9.2f} {memory:>8s} "
                f"{r['theoretical_ratio']:8.2f} {r['practical_ratio']:10.2f} {r['efficiency']:15.2f}")
        if side:
            line += f" | {r['torch_videos_per_s']:19.2f} {r['speedup']:8.2f} {r['torch_efficiency']:21.2f}"
        lines.append(line)
    return "\n".join(lines)


def format_roofline_table(rows: list[dict], precision: str = "") -> str:
    """Practical time per batch (timed in turns with its components) beside the per-component roofline (each
    component alone at the batch it ran in, summed) and the GMACs theory: one table for the engine's precision
    and, where it ran beside, one for torch fp32. Speed-ups (x) are against the static baseline's row."""
    sides = [("", precision or rows[0]["engine"])] + ([("torch_", "torch fp32")] if "torch_roofline_s" in rows[0]
                                                      else [])
    parts = list(rows[0]["components_s"])
    short = {"glance encoder": "glance s", "local encoder": "local s", "policy": "policy s",
             "classifier": "classifier s"}
    blocks = []
    for prefix, label in sides:
        header = (f"{label:42s} {'theory x':>8s} {'roofline x':>10s} {'practice x':>10s} {'practical s':>11s} "
                  f"{'roofline s':>10s} {'practical/roofline':>18s} " + " ".join(f"{short.get(p, p):>12s}" for p in parts))
        lines = [header, "-" * len(header)]
        base = rows[0]
        for r in rows:
            practice = base[f"{prefix}roofline_practical_s"] / r[f"{prefix}roofline_practical_s"]
            lines.append(f"{r['name']:42s} {r['theoretical_ratio']:8.2f} {r[f'{prefix}roofline_ratio']:10.2f} "
                         f"{practice:10.2f} {r[f'{prefix}roofline_practical_s']:11.3f} {r[f'{prefix}roofline_s']:10.3f} "
                         f"{r[f'{prefix}practical_over_roofline']:18.2f} "
                         + " ".join(f"{r[f'{prefix}components_s'][p]:12.3f}" for p in parts))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def format_scaling_table(rows: list[dict]) -> str:
    lines = [f"{'setting':14s} {'value':>6s} {'GMACs/video':>11s} {'videos/s':>9s} {'peak MB':>8s}"]
    for r in rows:
        memory = "n/a" if r["peak_mb"] is None else f"{r['peak_mb']:.0f}"
        lines.append(f"{r['setting']:14s} {r['value']:6d} {r['gmacs']:11.3f} {r['videos_per_s']:9.2f} {memory:>8s}")
    return "\n".join(lines)


def default_sweep(config: ModelConfig) -> dict[str, list[int]]:
    p, max_side = config.patch_size, config.max_patch_side or config.frame_size
    patch_sizes = sorted({max(8, p // 2), p, min(max_side, 3 * p // 2)})
    return {"num_glance": sorted({max(1, config.num_glance // 2), config.num_glance}),
            "num_focus": sorted({max(1, config.num_focus // 2), config.num_focus}),
            "patch_size": patch_sizes}


def run_bench_speed(preset: str, *, device: str, batch: int, scaling: bool, repeats: int,
                    optimize: bool = True, engine: str = "auto", precision: str = "fp32", warmup: int = 1,
                    measure_memory: bool = True, profile: bool = True, roofline: bool = True,
                    model: str | None = None) -> dict:
    config = get_preset(preset).model
    dev = resolve_device(device)
    chosen = resolve_precision(engine, dev, precision, allow_int8=True)  # auto: by the CPU's flags alone
    options = {"device": device, "batch": batch, "engine": engine, "precision": chosen}
    trained = None if model is None else trained_agreement(model, preset, device=device,
                                                           engine=resolve_engine(engine, dev, chosen), precision=chosen)
    load_start = _load_average()
    result = {"preset": preset, "device": str(dev), "batch": batch, "torch_threads": torch.get_num_threads(),
              "engine": resolve_engine(engine, dev, chosen), "precision": chosen, "requested_precision": precision,
              "cpu": cpu_name(), "cpu_flags": list(cpu_flags()),
              "rows": bench_speed(config, repeats=repeats, warmup=warmup, optimize=optimize,
                                  measure_memory=measure_memory, roofline=roofline, **options),
              "encoders": encoder_rates(config, optimize=optimize, **options)}
    if profile and optimize:
        result["profile"] = profile_rows(config, **options)
    if scaling:
        result["scaling"] = scaling_rows(config, device=device, batch=batch, sweep=default_sweep(config))
    if trained is not None:
        result["trained_agreement"] = trained
    result["load_average"] = {"start": load_start, "end": _load_average()}
    return result


def trained_agreement(run_path: str, preset: str, *, device: str, engine: str, precision: str) -> dict:
    """``precision``'s agreement with torch fp32 on the trained run at ``run_path`` (a model of ``preset``'s
    architecture), measured on up to AGREEMENT_CLIPS clips of its own calibration split under its exit policy,
    as ``--precision auto`` measures it for ``score`` (apps/runs/agreement.py). Raises ValueError for a run of
    another architecture, CalibrationDataError when its calibration split cannot be found."""
    from adafocus.apps.runs.agreement import calibration_clips, measure_agreement
    from adafocus.core.run import load_run

    run = load_run(run_path, device=device)
    expected, got = get_preset(preset).model, run.model.config
    fields = ("glance_backbone", "local_backbone", "frame_size", "glance_size", "num_candidates", "num_glance",
              "num_focus", "patch_size")
    different = [name for name in fields if getattr(expected, name) != getattr(got, name)]
    if different:
        raise ValueError(f"{run_path} is not a {preset} model (differs in {', '.join(different)})")
    clips = calibration_clips(run)
    return {"run": str(run_path), **measure_agreement(run, engine, precision, clips)}


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _variant_key(name: str) -> str:
    """"uni-adafocus, exit @ 16 GMACs" -> "exit_16_gmacs"; "static baseline" -> "static_baseline"."""
    text = name.removeprefix("uni-adafocus, ").replace("@", "").replace(".", "_")
    return "_".join(text.replace(",", " ").lower().split())


def speed_result_tables(result: dict) -> tuple[dict, dict]:
    """(summary, tables) of a ``run_bench_speed`` result for ``save_result``: headline numbers per variant
    (videos/s, torch fp32 videos/s, speed-up, practical/roofline, agreement) and the row tables."""
    summary = {"batch": result["batch"], "threads": result["torch_threads"], "engine": result["engine"],
               "precision": result["precision"], "requested_precision": result["requested_precision"],
               "cpu_flags": ", ".join(result["cpu_flags"]),
               "load_average_start": result["load_average"]["start"],
               "load_average_end": result["load_average"]["end"]}
    variants = []
    for row in result["rows"]:
        key = _variant_key(row["name"])
        table_row = {"variant": row["name"], "engine": row["engine"], "gmacs": row["gmacs"],
                     "videos_per_s": row["videos_per_s"], "theory_x": row["theoretical_ratio"],
                     "practice_x": row["practical_ratio"], "practice_over_theory": row["efficiency"],
                     "peak_mb": row["peak_mb"]}
        summary[f"{key}.videos_per_s"] = row["videos_per_s"]
        if "torch_videos_per_s" in row:
            table_row.update(torch_fp32_videos_per_s=row["torch_videos_per_s"], speedup=row["speedup"],
                             torch_practice_over_theory=row["torch_efficiency"])
            summary[f"{key}.torch_fp32_videos_per_s"] = row["torch_videos_per_s"]
            summary[f"{key}.speedup_vs_torch_fp32"] = row["speedup"]
        for prefix, label in (("", ""), ("torch_", "torch_fp32_")):
            if f"{prefix}roofline_s" in row:
                table_row.update({f"{label}practical_s": row[f"{prefix}roofline_practical_s"],
                                  f"{label}roofline_s": row[f"{prefix}roofline_s"],
                                  f"{label}roofline_x": row[f"{prefix}roofline_ratio"],
                                  f"{label}practical_over_roofline": row[f"{prefix}practical_over_roofline"],
                                  **{f"{label}{part.replace(' ', '_')}_s": spent
                                     for part, spent in row[f"{prefix}components_s"].items()}})
                summary[f"{key}.{label}practical_over_roofline"] = row[f"{prefix}practical_over_roofline"]
        if "agreement" in row:
            agreement = row["agreement"]
            table_row.update({f"agreement_{k}": v for k, v in agreement.items()})
            summary[f"{key}.top1_agreement"] = agreement["top1_agreement"]
            summary[f"{key}.same_exits"] = agreement["same_exits"]
        variants.append(table_row)
    if "trained_agreement" in result:
        summary.update({f"trained_model.{k}": v for k, v in result["trained_agreement"].items()})
    tables = {"variants (seconds per batch)": variants, "encoders alone": result["encoders"]}
    if "profile" in result:
        tables["share of one batch per stage"] = result["profile"]
    if "scaling" in result:
        tables["scaling"] = result["scaling"]
    return summary, tables


def speed_command_line(args) -> str:
    """The command as it was run (OMP_NUM_THREADS included when set), for the result file."""
    parts = [f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"] if os.environ.get("OMP_NUM_THREADS") else []
    parts += ["adafocus bench speed", f"--preset {args.preset}", f"--batch-size {args.batch}",
              f"--repeats {args.repeats}", f"--device {args.device}", f"--engine {args.engine}",
              f"--precision {args.precision}"]
    parts += [flag for flag, on in (("--scaling", args.scaling), ("--no-optimize", args.no_optimize),
                                    ("--no-memory", args.no_memory)) if on]
    parts += [f"--model {args.model}"] if getattr(args, "model", None) else []
    return " ".join(parts + ([f"--results {args.results}"] if getattr(args, "results", None) else []))


SPEED_PLOTS = [  # how `adafocus report results` draws a speed result
    {"title": "practical against theoretical speed-up (GMACs ratio)", "x": "theory_x", "y": "practice_x",
     "table": "variants (seconds per batch)"},
    {"title": "videos/s against GMACs per video", "x": "gmacs", "y": "videos_per_s",
     "table": "variants (seconds per batch)"},
]


def bench_speed_command(args) -> int:
    """`adafocus bench speed` (arguments in apps/cli.py): measure, then print the tables (or JSON); with
    ``--results DIR`` also write DIR/speed-<preset>-<precision>.json."""
    if args.precision == "auto":  # no run folder here: by the CPU's flags alone
        dev = resolve_device(args.device)
        chosen = resolve_precision(args.engine, dev, "auto", allow_int8=True)
        print(f"CPU flags: {', '.join(cpu_flags()) or 'none found'}; precision auto -> {chosen} "
              f"(engine {resolve_engine(args.engine, dev, chosen)})", file=sys.stderr if args.json else sys.stdout)
    try:
        result = run_bench_speed(args.preset, device=args.device, batch=args.batch, scaling=args.scaling,
                                 repeats=args.repeats, optimize=not args.no_optimize, engine=args.engine,
                                 precision=args.precision, measure_memory=not args.no_memory,
                                 model=getattr(args, "model", None))
    except (ValueError, CalibrationDataError) as error:
        print(f"adafocus bench speed: {error}", file=sys.stderr)
        return 2
    if getattr(args, "results", None):
        from adafocus.reports.results import save_result

        summary, tables = speed_result_tables(result)
        path = save_result(f"speed-{args.preset}-{result['precision']}", speed_command_line(args), summary,
                           title=f"bench speed: {args.preset}, {result['engine']} {result['precision']} against torch "
                                 "fp32 and the per-component roofline",
                           tables=tables, plots=SPEED_PLOTS, results_dir=args.results)
        print(f"result: {path}", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"preset {result['preset']} on {result['device']} ({result['cpu']}, {result['torch_threads']} threads), "
          f"batch {args.batch}, engine {result['engine']} {result['precision']}; ratios against the static "
          f"baseline, measured in this run (load average {result['load_average']['start']} at the start, "
          f"{result['load_average']['end']} at the end)")
    print(format_speed_table(result["rows"]))
    for row in result["rows"]:
        if "agreement" in row:
            print(f"{result['precision']} vs torch fp32, {row['name']}: {format_agreement(row['agreement'])}")
    if "trained_agreement" in result:
        trained = result["trained_agreement"]
        print(f"{result['precision']} vs torch fp32 on the trained run {trained['run']} (its calibration split, "
              f"exit policy {trained['policy']}): {format_agreement(trained)}")
    if "roofline_s" in result["rows"][0]:
        print(f"\npractical time against the per-component roofline (seconds per batch of {args.batch}; each "
              "component alone at the batch it runs in; roofline = their sum; practical timed in the same turns)")
        print(format_roofline_table(result["rows"], f"{result['engine']} {result['precision']}"))
    print("\nwhere the time goes: each encoder alone")
    print(format_encoder_table(result["encoders"]))
    if "profile" in result:
        print("\nwhere the time of one batch goes, per stage")
        print(format_profile_table(result["profile"]))
    if "scaling" in result:
        print("\nUni-AdaFocus without exit as one setting grows (others at the preset's values)")
        print(format_scaling_table(result["scaling"]))
    return 0
