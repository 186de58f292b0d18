"""TPE with early stopping against random search without it, at equal wall-clock budget.

Runs the same search space twice, one study after the other, each for ``--minutes`` on the whole
machine (or Ray cluster), then prints both hypervolumes (reference point: accuracy 0.95, 40,000
parameters) and their ratio. Trials still running at the deadline are stopped and not counted.

    python scripts/bench_search.py --minutes 60 --space search_spaces/small.yaml \\
        --data-dir ../shared/data --out results/bench_search [--json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from ressearch.live import LiveView
from ressearch.report import HV_REFERENCE, hypervolume
from ressearch.results import is_feasible
from ressearch.space import load_space
from ressearch.study import run_study


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, required=True, help="Budget of each study.")
    p.add_argument("--space", default="search_spaces/small.yaml")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default="results/bench_search")
    p.add_argument("--json", action="store_true", help="Print the results as JSON.")
    args = p.parse_args()
    base = load_space(args.space)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    arms = {
        "tpe+early-stopping": dataclasses.replace(base, sampler="tpe", early_stopping=True),
        "random": dataclasses.replace(base, sampler="random", early_stopping=False),
    }
    results = {}
    for label, space in arms.items():
        name = f"{base.name}-{label}-{stamp}"
        run = run_study(space, data_dir=args.data_dir, name=name, out=Path(args.out),
                        trials=100_000, timeout=args.minutes * 60,
                        view=LiveView(interactive=False))
        feasible = [t for t in run.study.get_trials(deepcopy=False) if is_feasible(t)]
        hv = hypervolume([(t.values[0], t.values[1]) for t in feasible])
        results[label] = {"study": name, "hypervolume": hv, "seconds": round(run.seconds),
                          "counts": run.counts}
        print(f"{label}: hypervolume {hv:.2f} from {run.counts} in {run.seconds:.0f}s", flush=True)
    a, b = (results[k]["hypervolume"] for k in arms)
    ratio = a / b if b else None  # undefined when random search found nothing inside the box
    summary = {"minutes": args.minutes, "space": args.space, "reference": HV_REFERENCE,
               "arms": results, "ratio": ratio}
    ratio_text = f"{ratio:.2f}" if ratio is not None else "undefined (random: 0)"
    print(f"hypervolume ratio (TPE + early stopping / random): {ratio_text} "
          f"(reference: accuracy {HV_REFERENCE[0]}, {HV_REFERENCE[1]:,} params; "
          f"{args.minutes:g} minutes each)")
    if args.json:
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
