"""Regenerate the known-answer vectors in ``conformance/vectors/`` from the spec, deterministically.

    python -m conformance.make_vectors            # rewrite conformance/vectors/*.npz
    python -m conformance.make_vectors --check    # exit 1 if regenerating would change a file

One ``.npz`` per spec section. Case ``cNNN`` of operation ``op`` stores its
inputs as ``cNNN.op.in.<arg>`` and the spec's outputs as ``cNNN.op.out<j>``;
an input or output that is None is absent. Scalars are 0-d arrays. Inputs come from the named pieces
of :mod:`conformance.pieces` with fixed seeds, so every edge appears in a
named case; outputs are :mod:`fptq.spec`'s. The files are written with fixed
zip timestamps and no compression, so the same spec gives the same bytes
(``tests/test_conformance_vectors.py`` checks that). Only ``lae_scales``
involves a libm call (float64 log2); a platform whose log2 differs in the last
float64 bit could in principle change a stored scale by one float32 ulp,
which the conformance tolerance for ``lae_scales`` absorbs.
"""

from __future__ import annotations

import argparse
import inspect
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fptq import spec  # noqa: E402
from fptq.spec import WeightFormat  # noqa: E402

if __package__:  # conformance.make_vectors (a checkout) or fptq.conformance.make_vectors (installed)
    from . import pieces as P
    from .pieces import F32, Source
    from .pytest_helpers import OUTPUT_NAMES
else:  # python conformance/make_vectors.py
    from conformance import pieces as P  # noqa: E402
    from conformance.pieces import F32, Source  # noqa: E402
    from conformance.pytest_helpers import OUTPUT_NAMES  # noqa: E402

VECTORS_DIR = Path(__file__).resolve().parent / "vectors"
SYM, ASYM = WeightFormat.SYMMETRIC, WeightFormat.ASYMMETRIC
INT_ARGS, BOOL_ARGS, FLOAT_ARGS, FMT_ARGS = {"k", "group_size"}, {"signed"}, {"v0", "v1"}, {"fmt"}


def _one(kinds, kind) -> dict[str, int]:
    return {k: int(k == kind) for k in kinds}


def _all(kinds) -> dict[str, int]:
    return {k: 1 for k in kinds}


# ---------------------------------------------------------------------------
# the cases, one builder per section (seed = a fixed number per case)


def activation_cases() -> list[tuple[str, dict]]:
    cases = []
    for i, kind in enumerate(P.AMAX_KINDS + ("mixed",)):
        w = _all(P.AMAX_KINDS) if kind == "mixed" else _one(P.AMAX_KINDS, kind)
        cases.append(("act_scale_from_amax", {"amax": P.amax_values(Source(100 + i), (24,), w)}))
    for i, kind in enumerate(P.ACT_ELEMENT_KINDS):
        src = Source(200 + i)
        s = P.scale_of_kind(src, "nice")
        cases.append(("quantize_act_per_tensor", {"x": P.act_tensor(src, (4, 16), s, _one(P.ACT_ELEMENT_KINDS, kind)),
                                                  "scale": np.array(s, F32)}))
    for i, skind in enumerate(P.SCALE_KINDS):
        src = Source(300 + i)
        s = P.scale_of_kind(src, skind)
        cases.append(("quantize_act_per_tensor", {"x": P.act_tensor(src, (3, 21), s, _all(P.ACT_ELEMENT_KINDS)),
                                                  "scale": np.array([s], F32)}))
    for i, kind in enumerate(P.TOKEN_ROW_KINDS):
        cases.append(("quantize_act_per_token",
                      {"x": P.token_matrix(Source(400 + i), 3, 33, _one(P.TOKEN_ROW_KINDS, kind))}))
    cases.append(("quantize_act_per_token", {"x": P.token_matrix(Source(410), 8, 17, _all(P.TOKEN_ROW_KINDS))}))
    cases.append(("quantize_act_per_token", {"x": np.zeros((0, 5), F32)}))
    cases.append(("quantize_act_per_token", {"x": np.zeros((3, 0), F32)}))
    src = Source(500)
    q = P.int8_activations(src, (4, 19), {"uniform": 3, "extreme": 1})
    cases.append(("dequantize_act", {"q": q, "scale": P.positive_scales(src, (4,), _all(P.SCALE_KINDS))}))
    cases.append(("dequantize_act", {"q": q, "scale": np.array(P.full_scale(src), F32)}))
    return cases


def lae_cases() -> list[tuple[str, dict]]:
    cases = []
    for i, kind in enumerate(P.CHANNEL_MAX_KINDS + ("mixed",)):
        w = _all(P.CHANNEL_MAX_KINDS) if kind == "mixed" else _one(P.CHANNEL_MAX_KINDS, kind)
        cases.append(("lae_scales", {"channel_max": P.channel_max_values(Source(600 + i), (32,), w)}))
    for i, op in enumerate(("lae_apply_activation", "lae_apply_weight")):
        src = Source(700 + i)
        a = P.token_matrix(src, 5, 24, {"generic": 3, "ties": 1, "zeros": 1, "tiny": 1, "huge": 1})
        s = spec.lae_scales(P.channel_max_values(src, (24,), _all(P.CHANNEL_MAX_KINDS)))
        cases.append((op, {"x" if op == "lae_apply_activation" else "w": a, "s": s}))
    return cases


#: (K, G) pairs: a real width with a ragged last group, ragged small groups, per-channel,
#: K = 1, G > K, G = 1, K multiple of G, odd K.
WEIGHT_SHAPES = [(576, 128), (37, 8), (5, -1), (1, 4), (7, 1), (33, 32)]


def weight_cases() -> list[tuple[str, dict]]:
    cases = []
    seed = 800
    for fmt in (SYM, ASYM):
        for k, g in WEIGHT_SHAPES:
            seed += 1
            src = Source(seed)
            n = 2 if k > 100 else 4
            mix = {kind: (1 if kind != "huge" else 0) for kind in P.WEIGHT_GROUP_KINDS}
            w = P.weight_matrix(src, n, k, g, fmt, mix)
            cases.append(("weight_scales", {"w": w, "group_size": g, "fmt": fmt}))
            cases.append(("quantize_weight", {"w": w, "group_size": g, "fmt": fmt}))
            gg = max(k, 1) if g == -1 else g
            wt, st = P.tie_weights(src, n, k, gg)
            zero = src.ints(0, 15, st.shape).astype(np.uint8) if fmt is ASYM else None
            cases.append(("quantize_weight_with_scales", {"w": wt, "scale": st, "zero": zero, "group_size": g,
                                                          "fmt": fmt}))
            q = P.nibbles(src, (n, k), fmt is SYM, "all_values")
            cases.append(("dequantize_weight", {"q": q, "scale": P.similar_scales(src, st.shape), "zero": zero,
                                                "group_size": g, "fmt": fmt}))
    for kind in ("ties", "zero", "tiny", "positive", "negative", "constant"):
        seed += 1
        w = P.weight_matrix(Source(seed), 3, 20, 8, ASYM, _one(P.WEIGHT_GROUP_KINDS, kind))
        cases.append(("quantize_weight", {"w": w, "group_size": 8, "fmt": ASYM}))
    return cases


def packing_cases() -> list[tuple[str, dict]]:
    cases = []
    seed = 900
    for signed in (True, False):
        for k in (0, 1, 2, 5, 16, 33):
            for kind in ("all_values", "extreme"):
                seed += 1
                cases.append(("pack_int4", {"q": P.nibbles(Source(seed), (3, k), signed, kind), "signed": signed}))
        for k in (1, 6, 33):
            seed += 1
            packed = Source(seed).ints(0, 255, (3, spec.packed_width(k))).astype(np.uint8)
            cases.append(("unpack_int4", {"packed": packed, "k": k, "signed": signed}))
    return cases


def matmul_cases() -> list[tuple[str, dict]]:
    cases = []
    seed = 1000
    for fmt in (SYM, ASYM):
        for k, g in [(576, 128), (37, 8), (5, -1), (130, 128), (33, 32)]:
            seed += 1
            src = Source(seed)
            m, n = 3, 4
            ng = spec.num_groups(k, max(k, 1) if g == -1 else g)
            qx = P.int8_activations(src, (m, k), {"uniform": 3, "extreme": 1})
            packed = spec.pack_int4(P.nibbles(src, (n, k), fmt is SYM, "uniform"), fmt is SYM)
            zero = src.ints(0, 15, (n, ng)).astype(np.uint8) if fmt is ASYM else None
            cases.append(("w4a8_group_sums", {"qx": qx, "packed": packed, "zero": zero, "k": k, "group_size": g,
                                              "fmt": fmt}))
            wscale = P.similar_scales(src, (n, ng))
            xscale = P.positive_scales(src, (m,), {"full": 1}) if seed % 2 else np.array(P.full_scale(src), F32)
            bias = P.log_uniform(src, (n,), -4, 4) if seed % 3 else None
            cases.append(("w4a8_matmul", {"qx": qx, "xscale": xscale, "packed": packed, "wscale": wscale,
                                          "zero": zero, "k": k, "group_size": g, "fmt": fmt, "bias": bias}))
    m, n, ng = 3, 5, 9
    for per_token in (False, True):
        for with_bias in (False, True):
            for kind in ("realistic", "rounding", "wide"):
                seed += 1
                src = Source(seed)
                acc = P.int32_sums(src, (m, n, ng), kind)
                wscale = P.similar_scales(src, (n, ng))
                xscale = P.positive_scales(src, (m,) if per_token else (1,), {"full": 3, "subnormal": 1})
                bias = P.log_uniform(src, (n,), -6, 6) if with_bias else None
                cases.append(("w4a8_epilogue", {"acc": acc, "wscale": wscale, "xscale": xscale, "bias": bias}))
    cases.append(("w4a8_epilogue", {"acc": np.zeros((2, 3, 0), np.int32), "wscale": np.zeros((3, 0), F32),
                                    "xscale": np.array(0.5, F32), "bias": np.array([1.0, -0.0, 0.0], F32)}))
    return cases


def policy_cases() -> list[tuple[str, dict]]:
    cases = []
    for i, (v0, v1) in enumerate([(spec.DEFAULT_V0, spec.DEFAULT_V1), (15.3, 150.7), (0.0, 0.1), (0.1, 0.2)]):
        v = P.policy_ranges(Source(1100 + i), (40,), v0, v1, {"boundary": 4, "zero": 1, "generic": 2, "huge": 1})
        cases.append(("select_policies", {"v": v, "v0": float(v0), "v1": float(v1)}))
    return cases


SECTIONS = {
    "activation": activation_cases, "lae": lae_cases, "weights": weight_cases,
    "packing": packing_cases, "matmul": matmul_cases, "policy": policy_cases,
}


# ---------------------------------------------------------------------------
# encoding


def _scalar(v) -> np.ndarray:
    if isinstance(v, WeightFormat):
        return np.array(v.value)
    if isinstance(v, (bool, np.bool_)):
        return np.array(bool(v))
    if isinstance(v, (int, np.integer)):
        return np.array(int(v), np.int64)
    if isinstance(v, (float, np.floating)):
        return np.array(float(v), np.float64)
    if isinstance(v, str):
        return np.array(v)
    raise TypeError(f"cannot store {type(v).__name__}")


def _key(i: int, op: str, part: str) -> str:
    return f"c{i:03d}.{op}.{part}"


def encode(cases: list[tuple[str, dict]]) -> dict[str, np.ndarray]:
    """Flatten cases and the spec's outputs into the arrays of one file.

    Keys: ``cNNN.<op>.in.<arg>`` and ``cNNN.<op>.out<j>``. An input or output that is None is
    simply absent (only zero points, biases and symmetric zero outputs are ever None).
    """
    out: dict[str, np.ndarray] = {}
    for i, (op, case) in enumerate(cases):
        for arg, v in case.items():
            if v is not None:
                out[_key(i, op, "in." + arg)] = v if isinstance(v, np.ndarray) else _scalar(v)
        with np.errstate(all="ignore"):
            result = getattr(spec, op)(**case)
        outs = list(result) if isinstance(result, tuple) else [result]
        assert len(outs) == len(OUTPUT_NAMES[op]), op
        for j, r in enumerate(outs):
            if r is not None:
                out[_key(i, op, f"out{j}")] = r if isinstance(r, np.ndarray) else _scalar(r)
    return out


def _arg_value(arg: str, a: np.ndarray):
    if arg in INT_ARGS:
        return int(a)
    if arg in BOOL_ARGS:
        return bool(a)
    if arg in FLOAT_ARGS:
        return float(a)
    if arg in FMT_ARGS:
        return WeightFormat(str(a))
    return a


def _out_value(a: np.ndarray):
    if a.ndim == 0 and a.dtype == np.int64:
        return int(a)
    if a.dtype.kind == "U":
        return WeightFormat(str(a))
    return a


def decode(arrays) -> list[tuple[str, str, dict, list]]:
    """The cases of one loaded file: ``[(case_id, op, case, expected_outputs)]`` (absent = None)."""
    by_case: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for key in arrays.files:
        cid, op, part = key.split(".", 2)
        by_case.setdefault((cid, op), {})[part] = arrays[key]
    cases = []
    for (cid, op), parts in sorted(by_case.items()):
        params = inspect.signature(getattr(spec, op)).parameters
        case = {}
        for name, p in params.items():
            if "in." + name in parts:
                case[name] = _arg_value(name, parts["in." + name])
            elif p.default is inspect.Parameter.empty:
                case[name] = None
        outs = [_out_value(parts[f"out{j}"]) if f"out{j}" in parts else None
                for j in range(len(OUTPUT_NAMES[op]))]
        cases.append((cid, op, case, outs))
    return cases


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` (readable by ``np.load``) with fixed timestamps and no compression: same arrays, same bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            data = io.BytesIO()
            np.lib.format.write_array(data, np.array(arr, order="C"), version=(1, 0), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, data.getvalue())
    return buf.getvalue()


def generate() -> dict[str, bytes]:
    """File name -> bytes, for every section."""
    return {f"{name}.npz": npz_bytes(encode(build())) for name, build in SECTIONS.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=VECTORS_DIR, help="directory to write (default: %(default)s)")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file would change")
    args = ap.parse_args(argv)
    files = generate()
    if args.check:
        stale = [n for n, b in files.items() if not (args.out / n).is_file() or (args.out / n).read_bytes() != b]
        for n in stale:
            print(f"{args.out / n}: differs from what the spec generates now", file=sys.stderr)
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    total = 0
    for name, data in files.items():
        tmp = args.out / (name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(args.out / name)
        total += len(data)
        print(f"{args.out / name}: {len(data)} bytes")
    print(f"total {total} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
