#!/usr/bin/env bash
# One prepared run on a machine with many cores (one rank per core): scaling of DES DeepFM,
# the simulator against real runs up to P = 16 (network fitted at P = 2 and 4 only, so the
# larger P are true extrapolations), and desmpi against PyTorch on a quiet core.
#
#   PY=python OUT=results bash scripts/multicore_check.sh
#   SECTIONS="validate scaling" SCALING_RANKS=2 REPEATS=6 ... (a subset; RANKS=2,4,8,16 default)
#
# PY must import desmpi (or run from the repository root), numpy, numba, h5py, mpi4py, and
# have mpiexec beside it or on PATH; torch is optional (the last section is skipped without it).
# Each section has its own time limit so that one slow part cannot swallow the others; every
# report lands in $OUT.
set -u
PY=${PY:-python}
OUT=${OUT:-runs/multicore}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1
export PYTHONUNBUFFERED=1
RANKS=${RANKS:-2,4,8,16}
SCALING_RANKS=${SCALING_RANKS:-$RANKS}
SECTIONS=${SECTIONS:-"compile scaling validate torch"}  # any subset, run in this order
want() { [[ " $SECTIONS " == *" $1 "* ]]; }
section() { echo; echo "=== $1 ($(date -u +%H:%M:%S))"; }

section "machine"
{ nproc; lscpu | grep -E "Model name|Thread|Core|Socket|NUMA node\(s\)|L2|L3"; free -g | head -2
  "$PY" -c "import sys, numpy, numba; print(sys.version.split()[0], numpy.__version__, numba.__version__)"
  git log -1 --format='%h %s' 2>/dev/null; } | tee "$OUT/machine.txt"

if want compile; then
section "compile (numba cache)"
for m in deepfm lr; do
  timeout 180 "$PY" -m desmpi bench train --model "$m" --steps 2 --warmup 1 --json >/dev/null \
    || echo "compile run for $m failed"
done
fi

if want scaling; then
section "scaling: DES DeepFM, global batch 4096, P = 1 (allreduce) and $SCALING_RANKS (reduce_scatter)"
timeout "${T_SCALING:-220}" "$PY" scripts/bench_scaling.py --model deepfm --ranks "$SCALING_RANKS" \
  --repeats "${REPEATS:-4}" --p1-aggregate allreduce --json-out "$OUT/scaling_deepfm.json" \
  2>&1 | tee "$OUT/scaling_deepfm.md"
fi

if want validate; then
section "simulator against real runs (calibrated at P = 1, 2, 4; the larger P are predictions)"
timeout "${T_VALIDATE:-240}" "$PY" -m desmpi simulate --validate --models deepfm,lr \
  --strategies des,des-rs,a2a,ps --ranks "1,$RANKS" --calibrate-ranks 2,4 --steps 8 \
  --batch 4096 --out "$OUT/validation" > /dev/null 2> "$OUT/validate.log"
grep -E "compute:|median absolute" "$OUT/validate.log"; cat "$OUT/validation/validation.md"
fi

if want torch; then
section "desmpi against PyTorch (one thread)"
if "$PY" -c "import torch" 2>/dev/null; then
  timeout "${T_TORCH:-170}" "$PY" scripts/bench_vs_pytorch.py --repeats "${REPEATS_TORCH:-3}" \
    --json > "$OUT/vs_pytorch.json" 2> "$OUT/vs_pytorch.log"
  "$PY" -c "
import json, sys
for r in json.load(open(sys.argv[1])):
    print(r['model'], round(r['desmpi_samples_per_s']), round(r['torch_samples_per_s']),
          round(r['ratio'], 2))" "$OUT/vs_pytorch.json" || tail -5 "$OUT/vs_pytorch.log"
else
  echo "torch not importable: skipped"
fi
fi
section "done"
