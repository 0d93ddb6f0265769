#!/usr/bin/env bash
# Weight-side improvements through the real pipeline: each variant is quantized with
# `fptq quantize` (wiki 128 x 512 calibration, the default activation plan), saved, reloaded and
# evaluated with the integer kernels (`fptq eval --backend numba`, 16 x 512 windows of PTB and
# Wikipedia). Writes OUT/NAME/ (checkpoint), OUT/NAME.json and the table OUT/weight-quantizers.md.
# Long: about 5-8 minutes per variant on 2 idle cores. Pick variants with VARIANTS="a b".
#   nohup benchmarks/run_weight_quantizers.sh > /tmp/fptq-wq.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
FPTQ="${FPTQ:-fptq}"
OUT="${OUT:-results/weight-quantizers}"
WINDOWS="${WINDOWS:-16}"
declare -A FLAGS=(
  [rtn]=""
  [rtn_asym]="--weight-format uint4_asym"
  [gptq]="--weight-quantizer gptq"
  [gptq_asym]="--weight-quantizer gptq --weight-format uint4_asym"
  [rot_gptq]="--rotate --weight-quantizer gptq"
  [rot_gptq_asym]="--rotate --weight-quantizer gptq --weight-format uint4_asym"
  [rot_gptq_ao_asym]="--rotate --weight-quantizer gptq --gptq-act-order --weight-format uint4_asym"
)
VARIANTS="${VARIANTS:-rtn gptq_asym rot_gptq_asym}"
mkdir -p "$OUT"
for v in $VARIANTS; do
  [[ -v FLAGS[$v] ]] || { echo "unknown variant $v (known: ${!FLAGS[*]})" >&2; exit 2; }
  start=$(date +%s)
  # shellcheck disable=SC2086
  "$FPTQ" quantize "$@" --out "$OUT/$v" --force --quiet ${FLAGS[$v]}
  q_s=$(( $(date +%s) - start ))
  "$FPTQ" eval "$OUT/$v" --ppl ptb,wiki --max-windows "$WINDOWS" --backend "${BACKEND:-numba}" --quiet \
      --json "$OUT/$v.json"
  python3 - "$OUT/$v.json" "$v" "${FLAGS[$v]}" "$q_s" <<'PY'
import json, sys
p, name, flags, q_s = sys.argv[1:]
d = json.load(open(p)); d["variant"], d["flags"], d["quantize_seconds"] = name, flags, int(q_s)
json.dump(d, open(p, "w"), indent=1)
PY
done
python3 - "$OUT" $VARIANTS <<'PY'
import json, sys
out, names = sys.argv[1], sys.argv[2:]
rows = ["| variant | fptq quantize flags | PTB | Wiki | quantize s |", "|---|---|---|---|---|"]
for n in names:
    d = json.load(open(f"{out}/{n}.json"))
    ppl = d["perplexity"]
    rows.append(f"| {n} | `{d['flags'] or '(defaults)'}` | {ppl['ptb']['ppl']:.2f} | {ppl['wiki']['ppl']:.2f} "
                f"| {d['quantize_seconds']} |")
open(f"{out}/weight-quantizers.md", "w").write("\n".join(rows) + "\n")
print("\n".join(rows))
PY
