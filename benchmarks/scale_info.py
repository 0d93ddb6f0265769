"""What bench_scale.py records beside its measurement: the model's facts, the machine, the memory model's prediction.

* :func:`model_facts`: parameters, layers, hidden size, source dtype of a model argument, read through
  ``fptq.models.sources.open_source`` (shapes only, no tensor is read);
* :func:`machine_info`: nproc, the CPU, MemTotal / MemAvailable; :func:`git_state`: the commit measured;
* :func:`predict_peak`: ``fptq.models.memory.estimate`` called with the run's calibration settings
  (only the keywords its signature accepts), its ``peak_bytes`` and ``describe()``; when the module or
  the call is not there, ``peak_bytes`` is None and ``note`` says why.
"""

from __future__ import annotations

import inspect
import math
import os
import platform
import subprocess


def meminfo_bytes(keys=("MemTotal", "MemAvailable")) -> dict:
    """The ``keys`` of ``/proc/meminfo`` in bytes."""
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in keys:
                out[key] = int(rest.split()[0]) * 1024
    return out


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"nproc": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(), "cpu": cpu,
            **{k.lower(): v for k, v in meminfo_bytes().items()}, "python": platform.python_version()}


def git_state() -> dict:
    """The repository's HEAD commit and whether the working tree differs from it (what was measured)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=30)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return {"head": None, "dirty": None}
    return {"head": head.stdout.strip() or None, "dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None}


def model_facts(model) -> dict:
    """Facts of the model argument (None = the embedded default): params, layers, hidden, source_dtype_bytes,
    and ``config`` (the transformers config dict, for the memory model). Missing ones are None."""
    try:
        from fptq.models.sources import open_source

        with open_source(model) as src:
            cfg = src.config_dict()
            names = src.names()
            sizes = {n: math.prod(src.shape(n)) for n in names}
            biggest = max(names, key=sizes.__getitem__)
            dtype_bytes = src.dtype(biggest).itemsize
    except Exception as e:  # the facts are extra columns: a failure is reported, never fatal
        return {"params": None, "layers": None, "hidden": None, "source_dtype_bytes": None, "config": None,
                "facts_note": f"the model's shapes could not be read (fptq.models.sources): {type(e).__name__}: {e}"}
    text = cfg.get("text_config", cfg)
    return {"params": sum(sizes.values()), "layers": text.get("num_hidden_layers"), "hidden": text.get("hidden_size"),
            "source_dtype_bytes": dtype_bytes, "source_bytes": sum(sizes.values()) * dtype_bytes, "config": cfg}


def predict_peak(config, n_samples: int, seq_len: int, batch_size: int, source_dtype_bytes, more=None,
                 timed: bool = False) -> dict:
    """``{"peak_bytes", "peak_step", "describe", "time", "note"}`` from ``fptq.models.memory.estimate`` (None
    where unavailable). MORE: further keywords (float_dtype_bytes, device) offered the same way; TIMED:
    add ``time_estimate()`` (it measures this machine's rates now)."""
    try:
        from fptq.models.memory import estimate
    except ImportError as e:
        return {"peak_bytes": None, "note": f"no memory model to compare with (fptq.models.memory: {e})"}
    if config is None:
        return {"peak_bytes": None, "note": "no memory-model prediction: the model's config could not be read"}
    offered = {"n_samples": n_samples, "seq_len": seq_len, "batch_size": batch_size,
               "source_dtype_bytes": source_dtype_bytes, **(more or {})}
    params = inspect.signature(estimate).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in offered.items() if v is not None and (takes_any or k in params)}
    try:
        est = estimate(config, **kwargs)
    except Exception as e:  # the prediction is an extra column: a failure is reported, never fatal
        return {"peak_bytes": None, "note": f"fptq.models.memory.estimate({sorted(kwargs)}) failed: "
                f"{type(e).__name__}: {e}"}
    out = {"peak_bytes": int(est.peak_bytes), "peak_step": getattr(est, "peak_step", None), "kwargs": kwargs,
           "describe": est.describe() if hasattr(est, "describe") else None}
    if timed and hasattr(est, "time_estimate"):
        t = est.time_estimate()
        out["time"] = {k: round(v, 3) for k, v in t.items()}
    return out
