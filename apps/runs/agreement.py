"""`--precision auto` for a run: the best CPU precision whose agreement with torch fp32 was measured on the
run's own calibration split.

The choice (pure functions in adafocus.core.engine): with OpenVINO on the CPU, bf16 where the CPU has
AVX512-BF16 or AMX, else int8 (nncf), else fp32; torch (CUDA with AMP, or ``--engine torch``) is fp32. A
precision other than fp32 is measured the first time it is used with a run: up to ``AGREEMENT_CLIPS`` clips
of the run's calibration split (evenly spread over it) go through torch fp32 and through the engine at that
precision, and top-1 agreement, the largest probability difference and the share of identical exit
decisions are compared (``prediction_agreement``) under the run's exit policy: ``exit_policy.json`` when
training fitted one, else the default budget (midway between glance-only and every patch) refitted on
``calibration.pt``, else fitted on the fp32 logits of those clips. The measurement goes to the run folder's
``engine_agreement.json`` under ``agreement_key`` (precision, engine version, CPU flags, checkpoint digest),
so a later run on the same machine type reuses it; one line says what was chosen and why.

The precision is kept when ``agreement_allows`` it (>= 99% top-1, >= 98% identical exits); else auto falls
back to fp32 and says so. bf16 is chosen by the CPU and kept when its agreement cannot be measured (the
calibration data moved: the line says so); int8 needs a measured agreement. int8 is quantized on the same
calibration clips, so the model used is the one that was measured (its IR is cached by those inputs).
"""
from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable

import torch
from adafocus.apps.runs.calibrate import calibration_dataset
from adafocus.core.engine import (
    AGREEMENT_CLIPS,
    MIN_SAME_EXITS,
    MIN_TOP1_AGREEMENT,
    agreement_allows,
    agreement_key,
    all_exit_logits,
    auto_candidate,
    auto_decision,
    bf16_supported,
    cpu_flags,
    engine_version,
    format_agreement,
    logits_agreement,
    needs_calibration,
    nncf_available,
    prepare_for_inference,
    resolve_engine,
)
from adafocus.core.exits import ExitPolicy, exit_scores, solve_budget
from adafocus.core.run import CalibrationDataError, LoadedRun, exit_policy_for_budget, load_exit_policy


def calibration_clips(run: LoadedRun, limit: int = AGREEMENT_CLIPS) -> torch.Tensor:
    """Up to ``limit`` clips ``[n, T, C, H, W]`` of the run's own calibration split, evenly spread over it, on
    the model's device. CalibrationDataError when the split cannot be found or is empty."""
    dataset, collate, _ = calibration_dataset(run)
    if len(dataset) == 0:
        raise CalibrationDataError(f"the calibration split of {run.folder.path} is empty")
    count = min(len(dataset), limit)
    indices = torch.linspace(0, len(dataset) - 1, count).round().long().unique().tolist()
    return collate([dataset[i] for i in indices])["clip"].to(run.model.pixel_mean.device)


def agreement_policy(run: LoadedRun, reference_logits: torch.Tensor) -> tuple[ExitPolicy, str]:
    """(exit policy the agreement is measured under, how it was obtained): the run's exit_policy.json, else
    the default budget (midway) refitted on calibration.pt, else fitted on ``reference_logits``."""
    model, folder = run.model, run.folder
    fitted = folder.exit_policy()
    if fitted.is_file():
        try:
            policy = load_exit_policy(fitted)
            if policy.num_exits == model.config.num_exits:
                return policy, f"{fitted.name} ({policy.budget:.4g} GMACs)"
        except (OSError, ValueError, KeyError):
            pass
    costs = model.exit_costs()
    budget = 0.5 * (costs[0] + costs[-1])
    try:
        return exit_policy_for_budget(folder, budget, model), f"default budget {budget:.4g} GMACs"
    except (OSError, ValueError, KeyError):
        pass
    policy = solve_budget(exit_scores(reference_logits, "entropy"), costs, budget, criterion="entropy")
    return policy, f"default budget {budget:.4g} GMACs fitted on these clips"


def measure_agreement(run: LoadedRun, engine: str, precision: str, clips: torch.Tensor) -> dict:
    """Agreement of ``run.model`` at ``precision`` with torch fp32 on ``clips`` under the run's exit policy
    (``agreement_policy``); ``run.model`` itself is left as it is (both sides run on copies)."""
    reference = copy.deepcopy(run.model)
    reference.optimize_for_inference()
    reference_logits = all_exit_logits(reference, clips)
    del reference
    policy, described = agreement_policy(run, reference_logits)
    trial = copy.deepcopy(run.model)
    prepare_for_inference(trial, engine=engine, precision=precision,
                          calibration=clips if needs_calibration(precision) else None)
    agreement = logits_agreement(reference_logits, all_exit_logits(trial, clips), policy)
    return {**agreement, "policy": described}


def _thresholds_text() -> str:
    return f"{MIN_TOP1_AGREEMENT:.0%} top-1 and {MIN_SAME_EXITS:.0%} identical exits"


def choose_run_precision(run: LoadedRun, engine: str = "auto", *, allow_int8: bool = True,
                         log: Callable[[str], None] = print) -> tuple[str, torch.Tensor | None]:
    """(precision ``--precision auto`` uses for ``run`` with ``engine``, the calibration clips int8 is
    quantized on or None); measures and stores the agreement the first time (module docstring) and logs one
    line. ``allow_int8=False`` where int8 is not offered (scans, the app)."""
    device = run.model.pixel_mean.device
    used = resolve_engine(engine, device, "auto")
    flags = cpu_flags()
    candidate = auto_candidate(used, flags, bf16_available=used == "openvino" and bf16_supported(),
                               int8_available=allow_int8 and nncf_available())
    flags_text = ", ".join(flag for flag in flags if "bf16" in flag or "amx" in flag or "vnni" in flag) or "none"
    if candidate == "fp32":
        if used == "openvino":
            log(f"precision auto: fp32 (CPU flags for bf16/int8: {flags_text}; no native bf16"
                + ("" if allow_int8 else ", int8 is not offered here") + ")")
        return "fp32", None
    folder, digest = run.folder, run.folder.checkpoint_digest()
    key = agreement_key(candidate, engine_version(candidate), flags, digest)
    stored = folder.engine_agreements().get(key)
    clips = None
    if stored is None:
        try:
            clips = calibration_clips(run)
        except (CalibrationDataError, FileNotFoundError, ValueError) as error:
            chosen = auto_decision(candidate, None)
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            log(f"precision auto: {chosen} (CPU flags: {flags_text}); {candidate} agreement with torch fp32 not "
                f"measured: {reason}" + ("" if chosen == candidate else f"; {candidate} needs it"))
            return chosen, None
        measured = measure_agreement(run, used, candidate, clips)
        stored = {"precision": candidate, "engine": engine_version(candidate), "cpu_flags": list(flags),
                  "checkpoint": folder.checkpoint.name, "checkpoint_sha256": digest,
                  **measured, "allowed": agreement_allows(measured),
                  "thresholds": {"top1_agreement": MIN_TOP1_AGREEMENT, "same_exits": MIN_SAME_EXITS},
                  "measured": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
        folder.record_engine_agreement(key, stored)
        where = f"measured now on the calibration split, stored in {folder.engine_agreement.name}"
    else:
        where = f"stored in {folder.engine_agreement.name} ({stored.get('measured', 'earlier')})"
    chosen = auto_decision(candidate, stored)
    summary = f"{format_agreement(stored)} under {stored.get('policy', 'the exit policy')}"
    if needs_calibration(chosen) and clips is None:
        try:  # quantized on the clips it was measured on (the int8 IR is cached by them)
            clips = calibration_clips(run)
        except (CalibrationDataError, FileNotFoundError, ValueError) as error:
            log(f"precision auto: fp32, not int8: it is quantized on the run's calibration split, which cannot be "
                f"read now ({str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__})")
            return "fp32", None
    if chosen == candidate:
        log(f"precision auto: {chosen} (CPU flags: {flags_text}); vs torch fp32: {summary}; {where}")
    else:
        log(f"precision auto: fp32, not {candidate}: its agreement with torch fp32 is below {_thresholds_text()} "
            f"({summary}; {where})")
    return chosen, clips if needs_calibration(chosen) else None


def prepare_run(run: LoadedRun, *, engine: str = "auto", precision: str = "auto", allow_int8: bool = True,
                log: Callable[[str], None] = print) -> str:
    """``prepare_for_inference`` of ``run.model`` with ``precision`` (auto: ``choose_run_precision``);
    returns the precision used. Explicit int8 needs calibration clips: use the scorer's own path for it."""
    calibration = None
    if precision == "auto":
        precision, calibration = choose_run_precision(run, engine, allow_int8=allow_int8, log=log)
    prepare_for_inference(run.model, engine=engine, precision=precision, calibration=calibration)
    return precision
