"""A probe, not a benchmark table: a float model (default: the 1.5B GGUF at /work/models; argv[3] another) with its
embeddings / lm_head rounded to bfloat16, as fptq's checkpoint stores them, on the texts argv[1] (16 x 512, BOS),
JSON to argv[2]: the head's share of a W4A8 row's loss (docs/results.md, session 22)."""
import json, sys, time, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from fptq.models.loading import load_float_model
from fptq.eval.runner import run_eval
torch.set_num_threads(2)
model, tok, src = load_float_model(sys.argv[3] if len(sys.argv) > 3 else "/work/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", progress=False)
print("tied:", model.config.tie_word_embeddings, model.lm_head.weight is model.model.embed_tokens.weight, flush=True)
with torch.no_grad():
    for p in {id(m.weight): m.weight for m in (model.model.embed_tokens, model.lm_head)}.values():
        p.copy_(p.to(torch.bfloat16).to(torch.float32))
t0 = time.time()
res = run_eval(model, tok, ppl=sys.argv[1], max_windows=16, progress=False)
res["model_kind"] = "float32, embeddings / lm_head rounded to bfloat16"
json.dump(res, open(sys.argv[2], "w"), indent=1)
print({k: v["ppl"] for k, v in res["perplexity"].items()}, f"{time.time()-t0:.0f}s", flush=True)
