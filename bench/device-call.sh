#!/usr/bin/env bash
# One device call's worth of measurements on the lent GPU, each part under its own timeout, logs in $OUT.
# Here: `bash ../shared/device/pack.sh` once, `npm run bench:build`, `node bench/build.mjs
# bench/int8-matmul.bench.ts bench/int8-gate.bench.ts`, `mkdir -p dist-bench/ref && cp
# ../shared/reference/torch_lora_baseline.py dist-bench/ref/`; then a device call carrying
# [".gpu", "dist-bench"] with `bash bench/device-call.sh <part>...` (a call may run at most 10 minutes):
#   levers  layout choices: the int8 kernels' EPI_VEC4 (int8Layout), attention dk/dv and dq
#           staging depths, and the host ↔ GPU bus (offload's floor)                    (~2 min)
#   step    the whole training step at the three settings (int8, the default here) beside PyTorch
#           + PEFT in the same call, with nvidia-smi's view of GPU memory; then the offload   (~8 min)
#   f32     the f32 path's step and the kernels of issue "Kernel library I/II"              (~7 min)
#   q4      the 4-bit f32 kernels and LoRA overheads (issue "Kernel library II")             (~2 min)
#   offload optimizer-state offload (cpu, disk) against the GPU, OFFLOAD_ACCUM (default 1,4)   (~2 min)
#   panels  the int8 step with the adapters' rank-r products as single-dispatch panels (LORA_PANELS=1), to
#           set beside a plain `step` part of the same call                                   (~3 min)
#   splitk  the loss's dhidden = dlogits · lm_head at 1024 and 683 tokens in 1–8 k slices      (~1 min)
#   offload-old  the offload bench of dist-bench/bench-old.mjs (an earlier build) for an A/B  (~2 min)
#   gate    the int8 accuracy gate (fixtures copied to dist-bench/fixtures) with the engine's residual
#           levels, or those INT8_RESIDUAL names, and each projection family probed on one level;
#           then the step with those levels                                                  (~5 min)
set -u
[ $# -gt 0 ] || set -- usage
for p in "$@"; do
  case "$p" in
    levers | step | f32 | gate | splitk | offload-old | q4 | offload | panels) ;;
    *)
      echo "usage: bash bench/device-call.sh levers|step|f32|gate|splitk|offload-old|q4|offload|panels ... (on the device machine: it sources .gpu/gpu-env.sh)" >&2
      exit 2
      ;;
  esac
done
OUT=${OUT:-/tmp/webtune-bench}
mkdir -p "$OUT"
source .gpu/gpu-env.sh >/dev/null 2>&1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | tee "$OUT/gpu.txt"
clean() { sed 's/\x1b\[[0-9;]*m//g'; }
part() { # name, seconds, command...
  local name=$1 secs=$2
  shift 2
  echo "=== $name ($*)"
  timeout "$secs" "$@" 2>&1 | clean | tee "$OUT/$name.txt" | grep -v "deprecated\|^\s*\^\|subgroupMatrix\|^$" | tail -40
}
for p in "$@"; do
case "$p" in
  levers)
    for v in EPI_VEC4=0 EPI_VEC4; do
      part "int8mm-${v//[=,]/_}" 60 env VARIANT=$v node dist-bench/int8-matmul.bench.mjs
    done
    part attention 90 env ATTN_DKV_STAGING=16x8,16x16,32x8,32x16 ATTN_DQ=64x16x16,32x16x16,32x32x16,32x32x8 node dist-bench/bench.mjs attention
    part copy 30 node dist-bench/bench.mjs copy
    ;;
  step)
    part step-int8 170 env STEP_PRECISION=int8 node dist-bench/bench.mjs train-step
    part torch 130 python3 dist-bench/ref/torch_lora_baseline.py
    part offload 150 node dist-bench/bench.mjs offload
    ;;
  q4)
    part quant4-lora 220 node dist-bench/bench.mjs quant4-lora
    ;;
  panels)
    part step-panels 170 env LORA_PANELS=1 STEP_PRECISION=int8 node dist-bench/bench.mjs train-step
    ;;
  offload)
    part offload 150 env OFFLOAD_ACCUM=${OFFLOAD_ACCUM:-1,4} node dist-bench/bench.mjs offload
    ;;
  splitk)
    part splitk 90 env MATMUL_SPLITK=1 node dist-bench/bench.mjs matmul
    ;;
  offload-old)
    # The offload bench of an earlier bundle (dist-bench/bench-old.mjs, built from the base commit), for an A/B on one machine.
    part offload-old 150 node dist-bench/bench-old.mjs offload
    ;;
  gate)
    # INT8_RESIDUAL, when set, reaches both through the environment.
    part gate 240 node dist-bench/int8-gate.bench.mjs dist-bench/fixtures
    part step-levels 150 env STEP_PRECISION=int8 node dist-bench/bench.mjs train-step
    ;;
  f32)
    part step-f32 200 env STEP_PRECISION=f32 STEP_SETTINGS=512x1,512x4,2048x1 node dist-bench/bench.mjs train-step
    part kernels 200 node dist-bench/bench.mjs matmul dense-ops quant4-lora
    ;;
esac
done
