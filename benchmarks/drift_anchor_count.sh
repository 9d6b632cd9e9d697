#!/bin/bash
# Anchor count vs over-fitting (#18, docs/robustness.md): minivision, expert seed 0, FDA seed 0, gauss
# anchors, FDA from pretrained, 50 epochs at lr 1e-3 (fixed) and 1e-4. Constructs 8 and 32 anchors per
# (block, expert) beside a finished default run's 16, adapts, scores on validation and measures the
# block drift. Usage, from the repository root: benchmarks/drift_anchor_count.sh RUN_DIR
# (RUN_DIR: a finished `make run` directory, e.g. a worktree of the default run); writes
# benchmarks/results/drift_anchor_count/ (validation scores in its validation/, logs in /tmp/ac_logs).
# Needs the venv's bin on PATH (fda-bench, python).
set -e
REPO="$(cd "$(dirname "$0")/.." && pwd)"
R=work/minivision/eseed0/fda/seed0
if [ $# -ne 1 ] || [ ! -f "$1/$R/pretrained-gauss/merged.safetensors" ]; then
  echo "usage: $0 RUN_DIR  (a finished default run: RUN_DIR/$R/pretrained-gauss/merged.safetensors must exist)" >&2
  exit 2
fi
cd "$1"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
S='{"tasks":["fashionrot","fashionflip","fashioninv","fashionquad","fashionpairs","digits","digitsinv","digitsrot"]}'
TASKS="fashionrot fashionflip fashioninv fashionquad fashionpairs digits digitsinv digitsrot"
EXP=""; for t in $TASKS; do EXP="$EXP --expert $t=work/minivision/eseed0/experts/$t"; done
mkdir -p /tmp/ac_logs "$REPO/benchmarks/results/drift_anchor_count/validation"
construct() {  # N
  fda-bench fda-construct --suite minivision --settings "$S" --family clip-vision --size base \
    --fda "{\"construct_optimizer\":\"lbfgs\",\"construct_steps\":120,\"n_anchors\":$1,\"progress\":false,\"sv_every\":25}" \
    --anchor-init gauss --seed 0 --n-blocks 4 --base work/minivision/base $EXP --block 0 --block 1 --block 2 --block 3 \
    --out-dir $R/anchors-n$1/gauss --cache-dir $R/anchors-cache-n$1/gauss > /tmp/ac_logs/construct-n$1.log 2>&1
}
adapt() {  # N lr tag
  fda-bench fda-adapt --suite minivision --settings "$S" --family clip-vision --size base \
    --fda "{\"adapt_epochs\":50,\"adapt_lr\":$2,\"construct_optimizer\":\"lbfgs\",\"construct_steps\":120,\"n_anchors\":$1,\"progress\":false,\"sv_every\":25}" \
    --anchor-init gauss --seed 0 --n-blocks 4 --base work/minivision/base $EXP --init pretrained --block 0 --block 1 --block 2 --block 3 \
    --anchors-dir $R/anchors-n$1/gauss --blocks-dir $R/ac-n$1-$3/blocks --assemble $R/ac-n$1-$3/merged.safetensors > /tmp/ac_logs/adapt-n$1-$3.log 2>&1
}
echo "construct $(date)"
construct 8 & a=$!; construct 32 & b=$!; wait $a; wait $b
# the default's 16 anchors: the run's own, linked under the same naming
[ -e $R/anchors-n16 ] || { mkdir -p $R/anchors-n16 && ln -s ../anchors/gauss $R/anchors-n16/gauss; }
echo "adapt $(date)"
for n in 8 16 32; do adapt $n 0.001 x1 & a=$!; adapt $n 0.0001 x0.1 & b=$!; wait $a; wait $b; done
echo "evaluate $(date)"
PAIRS=""; for n in 8 16 32; do for k in x1 x0.1; do PAIRS="$PAIRS --model $R/ac-n$n-$k/merged.safetensors --out $REPO/benchmarks/results/drift_anchor_count/validation/n$n-$k.csv"; done; done
fda-bench evaluate --suite minivision --settings "$S" $PAIRS --split validation --tasks $TASKS --base work/minivision/base --data work/minivision/data $EXP \
  --method fda --init pretrained --anchor-init gauss --seed 0 --expert-seed 0 > /tmp/ac_logs/evaluate.log 2>&1
echo "drift $(date)"
O="$REPO/benchmarks/results/drift_anchor_count"; mkdir -p $O
for n in 8 16 32; do for k in x1 x0.1; do
  python "$REPO/benchmarks/fda_block_drift.py" --work work/minivision --init pretrained --anchor-init gauss \
    --model $R/ac-n$n-$k/merged.safetensors --anchors-dir $R/anchors-n$n/gauss --label "$n anchors per (block, expert), lr $k, 50 epochs" \
    --out $O/minivision_pretrained_gauss_n${n}_${k}.md > /dev/null 2>>/tmp/ac_logs/drift.err
done; done
echo "done $(date)"
