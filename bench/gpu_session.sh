#!/usr/bin/env bash
# The figures taken on a lent GPU machine (one call of the device tool, about 8 minutes), from the repo root:
#   1. TIRG + ResNet-18 on the default generated CSS set, batch 32, SGD 0.01, no decay, 1,500 iterations, seeds 0-2:
#      this commit against the commit before the fidelity fixes (extracted to .oldsrc/ with
#      `git archive 5c6ee17 src | tar -x -C .oldsrc`). R@1 after a fixed number of iterations does not depend on
#      the device, so the GPU only makes it fast.
#   2. Demo-recipe candidates: R@1 every 500 of 3,000 iterations on the default set and on a 16,000-image train set.
#   3. bench/bench_gpu.py: samples/s per model, fp32 vs bf16, eager vs compiled.
# Outputs land in $OUT (the device tool's folder) or ./gpu_out.
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 SWEEP_THREADS=1
NEW=$PWD/src
nvidia-smi -L | tee "$OUT/device.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))" | tee -a "$OUT/device.txt"
PYTHONPATH=$NEW python3 -m cirlab data css --out /tmp/css4k --seed 0 > /dev/null 2>&1 &
PYTHONPATH=$NEW python3 -m cirlab data css --out /tmp/css16k --seed 0 --train-images 16000 > /dev/null 2>&1 &
wait

r18() {  # tag src seed
  PYTHONPATH=$2 OMP_NUM_THREADS=1 python3 -m cirlab.cli.main train --data-root /tmp/css4k --out "/tmp/r18_$1_$3" \
    --model tirg --image-encoder resnet18 --batch-size 32 --lr 0.01 --lr-decay-every 0 --iters 1500 --seed "$3" \
    --checkpoint-every 0 --device cuda --json > "/tmp/r18_$1_$3.log" 2>&1
  echo "$1 seed $3: $(tail -n 1 "/tmp/r18_$1_$3.log")" >> "$OUT/tirg_resnet18_1500.txt"
}
for s in 0 1 2; do r18 new "$NEW" $s & r18 old "$PWD/.oldsrc/src" $s & done

DEMO=tirg_small_grid,demo_bbc,demo_true_grad,demo_all_triplets,demo_independent,demo_lr02,demo_width48,demo_bbc_lr02
PYTHONPATH=$NEW python3 bench/css_budget_sweep.py --data /tmp/css4k --out /tmp/sweep4k --iters 3000 --eval-every 500 \
  --device cuda --parallel 8 --configs "$DEMO" --extra "--lr-decay-every 2250" > "$OUT/demo_sweep_4k.md" 2>&1 &
PYTHONPATH=$NEW python3 bench/css_budget_sweep.py --data /tmp/css16k --out /tmp/sweep16k --iters 3000 \
  --eval-every 500 --device cuda --parallel 4 --configs tirg_small_grid,demo_bbc,demo_lr02,demo_width48 \
  --extra "--lr-decay-every 2250" > "$OUT/demo_sweep_16k.md" 2>&1 &
wait
PYTHONPATH=$NEW timeout 300 python3 bench/bench_gpu.py --budget-seconds 8 > "$OUT/bench_gpu.json" 2> "$OUT/bench_gpu.err"
tail -n 3 "$OUT"/*.md "$OUT"/*.txt
