"""`adafocus bench flops`: per-component and per-exit GMACs of a preset, measured on the real modules."""
from __future__ import annotations

import json

from adafocus.core.config import get_preset
from adafocus.core.flops import format_cost_table
from adafocus.core.model import UniAdaFocus
from adafocus.reports.results import save_result


def bench_flops_command(args) -> int:
    overrides = {"glance_pretrained": None, "local_pretrained": None}  # costs do not depend on weights
    if args.num_classes is not None:
        overrides["num_classes"] = args.num_classes
    model = UniAdaFocus(get_preset(args.preset, **overrides).model)
    components, exits = model.component_costs(), model.exit_costs()
    if args.results:
        summary = {**{f"{name} GMACs": cost for name, cost in components.items()},
                   **{f"exit {k} GMACs": cost for k, cost in enumerate(exits)}}
        path = save_result(f"flops-{args.preset}", f"adafocus bench flops --preset {args.preset}", summary,
                           title=f"Costs of {args.preset} (GMACs per sample)", results_dir=args.results)
        print(f"result: {path}")
    if args.json:
        print(json.dumps({"preset": args.preset, "unit": "GMACs per sample", "components": components,
                          "exits": exits}, indent=2))
        return 0
    print(f"preset {args.preset}: GMACs per sample (measured with torch.utils.flop_counter; 1 MAC = 2 FLOPs)")
    print(format_cost_table(components))
    print()
    print(format_cost_table({("glance only" if k == 0 else f"{k} patches"): cost for k, cost in enumerate(exits)},
                            value_header="GMACs at exit"))
    return 0
