#!/usr/bin/env bash
# FSDP through accelerate on N GPUs: does the rank-stats collector run (and not break training) under FSDP2 and
# FSDP1? Each with an injected straggler (rank 1, 40 ms) and, as a control, once with rank stats off.
set -u
N=${1:-2}
source benchmarks/gpu/env.sh
python3 -c "from ptt_nb import tiny; tiny.build_model('/tmp/w/model', hidden=1024, layers=8)" || exit 1
BASE="python3 -m accelerate.commands.launch --num_processes $N --num_machines 1 --mixed_precision bf16 --dynamo_backend no --use_fsdp"
FSDP2="--fsdp_version 2 --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP --fsdp_transformer_layer_cls_to_wrap LlamaDecoderLayer --fsdp_reshard_after_forward true --fsdp_state_dict_type SHARDED_STATE_DICT"
FSDP1="--fsdp_version 1 --fsdp_sharding_strategy FULL_SHARD --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP --fsdp_transformer_layer_cls_to_wrap LlamaDecoderLayer --fsdp_use_orig_params true --fsdp_state_dict_type SHARDED_STATE_DICT"
S="tests/dist_scripts/dpo_ranks.py --cuda --workdir /tmp/w --steps 40 --batch 8 --n-rows 2048 --slow-rank 1 --slow-ms 40"
run() {  # name, fsdp flags, extra script args
  t0=$(date +%s)
  timeout 180 $BASE --main_process_port $((29700 + RANDOM % 200)) $2 $S --run-dir /tmp/$1 $3 > /tmp/$1.log 2>&1
  echo "$1 rc=$? in $(( $(date +%s) - t0 )) s"
  grep -E "Error|error:" /tmp/$1.log | grep -v Warning | head -5
}
run fsdp2 "$FSDP2" ""
run fsdp2_nostats "$FSDP2" "--no-stats"
run fsdp1 "$FSDP1" ""
run fsdp1_nostats "$FSDP1" "--no-stats"
mkdir -p $OUT/fsdp2 $OUT/fsdp1
cp /tmp/fsdp2/events.jsonl $OUT/fsdp2/ 2>/dev/null; cp /tmp/fsdp1/events.jsonl $OUT/fsdp1/ 2>/dev/null
for f in fsdp2 fsdp2_nostats fsdp1 fsdp1_nostats; do tail -c 6000 /tmp/$f.log > $OUT/$f.log; done
python3 - <<'PY'
import json
for name in ("fsdp2", "fsdp2_nostats", "fsdp1", "fsdp1_nostats"):
    try:
        rows = [json.loads(l) for l in open(f"/tmp/{name}/events.jsonl")]
    except OSError as exc:
        print(name, exc); continue
    end = [r for r in rows if r["kind"] == "run_end"]
    print(name, "END", end[-1]["reason"] if end else None, end[-1]["step"] if end else None)
    for r in rows:
        if r["kind"] == "alert" and r["state"] == "active" and r["rule"] in ("straggler_rank", "rank_failure", "memory_imbalance"):
            print(name, "ALERT", r["rule"], r["step"], r["message"][:200])
    rs = [r for r in rows if r["kind"] == "rank_stats"]
    if rs:
        print(name, "last", {k: [round(x, 1) if x is not None else None for x in v] for k, v in rs[-1]["per_rank"].items()
                             if k in ("compute_ms", "wait_ms", "step_ms", "mem_peak_mb", "gather_ms")})
PY
