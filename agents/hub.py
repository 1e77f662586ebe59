"""Share trained agents on the Hugging Face Hub, safely: `aaren-rl push RUN_DIR --repo user/name`, and
loading by repository id.

`push` uploads, from a finished run, only files that load without running code:

    policy.zip          the agent: a DecisionPolicy zip (model.safetensors + model.json, `agents.decision.sb3`)
                        or an AarenPPO export (policy.safetensors + policy.json, `agents.ppo.export`)
    config.yaml         the run's config
    eval.json           its final evaluation
    dataset_stats.json  decision agents: env, reference scores and targets (what evaluation reads)
    curve.png           decision agents: the learning curve
    README.md           the model card: task, dataset, backbone, scores per target, how to load it
    aaren-rl.json       the manifest: format, kind, training step, each other file's sha256 and size,
                        and the digest of its own content

Loading by repository id (`DecisionPolicy.from_hub`, `load_exported_policy("user/name")`, `aaren-rl
evaluate --hub`) downloads into the cache, $AAREN_RL_CACHE/hub (huggingface_hub's layout, pinned to the
commit the manifest came from), checks each file against the manifest before a loader opens it, and
parses only JSON, YAML and safetensors. With $AAREN_RL_OFFLINE=1 only the cache is read. The Hub is
$HF_ENDPOINT (default huggingface.co); pushing needs a token that may write there (`hf auth login`, or
$HF_TOKEN). Whatever a user can fix (downloads off, no such repository, one that is not an agent's, a
damaged download, no permission) is one `HubError` naming the repository and the fix.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agents.common.digests import content_digest, file_record, record_problem
from envs.download import OFFLINE_VAR, offline_mode
from envs.experts import cache_dir, hub_endpoint

MANIFEST = "aaren-rl.json"
FORMAT = "aaren-rl-agent/1"
POLICY = "policy.zip"
STATS = "dataset_stats.json"
CARD = "README.md"
#: What each kind of repository holds, and the Python call that loads it.
KINDS = {
    "decision": ("a decision agent (aaren-rl train)", "agents.DecisionPolicy.from_hub"),
    "ppo": ("an AarenPPO policy (aaren-rl ppo)", "agents.ppo.load_exported_policy"),
}
#: A Hub repository id, user/name (huggingface_hub checks the finer rules).
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
PUSH_FIX = (
    "log in with a token that may write to it (hf auth login, or set $HF_TOKEN), and check $HF_ENDPOINT"
)


class HubError(ValueError):
    """A Hub transfer that cannot be done as asked; the message names the repository and the fix."""


def hub_cache() -> Path:
    """Where agents downloaded from the Hub are kept: $AAREN_RL_CACHE/hub."""
    return cache_dir() / "hub"


def is_repo_id(text: str) -> bool:
    """Whether `text` has the shape of a Hub repository id (user/name)."""
    return REPO_ID.fullmatch(text) is not None


# --------------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class HubAgent:
    """Files of an agent's repository, downloaded and verified: the manifest, the commit it came from,
    and local paths by file name."""

    repo_id: str
    revision: str
    manifest: dict[str, Any]
    files: dict[str, Path]


def download_agent(
    repo_id: str, names: Sequence[str] = (POLICY,), kind: str | None = None, revision: str | None = None
) -> HubAgent:
    """The files `names` of Hub repository `repo_id` (of `kind` when given), downloaded into the cache
    (or found there) and checked against the repository's manifest; a HubError otherwise."""
    manifest_path = _download(repo_id, MANIFEST, revision)
    manifest = _read_manifest(repo_id, manifest_path)
    if kind is not None and manifest["kind"] != kind:
        what, loader = KINDS[manifest["kind"]]
        raise HubError(f"{repo_id} holds {what}, not {KINDS[kind][0]}. Fix: load it with {loader}")
    commit = manifest_path.parent.name  # the cache keeps each commit's files in snapshots/<commit>/
    files = {}
    for name in names:
        record = manifest["files"].get(name)
        if record is None:
            raise HubError(f"{repo_id}: its {MANIFEST} lists no {name}. Fix: push the agent again")
        path = _download(repo_id, name, commit)
        problem = record_problem(path.read_bytes(), record, f"{repo_id}/{MANIFEST}")
        if problem is not None:
            _evict(path)
            raise HubError(
                f"{repo_id}/{name} as downloaded is {problem}; it was removed from the cache. Fix: run again, "
                "or push the agent again if it stays damaged"
            )
        files[name] = path
    return HubAgent(repo_id, commit, manifest, files)


def hub_policy_file(repo_id: str, kind: str, revision: str | None = None) -> Path:
    """The verified policy.zip of the agent of `kind` in Hub repository `repo_id`."""
    return download_agent(repo_id, (POLICY,), kind, revision).files[POLICY]


def local_or_hub(spec: str | os.PathLike, kind: str) -> Path:
    """The policy file `spec` names: the local path when it exists or is no repository id (the loader
    then reports a missing file), else the verified policy.zip of that Hub repository."""
    path = Path(spec).expanduser()
    if path.exists() or not is_repo_id(str(spec)):
        return path
    return hub_policy_file(str(spec), kind)


def _offline_var() -> str | None:
    """The environment variable that turns downloads off, if one does."""
    from huggingface_hub import constants

    if offline_mode():
        return f"${OFFLINE_VAR}"
    return "$HF_HUB_OFFLINE" if constants.HF_HUB_OFFLINE else None


def _download(repo_id: str, name: str, revision: str | None) -> Path:
    """File `name` of `repo_id` in the cache, downloaded unless downloads are off; a HubError saying
    why it cannot be had."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint, offline = hub_endpoint(), _offline_var()
    try:
        fetched = hf_hub_download(
            repo_id,
            name,
            revision=revision,
            cache_dir=hub_cache(),
            endpoint=endpoint,
            local_files_only=offline is not None,
        )
    except HFValidationError as exc:
        raise HubError(f"{repo_id!r} is not a Hub repository id ({exc}). Fix: give it as user/name") from None
    except LocalEntryNotFoundError as exc:
        if offline is not None:
            raise HubError(
                f"{repo_id}: {name} is not in the cache ({hub_cache()}) and downloads are off ({offline} is "
                f"set). Fix: unset {offline} to download it once; later loads read the cache"
            ) from None
        raise HubError(
            f"{repo_id}: cannot download {name} from {endpoint} ({_reason(exc)}), and it is not in the cache "
            f"({hub_cache()}). Fix: check the network connection and $HF_ENDPOINT, and for a private or "
            "gated repository your access to it (hf auth login, or set $HF_TOKEN)"
        ) from None
    except GatedRepoError:
        raise HubError(
            f"{repo_id} on {endpoint} is gated. Fix: request access on its page, then log in (hf auth login)"
        ) from None
    except RepositoryNotFoundError:
        raise HubError(
            f"there is no repository {repo_id} on {endpoint} (or it is private). Fix: check the name; for a "
            "private repository log in (hf auth login, or set $HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise HubError(
            f"{repo_id} has no revision {revision!r}. Fix: give one of its branches, tags or commits"
        ) from None
    except EntryNotFoundError:
        if name == MANIFEST:
            raise HubError(
                f"{repo_id} is not an aaren-rl agent: it has no {MANIFEST}. Fix: pass a repository written "
                "by aaren-rl push"
            ) from None
        raise HubError(
            f"{repo_id} lacks {name}, which its {MANIFEST} lists. Fix: push the agent again"
        ) from None
    except HfHubHTTPError as exc:
        raise HubError(
            f"{repo_id}: {endpoint} refused to send {name} ({_reason(exc)}). Fix: check $HF_ENDPOINT, and for "
            "a private or gated repository your access to it (hf auth login, or set $HF_TOKEN)"
        ) from None
    return Path(fetched)


def _reason(exc: BaseException) -> str:
    """The first line of what went wrong underneath `exc` (huggingface_hub wraps the HTTP error)."""
    cause = exc.__cause__ or exc.__context__ or exc
    return f"{type(cause).__name__}: {str(cause).strip().splitlines()[0] if str(cause).strip() else ''}"


def _read_manifest(repo_id: str, path: Path) -> dict[str, Any]:
    """The repository's manifest, checked against its own digest; a HubError when it is damaged."""
    try:
        manifest = json.loads(path.read_bytes())
        problem = _manifest_problem(manifest)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        problem = f"is not JSON ({exc})"
    if problem is not None:
        _evict(path)
        raise HubError(f"{repo_id}/{MANIFEST} {problem}. Fix: push the agent again with aaren-rl push")
    return manifest


def _manifest_problem(manifest: Any) -> str | None:
    """What keeps a parsed manifest from being used (None: nothing)."""
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return f"is not of format {FORMAT!r}"
    if manifest.get("digest") != content_digest(manifest):
        return "was changed after it was written (its content does not match its sha256 digest)"
    if manifest.get("kind") not in KINDS or not isinstance(manifest.get("files"), dict):
        return "lacks the kind of agent or the list of files"
    return None


def _evict(path: Path) -> None:
    """Remove a cached file (the snapshot's link and the blob it points at), so a retry downloads it."""
    blob = path.resolve()
    path.unlink(missing_ok=True)
    blob.unlink(missing_ok=True)


def evaluate_hub(
    repo_id: str, *, revision: str | None = None, out_dir: str | os.PathLike | None = None, **settings: Any
) -> dict[str, Any]:
    """`agents.decision.evaluation.evaluate_model` on the decision agent of Hub repository `repo_id`,
    at its run's targets unless `targets` are given; the report goes to `out_dir` (default
    ./eval-<user>--<name>)."""
    from agents.decision.evaluation import evaluate_model
    from agents.decision.run_dir import read_run_info
    from agents.decision.sb3 import DecisionPolicy

    agent = download_agent(repo_id, (POLICY, STATS), "decision", revision)
    stats = agent.files[STATS]
    info = read_run_info(stats.parent)
    model = DecisionPolicy.load(agent.files[POLICY]).agent.model
    out = Path(out_dir) if out_dir is not None else Path(f"eval-{repo_id.replace('/', '--')}")
    source = {"hub": repo_id, "revision": agent.revision, "step": agent.manifest["step"]}
    return evaluate_model(model, info, stats, out, source, **settings)


# --------------------------------------------------------------------------------------------------
# Pushing


def push(
    run_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    message: str | None = None,
    token: str | None = None,
) -> str:
    """Upload the agent of the finished run in `run_dir` (from aaren-rl train or aaren-rl ppo) to Hub
    repository `repo_id`, creating it if needed: the files of the module docstring and nothing else.
    Returns the commit's URL."""
    if offline_mode():
        raise HubError(
            f"cannot push to {repo_id}: network transfers are off (${OFFLINE_VAR} is set). Fix: unset it"
        )
    if not is_repo_id(repo_id):
        raise HubError(
            f"{repo_id!r} is not a Hub repository id. Fix: give user/name (your Hub user or organisation, "
            "and a name for the agent)"
        )
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    endpoint = hub_endpoint()
    with tempfile.TemporaryDirectory(prefix="aaren-rl-push-") as tmp:
        folder = Path(tmp)
        stage(run_dir, folder, repo_id)
        api = HfApi(endpoint=endpoint, token=token)
        operations = [CommitOperationAdd(path.name, path) for path in sorted(folder.iterdir())]
        try:
            api.create_repo(repo_id, private=private, exist_ok=True)
            commit = api.create_commit(
                repo_id, operations, commit_message=message or f"aaren-rl push {Path(run_dir).name}"
            )
        except HfHubHTTPError as exc:
            raise HubError(
                f"{endpoint} refused to create or update {repo_id} ({exc}). Fix: {PUSH_FIX}"
            ) from None
        except Exception as exc:
            if not _is_transport_error(exc, HfHubHTTPError):
                raise
            raise HubError(f"cannot reach {endpoint} to push {repo_id} ({exc}). Fix: {PUSH_FIX}") from None
    return commit.commit_url


def _is_transport_error(exc: Exception, http_error: type[Exception]) -> bool:
    """Whether `exc` is a connection or protocol error of huggingface_hub's HTTP client (httpx or httpx2:
    their HTTPError is a base of huggingface_hub's HfHubHTTPError)."""
    bases = [cls for cls in http_error.__mro__ if cls.__name__ == "HTTPError"]
    return isinstance(exc, (OSError, *bases))


def stage(run_dir: str | os.PathLike, folder: Path, repo_id: str) -> dict[str, Any]:
    """Write into `folder` what `push` uploads for the run in `run_dir` (see the module docstring);
    returns the manifest. A HubError for a folder that holds no finished run."""
    run = Path(run_dir)
    if (run / STATS).is_file():
        kind, step, card = "decision", *_stage_decision(run, folder, repo_id)
    elif (run / POLICY).is_file():
        kind, step, card = "ppo", *_stage_ppo(run, folder, repo_id)
    else:
        raise HubError(
            f"{run} holds no trained agent: neither {STATS} (aaren-rl train) nor {POLICY} (aaren-rl ppo). "
            "Fix: pass the run directory of a finished run"
        )
    (folder / CARD).write_text(card, encoding="utf-8")
    files = {path.name: file_record(path.read_bytes()) for path in sorted(folder.iterdir())}
    manifest = {"format": FORMAT, "kind": kind, "step": step, "files": files}
    manifest["digest"] = content_digest(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def _copy(source: Path, folder: Path, name: str, fix: str) -> Path:
    """Copy run file `source` into `folder` as `name`; a HubError (with `fix`) when it is missing."""
    if not source.is_file():
        raise HubError(f"{source} is missing, so the run cannot be pushed. Fix: {fix}")
    return Path(shutil.copyfile(source, folder / name))


def _stage_decision(run: Path, folder: Path, repo_id: str) -> tuple[int, str]:
    """A decision run's files, verified (the policy from the checkpoint its evaluation scored); (step, card)."""
    from agents.decision.checkpoint import read_meta
    from agents.decision.run_dir import RunDir
    from agents.decision.sb3 import DecisionPolicy

    paths = RunDir(run)
    evaluate = f"evaluate it first: aaren-rl evaluate --run {run}"
    report = json.loads(_copy(paths.eval / "eval.json", folder, "eval.json", evaluate).read_text())
    step = read_meta(paths.latest_checkpoint())["step"]
    if report.get("step") != step:
        raise HubError(
            f"{paths.eval / 'eval.json'} scores step {report.get('step')}, but the run's latest checkpoint "
            f"is step {step}. Fix: {evaluate}"
        )
    DecisionPolicy.load(run).save(folder / POLICY)
    stats = json.loads(_copy(paths.dataset_stats, folder, STATS, "train the run again").read_text())
    config = yaml.safe_load(_copy(paths.config, folder, "config.yaml", "train the run again").read_text())
    if paths.curve.is_file():
        shutil.copyfile(paths.curve, folder / "curve.png")
    return step, decision_card(repo_id, config, stats, report)


def _stage_ppo(run: Path, folder: Path, repo_id: str) -> tuple[int, str]:
    """An AarenPPO run's export (checked to load), config and evaluation; (env steps, card)."""
    from agents.ppo.export import load_exported_policy

    finish = f"the run in {run} did not finish: train it again (aaren-rl ppo)"
    load_exported_policy(_copy(run / POLICY, folder, POLICY, finish))
    result = json.loads(_copy(run / "eval.json", folder, "eval.json", finish).read_text())
    config = yaml.safe_load(_copy(run / "config.yaml", folder, "config.yaml", finish).read_text())
    return int(result["env_steps"]), ppo_card(repo_id, config, result)


# --------------------------------------------------------------------------------------------------
# Model cards


def _front_matter(tags: list[str]) -> str:
    return yaml.safe_dump({"library_name": "aaren-rl", "tags": tags}, sort_keys=False)


def decision_card(repo_id: str, config: dict[str, Any], stats: dict[str, Any], report: dict[str, Any]) -> str:
    """The model card of a decision agent: task, dataset, backbone, scores per target, how to load it."""
    model, train = config["model"], config["train"]
    dataset = Path(str(config["data"]["dataset"])).name
    score = stats.get("score_mean")
    rows = "\n".join(
        f"| {r['target_return']:g} | {r['return_mean']:.1f} ± {r['return_std']:.1f} | "
        + (f"{r['score_mean']:.1f} ± {r['score_std']:.1f}" if r.get("score_mean") is not None else "n/a")
        + f" | {r['length_mean']:.0f} | {r['episodes']} |"
        for r in report["results"]
    )
    return f"""---
{_front_matter(["reinforcement-learning", "offline-reinforcement-learning", "decision-transformer", "aaren", stats["env"]])}---

# {repo_id}: a decision agent on {stats["env"]}

An offline decision agent (Decision-Transformer style: actions from return-to-go, state and action
tokens) with a **{model["backbone"]}** backbone, trained with [aaren-rl](https://pypi.org/project/aaren-rl/).

| | |
|---|---|
| task | {stats["env"]} |
| dataset | {dataset}: {stats["num_episodes"]} episodes, {stats["num_transitions"]} transitions, average return {stats["return_mean"]:.1f}{f" (D4RL-normalised score {score:.1f})" if score is not None else ""} |
| backbone | {model["backbone"]}: {model["num_layers"]} layers, width {model["embed_dim"]}, {model["num_heads"]} head(s) |
| training | {report["step"]} gradient steps of {train["batch_steps"]} timesteps, seed {train["seed"]} |
| acting | {report["acting"]} |

## Scores

Live evaluation after training (`eval.json`), per target return:

| target return | return | D4RL-normalised score | episode length | episodes |
|---|---|---|---|---|
{rows}

## Use it

```bash
pip install aaren-rl
aaren-rl evaluate --hub {repo_id}
```

```python
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from agents import DecisionPolicy, RewardToPolicyVecEnv

policy = DecisionPolicy.from_hub("{repo_id}")  # downloaded, checked against aaren-rl.json; no pickles
env = RewardToPolicyVecEnv(make_vec_env("{stats["env"]}", n_envs=4, seed=0))  # hands predict the rewards
mean, std = evaluate_policy(policy, env, n_eval_episodes=8)
```

Files: `policy.zip` (model.safetensors + model.json), `config.yaml` (the training config),
`dataset_stats.json`, `eval.json`, `curve.png` (learning curve), `aaren-rl.json` (sha256 of each file).
"""


def ppo_card(repo_id: str, config: dict[str, Any], result: dict[str, Any]) -> str:
    """The model card of an AarenPPO policy: task, settings, final return, how to load it."""
    policy = config.get("policy", {})
    mmer = result.get("mmer")
    return f"""---
{_front_matter(["reinforcement-learning", "ppo", "aaren", "stable-baselines3", config["task"]])}---

# {repo_id}: AarenPPO on {config["task"]}

PPO whose actor and critic carry Aaren memory (attention as an RNN), trained with
[aaren-rl](https://pypi.org/project/aaren-rl/) in Stable-Baselines3.

| | |
|---|---|
| task | {config["task"]} |
| training | {result["env_steps"]} env steps, seed {config["seed"]} |
| memory | {policy.get("num_layers", "?")} layers, width {policy.get("embed_dim", "?")}, {policy.get("num_heads", "?")} head(s) |
| final return | {result["return_mean"]:.3f} ± {result["return_std"]:.3f} over {result["episodes"]} deterministic episodes |
| MMER | {"n/a" if mmer is None else f"{mmer:.3f}"} |

## Use it

```python
from agents.ppo import load_exported_policy

policy = load_exported_policy("{repo_id}")  # downloaded, checked against aaren-rl.json; no pickles
actions, state = policy.predict(observations, state, episode_start, deterministic=True)
```

Files: `policy.zip` (policy.safetensors + policy.json), `config.yaml`, `eval.json`, `aaren-rl.json`
(sha256 of each file).
"""
