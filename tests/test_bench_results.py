"""benchmarks/results/ holds one canonical result per benchmark claim, made at the claim's settings and
saying which commit made it; every other run's files live in the git-ignored variants/ folder."""

from __future__ import annotations

import dataclasses
import json

import pytest

from agents.decision.sweep import KEPT_TRIAL_FILES
from benchmarks import bench_aaren, bench_agents, bench_batching, bench_memory, bench_ppo, bench_quality
from benchmarks.common import RESULTS, VARIANTS

CLAIMS = {
    claim.name: claim
    for claim in (
        bench_aaren.CLAIM,
        bench_agents.CLAIM,
        bench_batching.CLAIM,
        bench_memory.CPU_CLAIM,
        bench_memory.CPU_LONG_CLAIM,
        bench_ppo.ACTING_CLAIM,
        bench_ppo.POPGYM_CLAIM,
        bench_quality.CLAIM,
    )
}
STALE = {"quality": "made before train.batch_steps: re-run bench_quality.py to refresh it"}


def tracked(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


SWEEPS = RESULTS / "sweeps"  # tracked sweep reports: one folder per configs/sweeps/<name>.yaml


def test_results_folder_holds_only_the_claims() -> None:
    files = {p.name for p in RESULTS.iterdir() if p.name not in (VARIANTS, SWEEPS.name) and p.name[0] != "."}
    claims = {f"{name}{suffix}" for name in CLAIMS for suffix in (".json", ".png")}
    assert files - {"quality.md"} == claims


@pytest.mark.parametrize("folder", sorted(SWEEPS.iterdir()) if SWEEPS.is_dir() else [], ids=lambda p: p.name)
def test_a_tracked_sweep_report_holds_its_finished_trials(folder) -> None:
    """A sweep report is of a shipped sweep file, and every trial it counts as finished keeps what a later
    session needs to count it again (its config, bookkeeping and evaluation report, tracked with it)."""
    report = json.loads((folder / "sweep.json").read_text())
    assert report["sweep"]["file"].endswith(f"configs/sweeps/{folder.name}.yaml")
    assert (RESULTS.parents[1] / "configs" / "sweeps" / f"{folder.name}.yaml").is_file()
    finished = [t for t in report["trials"] if t["status"] == "finished"]
    assert len(finished) == report["finished"]
    for trial in finished:
        run = folder / "runs" / trial["name"]
        for name in KEPT_TRIAL_FILES:
            assert (run / name).is_file(), (
                f"{run / name} is missing: git add -f $(aaren-rl sweep --config {folder.name} --out {folder} --kept)"
            )
        assert json.loads((run / "sweep_trial.json").read_text())["finished"]


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=STALE[n])) if n in STALE else n
        for n in CLAIMS
    ],
)
def test_each_claim_was_made_at_its_settings(name: str) -> None:
    claim, results = CLAIMS[name], tracked(name)
    assert results["settings"] == json.loads(json.dumps(dataclasses.asdict(claim.settings)))
    assert results["machine"]["device"] == claim.device


@pytest.mark.parametrize("name", list(CLAIMS))
def test_each_claim_records_its_commit_or_why_not(name: str) -> None:
    machine = tracked(name)["machine"]
    assert len(machine["commit"] or "") == 40 or machine["commit_note"].startswith("commit not recorded")
