"""Named presets of ``fptq quantize``: one flag that sets several settings, refuses the flags that contradict it,
and the line of ``fptq report`` that shows a checkpoint kept it.

One table, :data:`ACTIVATION_PRESETS` (``--activations NAME``); each :class:`Preset` says which settings it sets
(parsed-flag names, the :class:`~fptq.models.config.QuantConfig` fields of the same name) and which flags it
refuses, with why. The policy choices themselves live in the planner's table,
:data:`fptq.reference.plan.SELECTION_TABLE`: a preset names a row of it.

``--activations static`` is the hardware preset of issue 23: every activation is per-tensor static INT8
(static, or LAE + static where ``1/s`` folds), whatever its range, chosen by the held-out error
(``policy_select="all_static"``): no group is per-token dynamic, so the runtime does no per-token reduction.
The planner raises if a dynamic group appears anyway (:func:`fptq.reference.plan.plan_group`), the checkpoint
records ``quant_config.policy_select`` and every group's policy, and ``fptq report`` checks the two agree
(:func:`activation_line`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .models.config import QuantConfig
from .reference.plan import SELECTION_TABLE

__all__ = ["Preset", "ACTIVATION_PRESETS", "add_preset_arguments", "resolve_presets", "activation_line"]


@dataclass(frozen=True)
class Preset:
    """One ``--activations`` choice.

    Attributes:
        name: the flag's value. help: what it means, for ``--help``.
        settings: parsed-flag name -> the value the preset gives it (QuantConfig fields of the same name).
        refuses: parsed-flag name -> ``(the flag as written, why it contradicts the preset)``.
    """

    name: str
    help: str
    settings: dict
    refuses: dict


#: the presets of ``--activations``
ACTIVATION_PRESETS = {p.name: p for p in (
    Preset("static", "every activation per-tensor static INT8 (static or LAE + static by held-out error, whatever "
           "its range): no per-token dynamic group, no per-token work at run time (--policy-select all_static)",
           settings={"policy_select": "all_static"},
           refuses={"policy_select": ("--policy-select", "the preset sets the policy selection (all_static)"),
                    "v1": ("--v1", "v1 is where per-token dynamic begins, and the preset has none")}),
)}

#: the flags some preset refuses: their parsed default is None, so a flag given on the command line is told
#: apart from its default (which :func:`resolve_presets` fills in from QuantConfig)
_WATCHED = tuple(sorted({dest for p in ACTIVATION_PRESETS.values() for dest in p.refuses}))


def add_preset_arguments(q) -> None:
    """Add ``--activations`` to ``fptq quantize``'s parser ``q`` (after the flags it may refuse)."""
    q.add_argument("--activations", default=None, choices=tuple(ACTIVATION_PRESETS),
                   help="a preset of the activation plan: " + "; ".join(f"{p.name} = {p.help}"
                                                                        for p in ACTIVATION_PRESETS.values()))
    q.set_defaults(**{dest: None for dest in _WATCHED})


def resolve_presets(a):
    """Apply ``a.activations``'s preset to the parsed flags ``a`` (in place; returned): a refused flag given on
    the command line is a ValueError naming both; flags not given get QuantConfig's defaults. Once per
    namespace; a namespace without ``--activations`` (``fptq compare``'s) is returned as it is."""
    if not hasattr(a, "activations") or getattr(a, "presets_resolved", False):
        return a
    a.presets_resolved = True
    preset = ACTIVATION_PRESETS[a.activations] if a.activations is not None else None
    given = {dest: getattr(a, dest) for dest in _WATCHED if getattr(a, dest) is not None}
    if preset is not None:
        for dest, value in given.items():
            if dest in preset.refuses:
                flag, why = preset.refuses[dest]
                raise ValueError(f"--activations {preset.name} cannot be combined with {flag} {value}: {why}")
    for dest in _WATCHED:
        if dest not in given:
            setattr(a, dest, QuantConfig.default(dest))
    if preset is not None:
        for dest, value in preset.settings.items():
            setattr(a, dest, value)
    return a


def activation_line(quant_config: dict, rows: list[dict]) -> str:
    """``fptq report``'s line on the activation plan: the checkpoint's policy selection and how many groups are
    per-token dynamic. A selection that never plans per-token dynamic with a dynamic group in the plan is a
    ValueError (the checkpoint does not keep its promise)."""
    name = quant_config.get("policy_select")
    dynamic = [r for r in rows if r["policy"] == "dynamic"]
    count = f"{len(dynamic)} of {len(rows)} groups per-token dynamic"
    sel = SELECTION_TABLE.get(name)
    if sel is None:
        return f"activations: policy selection {name!r}; {count}"
    if not sel.per_token and dynamic:
        first = dynamic[0]
        raise ValueError(f"the checkpoint's policy selection {name!r} never plans per-token dynamic, but {count} "
                         f"(first: layer {first.get('layer')} {first.get('group')})")
    words = sel.label.format(v0=quant_config.get("v0", 15.0), v1=quant_config.get("v1", 150.0))
    preset = next((p for p in ACTIVATION_PRESETS.values() if p.settings.get("policy_select") == name), None)
    if preset is not None:
        words += f"; fptq quantize --activations {preset.name}"
    return f"activations: {name} ({words}); {count}"
