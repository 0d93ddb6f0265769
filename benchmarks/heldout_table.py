"""The held-out table of docs/evaluation.md section 7 from `fptq eval --json` files.

Each text's loss is ``d = ppl / ppl_FP32 - 1`` on the same windows; the
calibration-domain loss is the mean of ``d`` over the texts a row calibrated on
(``wiki`` -> wiki; ``mix`` -> ptb, wiki, science: ``fptq.data.text.MIX_SOURCES``);
the held-out ratio is ``d(fiction) / calibration-domain loss``.

    python benchmarks/heldout_table.py --model SmolLM2-135M --fp32 fp32.json \\
        --row default:wiki:wiki.json --row default:mix:mix.json

Several ``--fp32`` files are merged (later files add texts the earlier lack),
and so are the files of one row (``--row label:calib:a.json,b.json``).
Prints markdown rows; the ppl values are read as stored, nothing is rounded before
the division.
"""

from __future__ import annotations

import argparse
import json

from fptq.data.text import HELD_OUT_TEXT, calibration_parts

TEXTS = ("ptb", "wiki", "science", HELD_OUT_TEXT)


def _ppl(paths: str) -> dict[str, float]:
    """``{text: ppl}`` merged over the comma-separated JSON files (an earlier file's text wins)."""
    out: dict[str, float] = {}
    for path in paths.split(","):
        with open(path) as f:
            for text, rec in json.load(f)["perplexity"].items():
                out.setdefault(text, rec["ppl"])
    return out


def _row(model: str, label: str, calib: str, ppl: dict, fp32: dict) -> str:
    """One markdown row: ppl (d%) per text, (c) on calibration texts, the calib loss and the ratio."""
    parts = calibration_parts(calib)
    d = {t: ppl[t] / fp32[t] - 1 for t in TEXTS}
    cells = []
    for t in TEXTS:
        cell = f"{ppl[t]:.2f} ({100 * d[t]:+.1f}%)" + (" (c)" if t in parts else "")
        cells.append(f"**{cell}**" if t == HELD_OUT_TEXT else cell)
    calib_loss = sum(d[t] for t in parts) / len(parts)
    ratio = d[HELD_OUT_TEXT] / calib_loss
    return (f"| {model} | {label} | `{calib}` | " + " | ".join(cells)
            + f" | {100 * calib_loss:+.1f}% | {ratio:.2f} |")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model name for the first column")
    ap.add_argument("--fp32", required=True, help="FP32 eval JSON(s), comma-separated")
    ap.add_argument("--row", action="append", required=True, help="label:calib:json[,json...]")
    args = ap.parse_args(argv)
    fp32 = _ppl(args.fp32)
    print("| " + args.model + " | FP32 | - | "
          + " | ".join(f"**{fp32[t]:.2f}**" if t == HELD_OUT_TEXT else f"{fp32[t]:.2f}" for t in TEXTS)
          + " | - | - |")
    for spec in args.row:
        label, calib, paths = spec.split(":", 2)
        print(_row(args.model, label, calib, _ppl(paths), fp32))


if __name__ == "__main__":
    main()
