"""The synthetic-data timing benchmark runs (smoke mode) and measures what it says."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import data_speed  # noqa: E402


def test_measure_counts_what_was_generated_and_times_it():
    row = data_speed.measure("easy", {"rooms": 1, "products_per_room": 2, "clips_per_product": 1, "frames_per_clip": 3})
    assert row["products"] == 2
    assert row["clips"] == 2 * (1 + 1)  # one train and one test clip per product
    assert row["frames"] == row["clips"] * 3
    assert row["generate_s"] > 0 and row["read_s"] > 0
    assert row["frames_per_s"] == row["frames"] / row["generate_s"]


def test_smoke_mode_exits_zero_and_writes_nothing(tmp_path, monkeypatch, capsys):
    doc = tmp_path / "benchmarks.md"
    monkeypatch.setattr(data_speed.common, "DOC", doc)
    assert data_speed.main(["--smoke"]) == 0
    assert "generate (wall s)" in capsys.readouterr().out
    assert not doc.exists()


def test_loader_throughput_measures_every_case_and_reports_cores_for_8_gpus():
    rows = data_speed.measure_loader(**data_speed.SMOKE_LOADER)
    modes = {(r["kind"], r["mode"]) for r in rows}
    assert modes == {("camera", data_speed.SCALED), ("camera", data_speed.FULL), ("extracted", data_speed.SCALED),
                     ("shrunk", data_speed.SCALED), ("video", data_speed.SEEK_SCALED),
                     ("video", data_speed.SEEK_FULL)}
    for r in rows:
        assert r["frames"] > 0 and r["frames_per_s"] == r["frames"] / r["wall_s"] and r["kib_per_frame"] > 0
    # the stream's own frames carry less noise than the camera-like ones: smaller files
    kib = {r["kind"]: r["kib_per_frame"] for r in rows}
    assert kib["extracted"] < kib["camera"]
    text = data_speed.loader_markdown(rows, data_speed.common.machine_info(), "cmd")
    assert "Cores for 8 GPUs" in text and "frames per CPU-second" in text
