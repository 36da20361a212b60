"""How far the inference engine's predictions move from torch fp32: top-1 agreement per exit, and how exit
decisions change at the benchmark's budgets (the measurement `--precision bf16` is offered with).

    python benchmarks/engine_agreement.py                       # openvino fp32 vs torch fp32
    python benchmarks/engine_agreement.py --precision bf16      # on a CPU with native bf16 only
    python benchmarks/engine_agreement.py --precision int8      # nncf post-training quantization

On the pretrained-glance benchmark of `adafocus bench speed` (the paper's MobileNetV2 + ResNet-50, ImageNet
glance weights when installed, ``--clips`` benchmark clips); with ``--model RUN`` (a synthetic run, e.g. the
demo's) also on that run's held-out synthetic test split. Exit thresholds are fitted on the torch fp32 logits
and applied to both, as a deployed model's thresholds would be. int8 calibrates on other clips than it is
measured on: benchmark clips of another seed, and the synthetic run's calibration split.
"""
from __future__ import annotations

import argparse
import copy
import json

import torch
from adafocus.apps.bench.speed import benchmark_clips, budget_policies, offline_weights
from adafocus.core.config import get_preset
from adafocus.core.engine import prepare_for_inference
from adafocus.core.model import UniAdaFocus


def agreement(reference: UniAdaFocus, engine: UniAdaFocus, clips: torch.Tensor,
              fractions: tuple[float, ...] = (0.25, 0.5), batch: int = 16) -> dict:
    """Top-1 agreement of every exit (all samples run to the end), and at each budget: agreement of the
    predictions, the share of samples whose exit changed and the largest change in exit index."""
    def run(model, policy=None):
        results = [model.infer(part, policy) for part in clips.split(batch)]
        return torch.cat([r.logits for r in results]), torch.cat([r.exit_index for r in results])

    with torch.inference_mode():
        ref_logits, _ = run(reference)
        eng_logits, _ = run(engine)
        per_exit = (ref_logits.argmax(-1) == eng_logits.argmax(-1)).float().mean(0)
        result = {"clips": len(clips), "top1_agreement_per_exit": [round(float(a), 4) for a in per_exit],
                  "largest_logit_change_relative": float((ref_logits - eng_logits).abs().max() / ref_logits.abs().max()),
                  "budgets": []}
        for policy in budget_policies(reference, clips, fractions).values():
            (ref_l, ref_exit), (eng_l, eng_exit) = run(reference, policy), run(engine, policy)
            rows = torch.arange(len(clips))
            same = ref_l[rows, ref_exit].argmax(-1) == eng_l[rows, eng_exit].argmax(-1)
            result["budgets"].append({"budget_gmacs": round(policy.budget, 3),
                                      "top1_agreement": float(same.float().mean()),
                                      "exits_changed": float((ref_exit != eng_exit).float().mean()),
                                      "largest_exit_change": int((ref_exit - eng_exit).abs().max())})
    return result


def engine_copy(model: UniAdaFocus, precision: str, calibration: torch.Tensor) -> UniAdaFocus:
    engine = copy.deepcopy(model)
    prepare_for_inference(engine, engine="openvino", precision=precision,
                          calibration=calibration if precision == "int8" else None)
    return engine


def split_clips(dataset, count: int | None = None) -> torch.Tensor:
    return torch.stack([dataset[i]["clip"] for i in range(min(len(dataset), count or len(dataset)))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "int8"])
    parser.add_argument("--clips", type=int, default=32, help="benchmark clips (paper model)")
    parser.add_argument("--model", default=None, metavar="RUN", help="also a synthetic run on its test split")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = offline_weights(get_preset("paper-mbv2-r50").model)
    reference = UniAdaFocus(config).eval()
    cpu = torch.device("cpu")
    engine = engine_copy(reference, args.precision, benchmark_clips(16, config, cpu, seed=1))
    reference.optimize_for_inference()
    report = {"precision": args.precision, "glance_weights": config.glance_pretrained or "random",
              "benchmark": agreement(reference, engine, benchmark_clips(args.clips, config, cpu))}
    if args.model:
        from adafocus.apps.runs.synthetic import synthetic_splits
        from adafocus.core.run import load_run

        run = load_run(args.model, device="cpu")
        splits = synthetic_splits(run.preset)
        calibration = split_clips(splits["calibration"], 32)
        report["held_out"] = agreement(run.model.eval(), engine_copy(run.model, args.precision, calibration),
                                       split_clips(splits["test"]))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
