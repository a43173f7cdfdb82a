"""How long the built-in synthetic data takes to generate and to read back, per preset.

The spec asks that the ``default`` preset generates "well under a minute on 2 cores"; this
script measures it (wall and CPU time, frames per second) and fails (exit code 1) when the
default preset takes a minute or more, so the promise is checked, not assumed.

    python benchmarks/data_speed.py            # all presets, writes the `data` section of docs/benchmarks.md
    python benchmarks/data_speed.py --smoke    # a tiny config only, nothing written (the test suite runs this)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

from sgmn.data.readers import read_dataset  # noqa: E402
from sgmn.data.synthetic import generate, preset  # noqa: E402

DEFAULT_LIMIT_S = 60.0


def measure(name: str, overrides: dict) -> dict:
    config = preset(name, **overrides)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "data"
        wall0, cpu0 = time.perf_counter(), time.process_time()
        summary = generate(out, config, progress=False)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        r0 = time.perf_counter()
        data = read_dataset(out, "lpr4m")
        read_s = time.perf_counter() - r0
    frames = sum(len(c.frame_paths) for c in data.clips.values())
    return {"preset": name, "rooms": config.rooms, "products": len(data.products), "clips": len(data.clips),
            "frames": frames, "image_size": config.image_size, "generate_s": wall, "cpu_s": cpu,
            "frames_per_s": frames / wall, "read_s": read_s, "summary_seconds": summary.get("seconds")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="one tiny config, print only (used by the tests)")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    args = parser.parse_args(argv)

    info = common.machine_info()
    if args.smoke:
        rows = [measure("easy", {"rooms": 1, "products_per_room": 2, "clips_per_product": 1})]
    else:
        rows = [measure(name, {}) for name in ("easy", "default", "hard")]
    table = common.markdown_table(
        ["preset", "rooms", "products", "clips", "frames", "px", "generate (wall s)", "CPU s", "frames/s", "read back (s)"],
        [[r["preset"], r["rooms"], r["products"], r["clips"], r["frames"], r["image_size"], f"{r['generate_s']:.1f}",
          f"{r['cpu_s']:.1f}", f"{r['frames_per_s']:.0f}", f"{r['read_s']:.1f}"] for r in rows],
    )
    print(table)
    default = next((r for r in rows if r["preset"] == "default"), None)
    verdict = ""
    if default is not None:
        ok = default["generate_s"] < DEFAULT_LIMIT_S
        verdict = (f"The `default` preset generated in {default['generate_s']:.1f} s "
                   f"({'under' if ok else 'NOT under'} the {DEFAULT_LIMIT_S:.0f} s the spec asks for).")
        print(verdict)
    if not args.smoke and not args.no_write:
        body = "\n\n".join([
            "## Synthetic data: generation and reading time",
            f"Command: `{common.command_line()}`",
            common.machine_markdown(info),
            table,
            verdict,
            "Generation is single-process and deterministic (same seed, byte-identical files); reading "
            "back uses the LPR4M reader (`sgmn inspect --format lpr4m`).",
        ])
        common.write_section("data", body)
        print(f"wrote the `data` section of {common.DOC}")
    return 0 if default is None or default["generate_s"] < DEFAULT_LIMIT_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
