#!/usr/bin/env bash
# One prepared check of a GPU machine, meant to finish in under 8 minutes:
#   1. the CUDA tests (the scan on cuda against cpu, plain and segmented);
#   2. a few training steps on cuda (train_offline on a tiny random-action dataset collected here), for
#      Aaren and for the baselines on whole episodes (the LSTM on cuDNN, the Transformer);
#   3. acting on cuda: the trained agents and AarenPPO, folded against eager;
#   4. bench_aaren and bench_agents (quick) with --device cuda.
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]   (default $OUT, else gpu_check_out); everything is
# written under OUT_DIR, with each stage's log and wall-clock in OUT_DIR/summary.txt.
# DEVICE=cpu runs the same stages on the CPU (a dry run of the script; the CUDA tests are skipped).
set -euo pipefail

OUT_DIR="$(mkdir -p "${1:-${OUT:-gpu_check_out}}" && cd "${1:-${OUT:-gpu_check_out}}" && pwd)"
DEVICE="${DEVICE:-cuda}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
cd "$REPO"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
SUMMARY="$OUT_DIR/summary.txt"
: >"$SUMMARY"

stage() {  # stage NAME TIMEOUT_S COMMAND...: run with a time limit, log to OUT_DIR/NAME.log
  local name="$1" limit="$2" start
  shift 2
  start=$(date +%s)
  echo "== $name" | tee -a "$SUMMARY"
  timeout "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1 || {
    echo "FAILED ($?) after $(($(date +%s) - start)) s: see $OUT_DIR/$name.log" | tee -a "$SUMMARY"
    tail -20 "$OUT_DIR/$name.log"
    exit 1
  }
  echo "ok in $(($(date +%s) - start)) s" | tee -a "$SUMMARY"
}

stage device 60 "$PY" -c "
import torch
print('torch', torch.__version__, 'cuda build', torch.version.cuda)
if '$DEVICE' == 'cuda':
    assert torch.cuda.is_available(), 'no CUDA device visible to torch'
    print(torch.cuda.get_device_name(0))
"
if [ "$DEVICE" = cuda ]; then
  stage cuda_tests 120 "$PY" -m pytest -q -rs \
    tests/test_core_scan.py::test_cuda_matches_cpu tests/test_core_segmented_scan.py::test_cuda_matches_cpu
  if grep -q SKIPPED "$OUT_DIR/cuda_tests.log"; then
    echo "FAILED: CUDA tests were skipped" | tee -a "$SUMMARY"
    exit 1
  fi
fi

stage collect 120 "$PY" scripts/collect_dataset.py hopper-random-v2 --steps 3000 --num-envs 2 \
  --out "$OUT_DIR/data/hopper_random.hdf5" --overwrite --no-progress
rm -rf "$OUT_DIR/runs/gpu_check"  # a rerun into the same folder trains afresh
stage train 180 "$PY" scripts/train_offline.py --config configs/quickstart.yaml --no-progress --set \
  data.dataset="$OUT_DIR/data/hopper_random.hdf5" output_dir="$OUT_DIR/runs" name=gpu_check \
  train.device="$DEVICE" train.steps=30 train.log_every=10 train.checkpoint_every=30 train.eval_every=0
for backbone in lstm transformer; do
  rm -rf "$OUT_DIR/runs/gpu_check_$backbone"
  stage "train_$backbone" 180 "$PY" scripts/train_offline.py --config configs/quickstart.yaml --no-progress \
    --set data.dataset="$OUT_DIR/data/hopper_random.hdf5" output_dir="$OUT_DIR/runs" name="gpu_check_$backbone" \
    model.backbone="$backbone" train.batching=episodes train.device="$DEVICE" train.steps=10 \
    train.log_every=10 train.checkpoint_every=10 train.eval_every=0
done
stage acting 120 "$PY" - "$DEVICE" "$OUT_DIR"/runs/gpu_check{,_lstm,_transformer} <<'EOF'
"""Acting on the device: folded equals eager for the trained agents and for AarenPPO."""
import sys

import numpy as np
import torch
from stable_baselines3.common.env_util import make_vec_env

from agents.decision.agent import DecisionAgent
from agents.ppo.algorithm import AarenPPO
from agents.decision.run_dir import load_agent
from envs.pomdp import CARTPOLE_NO_VEL

device, run_dirs = sys.argv[1], sys.argv[2:]
for run_dir in run_dirs:
    folded = load_agent(run_dir, device=device)
    eager = DecisionAgent(folded.model, folded.target_return, folded.acting, eager=True)
    obs = np.random.default_rng(0).normal(size=(4, folded.model.config.obs_dim))
    state_f = state_e = None
    for _ in range(20):
        act_f, state_f = folded.act(obs, state_f)
        act_e, state_e = eager.act(obs, state_e)
        np.testing.assert_allclose(act_f, act_e, atol=1e-4, rtol=1e-4)
    print(f"{folded.model.config.backbone} agent ({folded.acting}): folded equals eager on", device)

model = AarenPPO("MlpAarenPolicy", make_vec_env(CARTPOLE_NO_VEL, n_envs=4, seed=0), n_steps=32,
                 batch_size=64, n_epochs=1, device=device, seed=0)
model.learn(256)  # rollouts act folded on the device, updates refold
obs = model.env.reset()
states = {}
for fold in (True, False):
    model.policy.fold_acting = fold
    state, starts = None, np.ones(4, dtype=bool)
    for _ in range(20):
        actions, state = model.predict(obs, state, starts, deterministic=True)
        starts[:] = False
    states[fold] = (actions, state)
np.testing.assert_array_equal(states[True][0], states[False][0])
# The memory's (m, u, w) stand for (u e^m, w e^m): the stabiliser m itself may differ by rounding.
(m_f, u_f, w_f, *rest_f), (m_e, u_e, w_e, *rest_e) = states[True][1], states[False][1]
top = np.maximum(m_f, m_e)
for a, b in [(u_f * np.exp(m_f - top), u_e * np.exp(m_e - top)),
             (w_f * np.exp(m_f - top)[..., None], w_e * np.exp(m_e - top)[..., None]), *zip(rest_f, rest_e)]:
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
print("AarenPPO: folded equals eager on", device, torch.cuda.get_device_name(0) if device == "cuda" else "")
EOF
stage bench_aaren 150 "$PY" benchmarks/bench_aaren.py --quick --device "$DEVICE" --out "$OUT_DIR/bench"
stage bench_agents 360 "$PY" benchmarks/bench_agents.py --quick --device "$DEVICE" --out "$OUT_DIR/bench"
echo "all stages passed; results in $OUT_DIR" | tee -a "$SUMMARY"
