#!/usr/bin/env bash
# Reruns every command whose output WORKSPACE.md quotes under "Measured figures", in order.
# Usage: bash tools/workspace_figures.sh [core|i4|lenet5|bench|edge|all]   (default: all)
# Needs the datasets (TF_DYNHP_DATA or the usual places). Takes about 45 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-all}"
case "$what" in
  core|i4|lenet5|bench|edge|all) ;;
  *) echo "error: unknown section '$what'; expected one of core, i4, lenet5, bench, edge, all" >&2; exit 2 ;;
esac
export TF_CPP_MIN_LOG_LEVEL=2
if [[ "$what" == core || "$what" == all ]]; then
  python tools/train.py --dataset=mnist --method=sp --epochs=10 --out_dir=runs/mnist_sp10 --overwrite
  python tools/train.py --dataset=mnist --method=dense --epochs=10 --out_dir=runs/mnist_dense10 --overwrite
  python tools/summarize.py runs/mnist_sp10 runs/mnist_dense10
fi
if [[ "$what" == i4 || "$what" == all ]]; then
  for g in step_mean step epoch; do
    python tools/train.py --dataset=mnist --method=dynhp --alpha_bs=0.972 --budget_kb=2609.4 --batch_growth=$g --epochs=20 --out_dir=runs/i4_dynhp_$g --overwrite
  done
  python tools/train.py --dataset=mnist --method=hp --batch_size=100 --epochs=20 --out_dir=runs/i4_hp --overwrite
  python tools/train.py --dataset=mnist --method=dynhp --alpha_bs=0.972 --budget_kb=2609.4 --l0_lambda=0.1 --epochs=20 --out_dir=runs/i4_dynhp_l01 --overwrite
  python tools/train.py --dataset=mnist --method=hp --batch_size=100 --l0_lambda=0.1 --epochs=20 --out_dir=runs/i4_hp_l01 --overwrite
  python tools/summarize.py runs/i4_dynhp_step_mean runs/i4_dynhp_step runs/i4_dynhp_epoch runs/i4_hp runs/i4_dynhp_l01 runs/i4_hp_l01
fi
if [[ "$what" == lenet5 || "$what" == all ]]; then
  for lam in 0.1 0.5; do
    python tools/train.py --arch=lenet5 --dataset=mnist --method=dynhp --alpha_bs=0.972 --l0_lambda=$lam --epochs=50 --out_dir=runs/lenet5_dynhp_l$lam --overwrite
  done
  python tools/summarize.py --dense_kb=1683.9 --sp_mo_kb=3251.9 runs/lenet5_dynhp_l0.1 runs/lenet5_dynhp_l0.5
fi
if [[ "$what" == bench || "$what" == all ]]; then
  python tools/benchmark_step.py --dataset=mnist --batch_sizes=16,100,512 --examples=30000 --dynhp_epochs=20
fi
if [[ "$what" == edge || "$what" == all ]]; then
  python tools/edge_table.py --dynhp_model=runs/i4_dynhp_step_mean/model.keras --dense_model=runs/mnist_dense10/model.keras --out_dir=runs/edge
fi
