"""Benchmark of the Aaren model core: scan speed and backbone step latency / state memory.

Everything is measured in one run and compared as ratios, because shared machines are noisy:

1. Scan, forward + backward. Each case starts from leaf inputs whose .grad is reset to None, runs the
   forward and then `out.sum().backward()`:
     aaren     aaren_scan(scores [B, H, N], values [B, H, N, Dh]) (on a CPU: the fused C++ scan)
     parallel  the same with chunk_size=auto_chunk_size(N): the scan's parallel form in torch operations
               (chunked, or one block for short N), as on a GPU
     sdpa   F.scaled_dot_product_attention(q, k, v, is_causal=True), q, k, v [B, H, N, Dh]
     floor  (values * 2.0).sum().backward(): one elementwise pass over the values forward and one
            backward (the memory-bound floor for anything that reads the values and writes their grad)
   Reported: median seconds, speedup = sdpa / aaren, floor ratio = aaren / floor, parallel / aaren. SDPA
   is skipped at an
   N above 3000 whose cost, extrapolated quadratically from the previous N, exceeds a budget (reason
   recorded).
2. Backbones: AarenBackbone vs TransformerBackbone (KV cache, no window), eval mode, no_grad. The state
   after t tokens comes from one forward call over t random tokens; then single-token steps are timed,
   each continuing from that same state (so the cache stays at t). Reported: median step latency, the
   state's bytes, and ratios to the smallest t.
3. Packed rows: aaren_scan forward + backward on the scan's inputs with `resets` (rows packed with
   episodes whose starts are drawn with probability 1 / packed_mean_episode per token) against the same
   call without resets, at every scan N. Reported: median seconds and packed_ratio = packed / unsegmented.

The three methods of a scan case (and all (model, t) pairs of one batch size) are timed round-robin
after one warm-up call each, so a slow spell of the machine hits all of them alike. torch's thread
count comes from the environment (OMP_NUM_THREADS, torch defaults) and is recorded.

The packed and unsegmented calls of one N are timed round-robin the same way.

Writes aaren_core.json (machine, settings, raw times, ratios, goals) and aaren_core.png into --out:
the tracked result for --quick on a CPU, into <out>/variants/ for any other run (`benchmarks.common`).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm import tqdm

from aaren_rl import AarenBackbone, AarenState, KVCache, TransformerBackbone, aaren_scan
from aaren_rl.functional import auto_chunk_size

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for `benchmarks.common`
from agents.common.cli import exits_2_on_user_errors  # noqa: E402
from benchmarks.common import (  # noqa: E402
    Claim,
    add_output_arguments,
    load_average,
    machine_info,
    output_stem,
    ratio,
    sync,
    time_interleaved,
    write_json,
    write_png,
)

SCAN_GOAL_N = 3000
SPEEDUP_GOAL = 8.0  # sdpa / aaren at N = SCAN_GOAL_N, at least
FLOOR_GOAL = 5.0  # aaren / floor at N = SCAN_GOAL_N, at most
FLAT_GOAL = 1.1  # Aaren step latency at t = FLAT_T[1] over t = FLAT_T[0], at most
FLAT_T = (10, 10000)
BACKBONES = {"aaren": AarenBackbone, "transformer": TransformerBackbone}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes and repetition counts of one benchmark run."""

    scan_lengths: tuple[int, ...]
    tokens_seen: tuple[int, ...]
    steps: int  # timed single-token steps per (model, batch, t)
    sdpa_budget_s: float  # skip SDPA at N when its extrapolated warm-up + min_reps calls take longer
    sdpa_always_up_to: int = SCAN_GOAL_N  # ... but never at N up to this (the goal point is always measured)
    case_budget_s: float = 5.0  # timed seconds per scan method, used to choose the repetitions
    min_reps: int = 3
    max_reps: int = 20
    scan_batch: int = 64
    scan_heads: int = 1
    head_dim: int = 128
    step_batches: tuple[int, ...] = (1, 16)
    width: int = 128
    layers: int = 3
    heads: int = 1
    packed_mean_episode: int = 400  # mean episode length in the packed rows (near D4RL hopper-medium's)


QUICK = Settings(
    scan_lengths=(60, 600, 3000), tokens_seen=(10, 100, 1000, 10000), steps=20, sdpa_budget_s=60.0
)
FULL = Settings(
    scan_lengths=(60, 600, 3000, 10000), tokens_seen=(10, 100, 1000, 10000), steps=50, sdpa_budget_s=600.0
)
CLAIM = Claim("aaren_core", QUICK)  # the tracked result: `make bench`'s sizes on a CPU


def _leaf(gen: torch.Generator, device: str, *size: int) -> torch.Tensor:
    return torch.randn(*size, generator=gen).to(device).requires_grad_()


def _scan_shape(settings: Settings, n: int) -> tuple[int, int, int, int]:
    return settings.scan_batch, settings.scan_heads, n, settings.head_dim


def _aaren_fn(
    scores: torch.Tensor,
    values: torch.Tensor,
    resets: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> Callable[[], None]:
    """aaren_scan forward + out.sum().backward() on leaf inputs, their grads reset first."""

    def aaren() -> None:
        scores.grad = values.grad = None
        out, _ = aaren_scan(scores, values, resets=resets, chunk_size=chunk_size)
        out.sum().backward()

    return aaren


def _scan_fns(settings: Settings, n: int, device: str, with_sdpa: bool) -> dict[str, Callable[[], None]]:
    """The forward+backward closures of one scan case, on fresh random leaf tensors."""
    gen = torch.Generator().manual_seed(n)
    shape = _scan_shape(settings, n)
    scores, values = _leaf(gen, device, *shape[:3]), _leaf(gen, device, *shape)

    def floor() -> None:
        values.grad = None
        (values * 2.0).sum().backward()

    fns = {
        "aaren": _aaren_fn(scores, values),
        "parallel": _aaren_fn(scores, values, chunk_size=auto_chunk_size(n)),
        "floor": floor,
    }
    if with_sdpa:
        q, k, v = (_leaf(gen, device, *shape) for _ in range(3))

        def sdpa() -> None:
            q.grad = k.grad = v.grad = None
            F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

        fns["sdpa"] = sdpa
    return fns


def bench_scan(settings: Settings, device: str, progress: bool = False) -> dict:
    """Scan forward+backward times of aaren / sdpa / floor for every N in settings.scan_lengths."""
    cases = []
    last_sdpa: tuple[int, float] | None = None  # (N, median seconds) of the last SDPA measured
    for n in tqdm(settings.scan_lengths, desc="scan", disable=not progress):
        skip_reason = None
        if last_sdpa is not None and n > settings.sdpa_always_up_to:
            est = last_sdpa[1] * (n / last_sdpa[0]) ** 2 * (1 + settings.min_reps)
            if est > settings.sdpa_budget_s:
                skip_reason = (
                    f"estimated {est:.0f} s for 1 warm-up + {settings.min_reps} calls "
                    f"(quadratic extrapolation from N={last_sdpa[0]}) exceeds the SDPA budget of "
                    f"{settings.sdpa_budget_s:.0f} s"
                )
        fns = _scan_fns(settings, n, device, with_sdpa=skip_reason is None)
        times = time_interleaved(
            fns, device, settings.min_reps, settings.max_reps, settings.case_budget_s, progress, f"N={n}"
        )
        del fns  # free this N's tensors before the next N allocates its own
        med = {name: statistics.median(ts) for name, ts in times.items()}
        best = {name: min(ts) for name, ts in times.items()}
        if "sdpa" in med:
            last_sdpa = (n, med["sdpa"])
        cases.append(
            {
                "n": n,
                "aaren_s": med["aaren"],
                "parallel_s": med["parallel"],
                "parallel_over_aaren": med["parallel"] / med["aaren"],
                "sdpa_s": med.get("sdpa"),
                "floor_s": med["floor"],
                "speedup_vs_sdpa": ratio(med.get("sdpa"), med["aaren"]),
                "floor_ratio": med["aaren"] / med["floor"],
                "speedup_vs_sdpa_from_min_times": ratio(best.get("sdpa"), best["aaren"]),
                "floor_ratio_from_min_times": best["aaren"] / best["floor"],
                "sdpa_skipped": skip_reason,
                "times_s": times,
            }
        )
    return {
        "shape": {"B": settings.scan_batch, "H": settings.scan_heads, "Dh": settings.head_dim},
        "definition": {
            "aaren": "aaren_scan(scores [B,H,N], values [B,H,N,Dh]); out.sum().backward()",
            "parallel": "the same with chunk_size=auto_chunk_size(N): the parallel form in torch operations",
            "sdpa": "F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward(), "
            "q,k,v [B,H,N,Dh]",
            "floor": "(values * 2.0).sum().backward(), values [B,H,N,Dh]",
            "timing": "median seconds per call after 1 warm-up (goals use medians; *_from_min_times use the "
            "fastest call, less sensitive to other processes); leaf grads reset to None before each call",
        },
        "cases": cases,
    }


def bench_packed(settings: Settings, device: str, progress: bool = False) -> dict:
    """Scan forward+backward with resets (packed rows) vs without, on the same inputs, for every scan N."""
    cases = []
    for n in tqdm(settings.scan_lengths, desc="packed", disable=not progress):
        gen = torch.Generator().manual_seed(n)
        shape = _scan_shape(settings, n)
        scores, values = _leaf(gen, device, *shape[:3]), _leaf(gen, device, *shape)
        resets = torch.rand(shape[0], n, generator=gen) < 1 / settings.packed_mean_episode
        resets[:, 0] = True
        fns = {
            "unsegmented": _aaren_fn(scores, values),
            "packed": _aaren_fn(scores, values, resets.to(device)),
        }
        times = time_interleaved(
            fns, device, settings.min_reps, settings.max_reps, settings.case_budget_s, progress, f"N={n}"
        )
        del fns
        med = {name: statistics.median(ts) for name, ts in times.items()}
        cases.append(
            {
                "n": n,
                "episodes_per_row": resets.sum(1).double().mean().item(),
                "unsegmented_s": med["unsegmented"],
                "packed_s": med["packed"],
                "packed_ratio": med["packed"] / med["unsegmented"],
                "packed_ratio_from_min_times": min(times["packed"]) / min(times["unsegmented"]),
                "times_s": times,
            }
        )
    return {
        "shape": {"B": settings.scan_batch, "H": settings.scan_heads, "Dh": settings.head_dim},
        "definition": {
            "unsegmented": "aaren_scan(scores, values); out.sum().backward(), as in the scan section",
            "packed": "aaren_scan(scores, values, resets=resets); out.sum().backward(), same inputs; "
            f"resets[:, 0] and each later token with probability 1/{settings.packed_mean_episode}",
            "timing": "median seconds per call after 1 warm-up, the two calls round-robin",
        },
        "cases": cases,
    }


def _states_after_tokens(
    models: dict[str, torch.nn.Module], settings: Settings, batch: int, device: str, gen: torch.Generator
) -> tuple[dict[tuple[str, int], AarenState | KVCache], dict[tuple[str, int], float], dict[str, Callable]]:
    """Per (model, t): the state after one forward call over t random tokens, that call's seconds, and
    a closure stepping one token on from that same state (named "model@t", for `time_interleaved`)."""
    x_step = torch.randn(batch, 1, settings.width, generator=gen).to(device)
    states, build_s, fns = {}, {}, {}
    for name, model in models.items():
        for t in settings.tokens_seen:
            x = torch.randn(batch, t, settings.width, generator=gen).to(device)
            sync(device)
            start = time.perf_counter()
            _, states[name, t] = model(x, None)
            sync(device)
            build_s[name, t] = time.perf_counter() - start
            fns[f"{name}@{t}"] = lambda m=model, x=x_step, s=states[name, t]: m(x, s)
    return states, build_s, fns


def bench_backbones(settings: Settings, device: str, progress: bool = False) -> dict:
    """Single-token step latency and state bytes after t tokens, Aaren vs Transformer KV cache."""
    models = {}
    for name, cls in BACKBONES.items():
        torch.manual_seed(0)
        models[name] = cls(settings.width, settings.layers, num_heads=settings.heads).to(device).eval()
    gen = torch.Generator().manual_seed(0)
    cases = []
    with torch.no_grad():
        for batch in tqdm(settings.step_batches, desc="backbone batches", disable=not progress):
            states, build_s, fns = _states_after_tokens(models, settings, batch, device, gen)
            times = time_interleaved(
                fns, device, settings.steps, settings.steps, 0.0, progress, f"steps batch={batch}"
            )
            for (name, t), state in states.items():
                step_times = times[f"{name}@{t}"]
                cases.append(
                    {
                        "model": name,
                        "batch": batch,
                        "tokens_seen": t,
                        "step_s": statistics.median(step_times),
                        "step_min_s": min(step_times),
                        "state_bytes": state.nbytes,
                        "build_s": build_s[name, t],
                        "times_s": step_times,
                    }
                )
    return {
        "config": {
            "width": settings.width,
            "layers": settings.layers,
            "heads": settings.heads,
            "transformer_window": None,
            "mode": "eval, torch.no_grad",
        },
        "definition": "state after t tokens = one forward call over t random tokens; step_s = median "
        "seconds of one single-token call continuing from that same state (1 warm-up call)",
        "cases": cases,
        "ratios": _backbone_ratios(cases),
    }


def _by_model_and_batch(cases: list[dict]) -> dict[tuple[str, int], list[dict]]:
    """Backbone cases grouped by (model, batch), each group sorted by tokens seen."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for c in sorted(cases, key=lambda c: c["tokens_seen"]):
        groups.setdefault((c["model"], c["batch"]), []).append(c)
    return groups


def _backbone_ratios(cases: list[dict]) -> list[dict]:
    """Latency and bytes at each t relative to the smallest t, per (model, batch)."""
    ratios = []
    for (model, batch), group in _by_model_and_batch(cases).items():
        base = group[0]
        for c in group:
            ratios.append(
                {
                    "model": model,
                    "batch": batch,
                    "tokens_seen": c["tokens_seen"],
                    "relative_to_tokens_seen": base["tokens_seen"],
                    "latency_ratio": c["step_s"] / base["step_s"],
                    "bytes_ratio": c["state_bytes"] / base["state_bytes"],
                }
            )
    return ratios


def _field(case: dict | None, key: str) -> float | None:
    return None if case is None else case[key]


def evaluate_goals(scan: dict, backbone: dict) -> dict:
    """Pass/fail of the goals from measured numbers; `pass` is None where a point was not measured."""
    at_goal_n = next((c for c in scan["cases"] if c["n"] == SCAN_GOAL_N), None)
    speedup, floor = _field(at_goal_n, "speedup_vs_sdpa"), _field(at_goal_n, "floor_ratio")
    goals = {
        "scan_speedup_vs_sdpa": {
            "at_n": SCAN_GOAL_N,
            "target": f">= {SPEEDUP_GOAL}",
            "value": speedup,
            "value_from_min_times": _field(at_goal_n, "speedup_vs_sdpa_from_min_times"),
            "pass": None if speedup is None else speedup >= SPEEDUP_GOAL,
        },
        "scan_floor_ratio": {
            "at_n": SCAN_GOAL_N,
            "target": f"<= {FLOOR_GOAL}",
            "value": floor,
            "value_from_min_times": _field(at_goal_n, "floor_ratio_from_min_times"),
            "pass": None if floor is None else floor <= FLOOR_GOAL,
        },
    }
    aaren = [c for c in backbone["cases"] if c["model"] == "aaren"]
    for batch in dict.fromkeys(c["batch"] for c in aaren):
        by_t = {c["tokens_seen"]: c for c in aaren if c["batch"] == batch}
        lo, hi = by_t.get(FLAT_T[0]), by_t.get(FLAT_T[1])
        flat = ratio(_field(hi, "step_s"), _field(lo, "step_s"))
        goals[f"aaren_step_flat_batch{batch}"] = {
            "tokens_seen": list(FLAT_T),
            "target": f"latency(t={FLAT_T[1]}) / latency(t={FLAT_T[0]}) <= {FLAT_GOAL}",
            "value": flat,
            "value_from_min_times": ratio(_field(hi, "step_min_s"), _field(lo, "step_min_s")),
            "pass": None if flat is None else flat <= FLAT_GOAL,
        }
        sizes = sorted({c["state_bytes"] for c in aaren if c["batch"] == batch})
        goals[f"aaren_state_bytes_constant_batch{batch}"] = {
            "target": "the same state bytes at every t",
            "value": sizes,
            "pass": len(sizes) == 1,
        }
    checked = [g["pass"] for g in goals.values() if g["pass"] is not None]
    goals["all_measured_pass"] = bool(checked) and all(checked)
    return goals


def plot(results: dict, path: Path) -> None:
    """Four panels: scan time vs N, packed / unsegmented scan time vs N, step latency and state bytes vs
    tokens seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_scan, ax_packed, ax_step, ax_mem) = plt.subplots(1, 4, figsize=(21, 4.8))
    scan = results["scan"]["cases"]
    for method, marker in (("aaren", "o"), ("parallel", "x"), ("sdpa", "s"), ("floor", "^")):
        pts = [(c["n"], c[f"{method}_s"]) for c in scan if c[f"{method}_s"] is not None]
        if pts:
            ax_scan.plot(*zip(*pts, strict=True), marker=marker, label=method)
    shape = results["scan"]["shape"]
    ax_scan.set(
        xscale="log",
        yscale="log",
        xlabel="sequence length N",
        ylabel="forward+backward time (s)",
        title=f"scan, B={shape['B']} H={shape['H']} Dh={shape['Dh']}",
    )
    _plot_packed(ax_packed, results)
    cases = results["backbone"]["cases"]
    colors = {"aaren": "tab:blue", "transformer": "tab:red"}
    for (model, batch), group in _by_model_and_batch(cases).items():
        ts = [c["tokens_seen"] for c in group]
        style = {"color": colors[model], "marker": "o", "linestyle": "-" if batch == 1 else "--"}
        label = f"{model}, batch {batch}"
        ax_step.plot(ts, [1e3 * c["step_s"] for c in group], label=label, **style)
        ax_mem.plot(ts, [c["state_bytes"] for c in group], label=label, **style)
    ax_step.set(
        xscale="log",
        yscale="log",
        xlabel="tokens seen",
        ylabel="single-token step (ms)",
        title="step latency",
    )
    ax_mem.set(xscale="log", yscale="log", xlabel="tokens seen", ylabel="state bytes", title="state memory")
    for ax in (ax_scan, ax_packed, ax_step, ax_mem):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    m = results["machine"]
    load = "" if m["load_average_at_start"] is None else f", load {m['load_average_at_start'][0]:.1f}"
    fig.suptitle(
        f"Aaren core — {m['cpu_model']}, {m['num_threads']} threads{load}, {m['device']}, {m['date']}"
    )
    fig.tight_layout()
    write_png(fig, path)
    plt.close(fig)


def _plot_packed(ax, results: dict) -> None:
    """Packed / unsegmented scan time against N, with the break-even line."""
    packed = results["packed"]["cases"]
    ax.plot([c["n"] for c in packed], [c["packed_ratio"] for c in packed], marker="o", label="packed")
    ax.axhline(1.0, color="gray", linestyle=":", label="unsegmented")
    ax.set(
        xscale="log",
        xlabel="sequence length N",
        ylabel="packed / unsegmented time",
        title=f"packed rows, mean episode {results['settings']['packed_mean_episode']}",
    )


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def format_table(results: dict) -> str:
    """A short human-readable summary of the results."""
    shape = results["scan"]["shape"]
    load = [results["machine"].get(k) for k in ("load_average_at_start", "load_average_at_end")]
    lines = [
        "1-min load average at start / end: "
        + " / ".join("-" if x is None else f"{x[0]:.1f}" for x in load)
        + f" on {results['machine']['cpu_count']} CPUs",
        f"Scan forward+backward, B={shape['B']} H={shape['H']} Dh={shape['Dh']}, median s "
        f"({results['machine']['num_threads']} threads, {results['machine']['device']})",
        f"{'N':>7} {'aaren':>9} {'parallel':>9} {'sdpa':>9} {'floor':>9} {'sdpa/aaren':>11} "
        f"{'aaren/floor':>12} {'parallel/aaren':>15}",
    ]
    for c in results["scan"]["cases"]:
        lines.append(
            f"{c['n']:>7} {c['aaren_s']:>9.4f} {c['parallel_s']:>9.4f} {_fmt(c['sdpa_s'], '9.4f'):>9} "
            f"{c['floor_s']:>9.4f} {_fmt(c['speedup_vs_sdpa'], '11.2f'):>11} {c['floor_ratio']:>12.2f} "
            f"{c['parallel_over_aaren']:>15.2f}"
        )
    lines += ["", "Packed rows (resets) vs unsegmented scan, forward+backward, median s"]
    lines.append(f"{'N':>7} {'episodes/row':>13} {'unsegmented':>12} {'packed':>9} {'ratio':>7}")
    for c in results["packed"]["cases"]:
        lines.append(
            f"{c['n']:>7} {c['episodes_per_row']:>13.1f} {c['unsegmented_s']:>12.4f} {c['packed_s']:>9.4f} "
            f"{c['packed_ratio']:>7.2f}"
        )
    cases = results["backbone"]["cases"]
    tokens = sorted({c["tokens_seen"] for c in cases})
    lines += ["", "Backbone single-token step: median ms / state bytes, by tokens seen"]
    lines.append(f"{'model':>12} {'batch':>5} " + " ".join(f"{'t=' + str(t):>20}" for t in tokens))
    for (model, batch), group in _by_model_and_batch(cases).items():
        by_t = {c["tokens_seen"]: c for c in group}
        cells = [f"{1e3 * by_t[t]['step_s']:.2f} / {by_t[t]['state_bytes']}" for t in tokens]
        lines.append(f"{model:>12} {batch:>5} " + " ".join(f"{cell:>20}" for cell in cells))
    lines += ["", "Goals"]
    for name, g in results["goals"].items():
        if isinstance(g, dict):
            verdict = {True: "PASS", False: "FAIL", None: "not measured"}[g["pass"]]
            value = g["value"] if isinstance(g["value"], list) else _fmt(g["value"], ".2f")
            if "value_from_min_times" in g:
                value = f"{value} (fastest calls: {_fmt(g['value_from_min_times'], '.2f')})"
            lines.append(f"  {name:<36} {verdict:<13} {value}  target {g['target']}")
    return "\n".join(lines)


def run(settings: Settings, device: str, out_dir: Path, progress: bool = False) -> dict:
    """Measure everything, write aaren_core.json and aaren_core.png into out_dir, return the results."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {"machine": machine_info(device), "settings": dataclasses.asdict(settings)}
    start = time.perf_counter()
    results["scan"] = bench_scan(settings, device, progress)
    results["packed"] = bench_packed(settings, device, progress)
    results["backbone"] = bench_backbones(settings, device, progress)
    results["goals"] = evaluate_goals(results["scan"], results["backbone"])
    results["total_wall_s"] = time.perf_counter() - start
    results["machine"]["load_average_at_end"] = load_average()
    write_json(out_dir / "aaren_core.json", results)
    plot(results, out_dir / "aaren_core.png")
    return results


@exits_2_on_user_errors
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0]
        + " Times aaren_scan forward+backward against causal scaled_dot_product_attention and an "
        "elementwise floor (B=64, H=1, Dh=128), the same scan on packed rows (with resets) against "
        "without, and the single-token step latency and state bytes of "
        "AarenBackbone vs TransformerBackbone after t tokens (3 layers, width 128, batch 1 and 16). "
        "Results are ratios measured side by side in one run; goals are recorded as pass/fail.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smaller run: scan N in {QUICK.scan_lengths}, "
        f"{QUICK.steps} timed steps; full: N in {FULL.scan_lengths}, {FULL.steps} steps",
    )
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where to run (cuda is synchronised around every timed call)",
    )
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available in this torch build / machine")
    settings = QUICK if args.quick else FULL
    stem = output_stem(CLAIM, settings, args.device, "aaren_core", args.out, args.allow_dirty)
    results = run(settings, args.device, stem.parent, progress=True)
    print(format_table(results))
    print(f"\nwrote {stem}.json and {stem}.png in {results['total_wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
