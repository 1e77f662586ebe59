"""Decision agents behind Stable-Baselines3's policy protocol.

SB3's `predict(observation, state, episode_start, deterministic) -> (actions, state)` never sees
rewards, but a decision agent lowers its return-to-go by every reward it earns. So the reward
travels with the observation: `RewardToPolicyVecEnv` appends to each env's observation the reward
its previous step earned (0 after a reset), and `DecisionPolicy.predict` splits it off again. The
wrapper lives in the main process around any SB3 VecEnv (DummyVecEnv, SubprocVecEnv), so
`evaluate_policy` and `EvalCallback` work unchanged:

    from stable_baselines3.common.evaluation import evaluate_policy
    policy = DecisionPolicy.load(run_dir)                     # or a .zip written by policy.save
    env = RewardToPolicyVecEnv(make_vec_env("Hopper-v5", n_envs=4, seed=0))
    mean, std = evaluate_policy(policy, env, n_eval_episodes=8)

The state passed in and out is the agent's `AgentState` (batched over envs); rows where
`episode_start` is true start a new episode (return-to-go = target, empty memory).
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn

from agents.decision.agent import AgentState, DecisionAgent
from agents.decision.checkpoint import CheckpointError, InMemory, load_model, model_files
from agents.decision.model import DecisionModel
from agents.decision.run_dir import load_agent
from envs.files import atomic_path


class RewardToPolicyVecEnv(VecEnvWrapper):
    """Appends the reward of each env's previous step to its observation (0 after a reset).

    The observation space grows by one entry; `infos[i]["terminal_observation"]` gets the same entry.
    """

    def __init__(self, venv: VecEnv):
        box = venv.observation_space
        if not isinstance(box, spaces.Box) or len(box.shape) != 1:
            raise ValueError(f"RewardToPolicyVecEnv needs a flat Box observation space, got {box}")
        low = np.append(box.low, -np.inf).astype(box.dtype)
        high = np.append(box.high, np.inf).astype(box.dtype)
        super().__init__(venv, observation_space=spaces.Box(low, high, dtype=box.dtype))

    def _with_reward(self, obs: np.ndarray, rewards: np.ndarray) -> np.ndarray:
        return np.concatenate([obs, rewards.reshape(-1, 1)], axis=-1).astype(self.observation_space.dtype)

    def reset(self) -> VecEnvObs:
        return self._with_reward(self.venv.reset(), np.zeros(self.num_envs))

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, dones, infos = self.venv.step_wait()
        for i in np.flatnonzero(dones):
            if "terminal_observation" in infos[i]:
                infos[i]["terminal_observation"] = np.append(infos[i]["terminal_observation"], rewards[i])
        return self._with_reward(obs, rewards), rewards, dones, infos


#: The members of a DecisionPolicy zip: the weights and model.json (config, target return, acting, digests).
ZIP_MEMBERS = ("model.safetensors", "model.json")

#: What to do about a damaged DecisionPolicy zip.
SAVE_AGAIN = (
    "save the policy again (DecisionPolicy.load(run_dir).save(path) from the run directory it came from), "
    "or use an intact copy of the file"
)


def _read_zip(path: Path) -> dict[str, bytes]:
    """The members of a DecisionPolicy zip as name -> bytes, checked against the zip's own CRCs; a
    CheckpointError naming the file (and the member) when it is no such zip or a damaged one."""
    not_a_policy = (
        f"{path} is not a DecisionPolicy file (a zip holding {' and '.join(ZIP_MEMBERS)}), or a damaged one",
        f"pass a file written by DecisionPolicy.save or a run directory of scripts/train_offline.py; {SAVE_AGAIN}",
    )
    if not zipfile.is_zipfile(path):  # also a missing file, and a zip cut short (its directory is last)
        raise CheckpointError(*not_a_policy)
    files, reading = {}, "the zip's directory"
    try:  # a damaged zip raises all kinds of errors (CRC, EOF, zlib, flags, bad offsets)
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            for reading in (name for name in ZIP_MEMBERS if name in names):
                files[reading] = archive.read(reading)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: cannot read {reading} ({type(exc).__name__}: {exc}): the file is damaged", SAVE_AGAIN
        ) from exc
    missing = [name for name in ZIP_MEMBERS if name not in files]
    if missing:
        raise CheckpointError(f"{not_a_policy[0]}: the zip lacks {' and '.join(missing)}", not_a_policy[1])
    return files


def _load_zip(path: Path, device: str | torch.device) -> tuple[DecisionModel, dict[str, Any]]:
    """The model and model.json of a DecisionPolicy zip, verified like a checkpoint (`agents.decision.checkpoint`:
    the digests model.json records); a CheckpointError names the zip and the member at fault."""
    files = _read_zip(path)
    try:
        model, _ = load_model(InMemory(path, files), device)
    except CheckpointError as exc:  # a zip is not one of a run's checkpoints: its own fix
        raise CheckpointError(exc.problem, SAVE_AGAIN) from None
    return model, json.loads(files["model.json"])  # verified by load_model


class DecisionPolicy:
    """A `DecisionAgent` as an SB3 policy (PolicyPredictor); feed it observations from
    `RewardToPolicyVecEnv`. The agent acts as it was built (Box actions deterministically, discrete ones
    greedily or, with `DecisionAgent(..., sample=True)`, sampled), so `deterministic` is ignored."""

    def __init__(self, agent: DecisionAgent):
        self.agent = agent

    def predict(
        self,
        observation: np.ndarray,
        state: AgentState | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, AgentState]:
        """Actions for observations [n, obs_dim + 1] (last entry: the previous step's reward) or one
        unbatched observation [obs_dim + 1], and the next state. The actions are as `DecisionAgent.act`
        returns them (Discrete: int64 [n], or one int64 for an unbatched observation)."""
        obs = np.asarray(observation, dtype=np.float64)
        single = obs.ndim == 1
        obs = obs.reshape(1, -1) if single else obs
        start = None if episode_start is None else np.asarray(episode_start, dtype=bool).reshape(len(obs))
        actions, state = self.agent.act(obs[:, :-1], state, start, obs[:, -1])
        return (actions[0] if single else actions), state

    def save(self, path: str | os.PathLike) -> Path:
        """One zip (written atomically): model.safetensors + model.json (config, target return, acting)."""
        path = Path(path)
        files = model_files(
            self.agent.model, 0, target_return=self.agent.target_return, acting=self.agent.acting
        )
        with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w") as archive:
            for name, data in files.items():
                archive.writestr(name, data)
        return path

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        target_return: float | None = None,
        device: str | torch.device = "cpu",
        acting: str | None = None,
    ) -> DecisionPolicy:
        """From a zip written by `save` or a training run directory (its latest checkpoint);
        `target_return` and `acting` default to the saved ones (the run's first target)."""
        path = Path(path)
        if path.is_dir():
            return cls(load_agent(path, target_return, str(device), acting))
        model, meta = _load_zip(path, device)
        if target_return is None:
            target_return = meta.get("target_return")
            if target_return is None:
                raise CheckpointError(f"{path}/model.json records no target_return", "pass target_return")
        saved = meta.get("acting", meta.get("mode"))  # "mode": zips saved before the key was renamed
        return cls(DecisionAgent(model, target_return, acting=acting or saved))

    @classmethod
    def from_hub(
        cls,
        repo_id: str,
        target_return: float | None = None,
        device: str | torch.device = "cpu",
        acting: str | None = None,
        revision: str | None = None,
    ) -> DecisionPolicy:
        """From Hub repository `repo_id` (user/name) written by aaren-rl push: its policy zip, downloaded
        into the cache and verified (`agents.hub`), then as `load`."""
        from agents.hub import hub_policy_file

        return cls.load(hub_policy_file(repo_id, "decision", revision), target_return, device, acting)
