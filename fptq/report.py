"""``fptq report``: the plan as a table and as a plot (the paper's activation-range figure).

Works from the checkpoint's metadata (:func:`plan_rows_from_metadata`) or from a
live :class:`fptq.models.plan.Plan` (``plan.to_json()["groups"]``): one row per
(decoder layer, linear group) with its range ``v``, band, applied policy,
range after LAE, static scale and where ``1/s`` was folded (or why not).
"""

from __future__ import annotations

from collections import Counter

__all__ = ["plan_rows_from_metadata", "plan_table", "plan_summary", "plot_plan"]

_GROUP_ORDER = {"qkv": 0, "o": 1, "gate_up": 2, "down": 3}


def plan_rows_from_metadata(meta: dict) -> list[dict]:
    """One row per (layer, group) from a checkpoint's per-linear ``layers`` metadata."""
    rows = {}
    for name, e in meta["layers"].items():
        key = (e.get("layer", -1), e.get("group", name))
        row = rows.setdefault(key, {"layer": key[0], "group": key[1], "linears": [], "v": e.get("v"),
                                    "band": e.get("band"), "policy": e["policy"], "v_after": e.get("v_after"),
                                    "act_scale": e.get("act_scale"), "fold": e.get("fold"),
                                    "fallback": e.get("fallback")})
        row["linears"].append(name.rsplit(".", 1)[-1])
    return [rows[k] for k in sorted(rows, key=lambda k: (k[0], _GROUP_ORDER.get(k[1], 9), str(k[1])))]


def _fmt(x, nd=2):
    return "-" if x is None else f"{x:.{nd}f}"


def plan_table(rows: list[dict]) -> str:
    """Markdown table of the plan rows."""
    head = "| layer | group | linears | v | band | policy | v after LAE | act scale | folded into / note |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        note = r.get("fold") or ""
        if r.get("fallback"):
            note = f"fallback: {r['fallback']}"
        lines.append(f"| {r['layer']} | {r['group']} | {','.join(r.get('linears', []))} | {_fmt(r.get('v'))} | "
                     f"{r.get('band') or '-'} | {r['policy']} | {_fmt(r.get('v_after'))} | "
                     f"{_fmt(r.get('act_scale'), 5)} | {note} |")
    return "\n".join(lines)


def plan_summary(rows: list[dict]) -> str:
    """One line: how many groups got each policy, how many fell back."""
    c = Counter(r["policy"] for r in rows)
    fb = sum(1 for r in rows if r.get("fallback"))
    return (f"{len(rows)} linear groups: " + ", ".join(f"{k} {c.get(k, 0)}" for k in ("static", "lae_static", "dynamic"))
            + f"; LAE fallbacks to dynamic: {fb}")


def plot_plan(rows: list[dict], path, v0: float, v1: float, title: str = "") -> None:
    """PNG: input range v per decoder layer and linear group on a log scale, with the v0/v1 bands.

    Filled markers: v before equalization; hollow markers: v after LAE (LAE groups only).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(12, 4.8), dpi=120)
    vs = [r["v"] for r in rows if r.get("v")]
    top = max(vs + [v1 * 2]) * 1.5
    bottom = max(min(vs + [v0 / 2]) / 1.5, 1e-3)
    ax.axhspan(bottom, v0, color="tab:green", alpha=0.08, label=f"static (v < {v0:g})")
    ax.axhspan(v0, v1, color="tab:orange", alpha=0.10, label=f"LAE + static ({v0:g} <= v < {v1:g})")
    ax.axhspan(v1, top, color="tab:red", alpha=0.08, label=f"per-token dynamic (v >= {v1:g})")
    markers = {"qkv": "o", "o": "s", "gate_up": "^", "down": "D"}
    offsets = {"qkv": -0.24, "o": -0.08, "gate_up": 0.08, "down": 0.24}
    for g, mk in markers.items():
        pts = [r for r in rows if r["group"] == g and r.get("v")]
        if not pts:
            continue
        x = [r["layer"] + offsets[g] for r in pts]
        line = ax.scatter(x, [r["v"] for r in pts], marker=mk, s=22, label=f"{g} input")
        lae = [r for r in pts if r.get("v_after") is not None]
        if lae:
            ax.scatter([r["layer"] + offsets[g] for r in lae], [r["v_after"] for r in lae], marker=mk, s=22,
                       facecolors="none", edgecolors=line.get_facecolor(), label=f"{g} after LAE")
    ax.set_yscale("log")
    ax.set_ylim(bottom, top)
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("input range v = max |x| (calibration)")
    ax.set_title(title or "FPTQ per-layer activation ranges and policy bands")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.8)
    ax.grid(True, which="both", axis="y", alpha=0.2)
    fig.tight_layout()
    from .io.outputs import PNG_SOFTWARE

    fig.savefig(path, format="png", metadata={"Software": PNG_SOFTWARE})  # marks the file as fptq's own
    plt.close(fig)
