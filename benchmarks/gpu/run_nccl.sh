#!/usr/bin/env bash
# Real NCCL runs on the device machine (N GPUs): an injected straggler + GPU memory growth under accelerate
# launch, the rank-stats overhead benchmark, and a rank SIGKILLed mid-run. Outputs go to $OUT (run folders'
# events.jsonl / postmortem.json, logs, the benchmark's JSON). Usage: bash benchmarks/gpu/run_nccl.sh N
set -u
N=${1:-2}
source benchmarks/gpu/env.sh
python3 -c "import torch, transformers, accelerate, trl, datasets; print('versions', torch.__version__, transformers.__version__, accelerate.__version__, trl.__version__, datasets.__version__)" || exit 1
python3 -c "from ptt_nb import tiny; tiny.build_model('/tmp/w/model', hidden=1024, layers=8)" || exit 1
# smoke test: a 2-step single-GPU DPO; if TRL 1.16 does not run on the image's transformers, bring 5.24
if ! CUDA_VISIBLE_DEVICES=0 timeout 120 python3 -c "
from ptt_nb import tiny
tiny.make_trainer('dpo', '/tmp/w', max_steps=2, n_rows=64, use_cpu=False, bf16=True).train()" > /tmp/smoke.log 2>&1; then
  tail -5 /tmp/smoke.log; echo "smoke failed: installing transformers 5.24 from .whl/fb"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/fb/*.whl || exit 1
  python3 -c "import transformers; print('transformers', transformers.__version__)"
fi
ACC="python3 -m accelerate.commands.launch --multi_gpu --num_processes $N --num_machines 1 --mixed_precision no --dynamo_backend no"
S=tests/dist_scripts/dpo_ranks.py
# 1. straggler (rank 1 sleeps 40 ms in its first decoder layer) + rank 0 keeps 200 MB more GPU memory every step,
#    limit 20 GB via PTT_NB_MEMORY_LIMIT_MB (a GPU shared with a colocated engine); default rank-stats interval
t0=$(date +%s)
PTT_NB_MEMORY_LIMIT_MB=20000 timeout 240 $ACC --main_process_port 29611 $S --cuda --workdir /tmp/w --run-dir /tmp/straggler \
  --steps 120 --batch 8 --n-rows 4096 --slow-rank 1 --slow-ms 40 --grow-rank 0 --grow-cuda --grow-mb 200 > /tmp/straggler.log 2>&1
echo "straggler run rc=$? in $(( $(date +%s) - t0 )) s"
tail -c 20000 /tmp/straggler.log > $OUT/straggler.log
# 2. overhead: stats on/off in alternating 10-step blocks, one run, healthy
t0=$(date +%s)
timeout 240 python3 benchmarks/rank_stats.py --cuda --launcher accelerate --nproc $N --workdir /tmp/w --run-dir /tmp/bench \
  --steps 410 --block 10 --batch 8 > $OUT/bench.json 2> /tmp/bench.err
echo "bench rc=$? in $(( $(date +%s) - t0 )) s"; tail -c 8000 /tmp/bench.err > $OUT/bench.err; cat $OUT/bench.json
# 3. rank 1 SIGKILLed in its forward pass at step 30, NCCL timeout 30 s
t0=$(date +%s)
timeout 150 $ACC --main_process_port 29613 $S --cuda --workdir /tmp/w --run-dir /tmp/kill --steps 100 --batch 8 \
  --kill-rank 1 --kill-step 30 --timeout 30 > /tmp/kill.log 2>&1
echo "kill run rc=$? in $(( $(date +%s) - t0 )) s"
tail -c 12000 /tmp/kill.log > $OUT/kill.log
mkdir -p $OUT/straggler_run $OUT/kill_run
cp /tmp/straggler/events.jsonl $OUT/straggler_run/ 2>/dev/null
cp /tmp/kill/events.jsonl $OUT/kill_run/ 2>/dev/null
cp /tmp/kill/postmortem.json $OUT/kill_run/ 2>/dev/null
python3 - <<'PY'
import json
for name in ("/tmp/straggler", "/tmp/kill"):
    try:
        rows = [json.loads(l) for l in open(name + "/events.jsonl")]
    except OSError as exc:
        print(name, exc); continue
    for r in rows:
        if r["kind"] == "alert" and r["state"] == "active" and r["rule"] not in ("pref_hparams_out_of_range", "lr_warmup_missing"):
            print(name, "ALERT", r["rule"], r["severity"], r["step"], r["message"][:300])
        if r["kind"] == "run_end":
            print(name, "END", r["reason"], r["step"], r["detail"][:200])
    rs = [r for r in rows if r["kind"] == "rank_stats"]
    if rs:
        last = rs[-1]
        print(name, "intervals", len(rs), "steps", [r["step"] for r in rs][:20])
        print(name, "last", {k: [round(x, 2) if x is not None else None for x in v] for k, v in last["per_rank"].items()})
PY
