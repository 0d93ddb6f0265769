"""Is llm-compressor's SpinQuant (random Hadamard, float32 online products) exact in float on SmolLM2?

The float model against R1 and R1+R2+R4 without any quantization, on the first 4 PTB windows of 512
(fptq's perplexity). Peers venv only:

    nice -n 10 /work/peers-venv/bin/python benchmarks/peers/float_check_spinquant.py
"""
import copy
import sys

import torch

sys.argv = sys.argv[:1]
from fptq.data.text import eval_tokens
from fptq.data.tokenize import bos_token_id
from fptq.eval.perplexity import perplexity
from fptq.models.loading import load_float_model
from llmcompressor import oneshot
from llmcompressor.modifiers.transform import SpinQuantModifier
from datasets import Dataset
model0, tok, src = load_float_model(None, progress=False)
toks = eval_tokens(tok, "ptb"); bos = bos_token_id(tok)
with torch.no_grad():
    print("fp32", perplexity(model0, toks, seq_len=512, max_windows=4, progress=False, bos_token_id=bos)["ppl"], flush=True)
for rots in (["R1"], ["R1", "R2", "R4"]):
    m = copy.deepcopy(model0)
    ds = Dataset.from_dict({"input_ids": [[1] * 8], "attention_mask": [[1] * 8]})
    m = oneshot(model=m, dataset=ds, recipe=[SpinQuantModifier(rotations=rots, transform_type="random-hadamard", precision=torch.float32)],
                num_calibration_samples=1, max_seq_length=8, tokenizer=tok)
    with torch.no_grad():
        print(rots, perplexity(m, toks, seq_len=512, max_windows=4, progress=False, bos_token_id=bos)["ppl"], flush=True)
