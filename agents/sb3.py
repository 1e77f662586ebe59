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
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.vec_env import VecEnv, VecEnvWrapper
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs, VecEnvStepReturn

from agents.checkpoint import load_model, model_files
from agents.policy import AgentState, DecisionAgent
from agents.run_dir import load_policy
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


def _zip_names(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as archive:
        return archive.namelist()


class DecisionPolicy:
    """A `DecisionAgent` as an SB3 policy (PolicyPredictor); feed it observations from
    `RewardToPolicyVecEnv`. The agent acts deterministically, so `deterministic` is ignored."""

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
        unbatched observation [obs_dim + 1], and the next state."""
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
            return cls(load_policy(path, target_return, str(device), acting))
        members = ["model.safetensors", "model.json"]
        if not zipfile.is_zipfile(path) or not set(members) <= set(_zip_names(path)):
            raise ValueError(
                f"{path} is not a DecisionPolicy file (a zip holding {' and '.join(members)}). Fix: pass a file "
                "written by DecisionPolicy.save or a run directory of scripts/train_offline.py."
            )
        with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(path) as archive:
            archive.extractall(tmp, members=members)
            model, _ = load_model(tmp, device)
            meta = json.loads(Path(tmp, "model.json").read_text())
        target = meta["target_return"] if target_return is None else target_return
        saved = meta.get("acting", meta.get("mode"))  # "mode": zips saved before the key was renamed
        return cls(DecisionAgent(model, target, acting=acting or saved))
