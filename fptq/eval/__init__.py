"""Evaluation: perplexity over token windows, zero-shot tasks, one-call runs and tables.

Models are any HF causal LM (also with quantized modules swapped in) or a
callable returning logits; torch is imported when a function runs.
"""

from .perplexity import perplexity
from .runner import format_table, result_row, run_eval, write_json
from .tasks import evaluate_examples, evaluate_task

__all__ = ["perplexity", "evaluate_task", "evaluate_examples", "run_eval", "result_row", "format_table",
           "write_json"]
