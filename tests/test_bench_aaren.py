"""Smoke test of benchmarks/bench_aaren.py on tiny sizes: it runs, writes the JSON and the PNG (no timing checks)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from scratch_git import scratch_checkout  # tests/scratch_git.py (pytest puts tests/ on sys.path)

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_aaren.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_aaren", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def tiny(bench, **kw):
    sizes = dict(
        scan_lengths=(5, 200),  # 200 > the default chunk: the chunked path
        tokens_seen=(3, 7),
        steps=2,
        sdpa_budget_s=1e9,
        case_budget_s=0.0,
        min_reps=1,
        max_reps=1,
        scan_batch=2,
        head_dim=8,
        step_batches=(1, 2),
        width=16,
        layers=1,
    )
    return bench.Settings(**{**sizes, **kw})


def test_run_writes_json_and_png(bench, tmp_path):
    results = bench.run(tiny(bench), "cpu", tmp_path)
    data = json.loads((tmp_path / "aaren_core.json").read_text())
    assert data == json.loads(json.dumps(results))
    assert {"machine", "settings", "scan", "packed", "backbone", "goals", "total_wall_s"} <= data.keys()
    assert [c["n"] for c in data["packed"]["cases"]] == [5, 200]
    assert all(c["packed_ratio"] > 0 and c["episodes_per_row"] >= 1 for c in data["packed"]["cases"])
    assert {"platform", "cpu_model", "torch", "num_threads", "device", "date"} <= data["machine"].keys()
    assert [c["n"] for c in data["scan"]["cases"]] == [5, 200]
    for case in data["scan"]["cases"]:
        assert case["sdpa_skipped"] is None
        assert case["speedup_vs_sdpa"] > 0 and case["floor_ratio"] > 0
    assert len(data["backbone"]["cases"]) == 2 * 2 * 2  # models x batches x tokens_seen
    aaren_bytes = {
        c["state_bytes"] for c in data["backbone"]["cases"] if c["model"] == "aaren" and c["batch"] == 1
    }
    assert len(aaren_bytes) == 1
    goals = data["goals"]
    assert goals["scan_speedup_vs_sdpa"]["pass"] is None  # N = 3000 not measured
    assert goals["aaren_state_bytes_constant_batch2"]["pass"] is True
    png = (tmp_path / "aaren_core.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert (tmp_path / "aaren_core.json").stat().st_mode & 0o044 == 0o044  # readable by others
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left
    assert "Goals" in bench.format_table(results)


def test_sdpa_skipped_over_budget(bench):
    scan = bench.bench_scan(tiny(bench, sdpa_budget_s=0.0, sdpa_always_up_to=0), "cpu")
    first, second = scan["cases"]
    assert first["sdpa_s"] is not None and first["sdpa_skipped"] is None
    assert second["sdpa_s"] is None and second["speedup_vs_sdpa"] is None
    assert "budget" in second["sdpa_skipped"]
    kept = bench.bench_scan(tiny(bench, sdpa_budget_s=0.0), "cpu")  # N <= 3000: always measured
    assert all(c["sdpa_skipped"] is None for c in kept["cases"])


def test_help_exits_cleanly(bench, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--help"])
    assert exc.value.code == 0
    assert "--quick" in capsys.readouterr().out


def test_main_writes_the_claim_only_from_committed_code_and_other_runs_as_variants(
    bench, tmp_path, monkeypatch, capsys
):
    claimed, other = tiny(bench), tiny(bench, steps=3)
    monkeypatch.setattr(bench, "QUICK", claimed)
    monkeypatch.setattr(bench, "FULL", other)
    monkeypatch.setattr(bench, "CLAIM", bench.Claim("aaren_core", claimed))
    scratch_checkout(tmp_path / "repo", monkeypatch, dirty=True)
    out = tmp_path / "out"
    args = ["--device", "cpu", "--out", str(out)]

    assert bench.main([*args, "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--allow-dirty" in err and err.count("\n") == 1
    assert not out.exists()  # refused before measuring anything

    assert bench.main([*args, "--quick", "--allow-dirty"]) == 0
    machine = json.loads((out / "aaren_core.json").read_text())["machine"]
    assert machine["code_dirty"] is True and len(machine["commit"]) == 40

    assert bench.main(args) == 0  # not the claim's settings: a variant, whatever the checkout
    assert json.loads((out / "variants" / "aaren_core.json").read_text())["settings"]["steps"] == 3
