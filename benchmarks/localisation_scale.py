"""Is finding the product worth more at a finer patch grid? Oracle boxes at 64 px and 128 px frames.

    python benchmarks/localisation_scale.py --jobs 2   # `hard`, 3 selection seeds; about 12 min on 2 cores
    python benchmarks/localisation_scale.py --smoke    # a minute; what tests/test_benchmarks.py runs

The accuracy benchmark's oracle diagnostic (``SGMN, oracle boxes on both sides``) finds that giving
the model the product's box earns nothing measurable at its 64 px frames (a 4x4 patch grid), so
TGA, which learns to find the product from the ASR, has nothing to earn there. This script asks
whether that is a property of the task or of the grid: per frame size it trains full SGMN and the
same model with oracle boxes (``detector_boxes``: every patch outside the ground-truth box masked,
in training and in the queries) on `hard` data rendered at that size, with the tiny tower at that
input size (16 px patches: 4x4 at 64 px, 8x8 at 128 px). There is no `sgmn pretrain` checkpoint at
128 px, so both sizes train from random weights (the ``scratch`` recipe), on seeds the accuracy
benchmark never reports, with its budget and code path (``accuracy.run_one``). Paired R@1
differences with 95% bootstrap CIs over seeds and queries.

Writes the ``localisation-scale`` section of docs/benchmarks.md and
docs/benchmarks/localisation_scale.json.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import accuracy  # noqa: E402
import common  # noqa: E402

SECTION = "localisation-scale"
JSON_PATH = common.REPO / "docs" / "benchmarks" / "localisation_scale.json"
SEEDS = (100, 101, 102)  # selection seeds: the accuracy benchmark reports 0-4
SIZES = (64, 128)
PRESET = "hard"


def specs(size: int) -> tuple[accuracy.ModelSpec, accuracy.ModelSpec]:
    """(full SGMN, SGMN with oracle boxes) with the tiny tower at ``size`` px, from random weights."""
    vision = (("vision.image_size", size),)
    return (accuracy.ModelSpec(f"SGMN, {size} px", "sgmn-tiny", vision, start="scratch"),
            accuracy.ModelSpec(f"SGMN, oracle boxes, {size} px", "sgmn-tiny",
                               (*vision, ("detector_boxes", True)), start="scratch"))


def measure(cfg: accuracy.AccuracyConfig, preset: str, sizes, seeds, out: Path, jobs: int,
            threads: Optional[int]) -> dict:
    tasks = []
    for size in sizes:
        sized = dataclasses.replace(cfg, data_overrides={**cfg.data_overrides, "image_size": size})
        for seed in seeds:
            synth = accuracy.synth_config(sized, preset, seed)
            accuracy.ensure_data(synth, out / "data")
            tasks += [(sized, spec, synth, out, None, {"preset": preset, "size": size}) for spec in specs(size)]
    rows = accuracy.run_all(tasks, jobs, threads)
    result = {"preset": preset, "seeds": list(seeds), "runs": len(rows),
              "fresh_runs": sum(not r.get("from_cache") for r in rows), "cpu_s": sum(r["cpu_s"] for r in rows),
              "sizes": {}}
    for size in sizes:
        full, oracle = specs(size)
        mine = [r for r in rows if r["size"] == size]
        patches = (size // 16) ** 2
        result["sizes"][str(size)] = {
            "patches": patches,
            "R@1": {s.label: statistics.fmean(r["R@1"] for r in mine if r["model"] == s.label) for s in (full, oracle)},
            "oracle_minus_sgmn": accuracy.paired_effect(mine, preset, oracle.label, full.label, cfg.n_boot),
            "oracle_patch_share": accuracy.oracle_patch_share(
                [out / "data" / r["data"] for r in mine if r["model"] == full.label],
                image_size=size),
        }
    return result


def markdown(result: dict, command: str, seconds: float, info: dict) -> str:
    rows = []
    for size, cell in result["sizes"].items():
        full, oracle = (s.label for s in specs(int(size)))
        rows.append([f"{size} px ({int(cell['patches'] ** 0.5)}×{int(cell['patches'] ** 0.5)} patches)",
                     f"{100 * cell['oracle_patch_share']:.0f}%", f"{cell['R@1'][full]:.1f}", f"{cell['R@1'][oracle]:.1f}",
                     accuracy._bold_if_clear(cell["oracle_minus_sgmn"])])
    return "\n".join([
        "## Is finding the product worth more at a finer patch grid? (`hard`, from random weights)", "",
        accuracy.provenance(command, seconds, result), "",
        common.machine_markdown(info), "",
        f"Full SGMN and the same model with oracle boxes (the ground-truth box masks every other patch, in training "
        f"and in the queries), on `{result['preset']}` data rendered at each frame size with the tiny tower at that "
        f"input size (16 px patches), trained from random weights (no `sgmn pretrain` checkpoint exists at 128 px) "
        f"with the accuracy benchmark's budget, seeds {result['seeds']} (the accuracy benchmark reports 0-4). "
        "Paired R@1 difference, 95% bootstrap CI over seeds and queries (bold: the CI excludes 0).", "",
        common.markdown_table(["frames", "patches the oracle keeps", "SGMN R@1", "oracle boxes R@1",
                               "oracle − SGMN"], rows),
    ])


def size_sweep_main(script: str, description: str, json_path: Path, section: str, measure, markdown, sizes,
                    smoke_sizes, seeds, argv: Optional[list[str]], report: Optional[dict] = None) -> dict:
    """The command line of a script that sweeps the frame size on `hard` (``--smoke``: one seed of
    `easy` at ``smoke_sizes``): ``measure(cfg, preset, sizes, seeds, out, jobs, threads)`` rendered by
    ``markdown(result, command, seconds, info)`` as ``section``. ``report`` (keys seeds, section,
    json, measure, help) adds ``--report``: that measure, on those seeds, into that section and JSON."""
    flags = [("--report", report["help"])] if report else []
    args, threads = accuracy.selection_script_args(description, json_path, "one seed, easy preset, small frames", argv,
                                                   flags)
    json_out = args.json
    if report and args.report:
        measure, seeds, section = report["measure"], report["seeds"], report["section"]
        json_out = report["json"] if args.json == json_path else args.json
    if args.smoke:
        cfg, preset, sizes, seeds = accuracy.mode_config("smoke"), "easy", smoke_sizes, seeds[:1]
    else:
        cfg, preset = accuracy.mode_config("standard"), PRESET
    command = common.command_line() if argv is None else f"python benchmarks/{script} " + " ".join(argv)
    return accuracy.run_and_write(lambda: measure(cfg, preset, sizes, seeds, args.out, args.jobs, threads),
                                  lambda result, seconds, info: markdown(result, command, seconds, info),
                                  section, args.doc, json_out, command)


def main(argv: Optional[list[str]] = None) -> None:
    size_sweep_main("localisation_scale.py", __doc__.split("\n")[0], JSON_PATH, SECTION, measure, markdown, SIZES,
                    (32, 64), SEEDS, argv)


if __name__ == "__main__":
    main()
