"""The static-activation preset (issue 23): ``fptq quantize --activations static`` plans no per-token dynamic
group (``policy_select="all_static"``), records it in the checkpoint, ``fptq report`` shows and checks it, and
the flags that contradict it are refused before any work."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import fptq.cli_quantize  # noqa: E402
import fptq.reference.plan as plan_mod  # noqa: E402
from fptq.cli import build_parser, main  # noqa: E402
from fptq.cli_presets import ACTIVATION_PRESETS, activation_line, resolve_presets  # noqa: E402
from fptq.models.checkpoint import read_metadata  # noqa: E402
from fptq.models.config import QuantConfig  # noqa: E402
from fptq.models.quantize import quantize_model  # noqa: E402
from fptq.reference.plan import SELECTION_TABLE, GroupInputs, plan_group  # noqa: E402
from fptq.spec import ActPolicy  # noqa: E402
from fptq.testing import save_tiny_model, tiny_model  # noqa: E402

SMALL = ["--calib", "random", "--samples", "4", "--seq-len", "24", "--group-size", "32", "--quiet"]


def _loud_group(fold_reason=None) -> GroupInputs:
    """One group whose range is far above v1 (band: dynamic), rows with one loud channel."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 16)).astype(np.float32)
    x[:, 3] *= 400.0
    m = np.abs(x).max(axis=0).astype(np.float32)
    w = rng.standard_normal((8, 16)).astype(np.float32)
    return GroupInputs(0, "model.layers.0", "qkv", ("q",), m, weights=lambda: [w], fold_reason=fold_reason,
                       fold_target="norm", judging_rows=lambda: (x, m))


@pytest.mark.parametrize("fold_reason", [None, "the input is rotated at run time"])
def test_all_static_never_plans_dynamic(fold_reason):
    inp = _loud_group(fold_reason)
    for select, per_token in ((s.name, s.per_token) for s in SELECTION_TABLE.values()):
        gp = plan_group(inp, select=select)
        assert gp.band is ActPolicy.DYNAMIC  # v >= v1: every other selection sends it per-token
        assert (gp.policy is ActPolicy.DYNAMIC) == per_token, select
    gp = plan_group(inp, select="all_static")
    assert gp.policy is (ActPolicy.LAE_STATIC if fold_reason is None else ActPolicy.STATIC)
    assert gp.act_scale is not None and gp.err_static is not None and gp.fallback is None
    assert (gp.err_lae is None) == (fold_reason is not None)


def test_a_dynamic_group_slipping_into_all_static_is_an_error(monkeypatch):
    """The planner checks the selection's promise where it is kept: a planted slip is caught."""
    monkeypatch.setattr(plan_mod, "select_by_error", lambda *a, **k: ActPolicy.DYNAMIC)
    with pytest.raises(RuntimeError, match="never plans per-token dynamic"):
        plan_group(_loud_group(), select="all_static")
    assert plan_group(_loud_group(), select="error").policy is ActPolicy.DYNAMIC  # the others may
    assert plan_group(_loud_group(), select="all_static", force="dynamic").policy is ActPolicy.DYNAMIC  # forced


@pytest.mark.parametrize("rotate", ["online", "none"])
def test_tiny_model_with_all_static_has_no_dynamic_group(rotate):
    """A tiny llama whose default plan has per-token dynamic groups (and, rotated online, LAE groups that
    cannot fold): the preset's plan has none, every group with a static scale in the quantized model."""
    ids = torch.randint(3, 259, (4, 24), generator=torch.Generator().manual_seed(0))
    plans = {}
    for select in ("error", "all_static"):
        cfg = QuantConfig(group_size=32, policy_select=select, keep_rows=64, rotate=rotate)
        plans[select] = quantize_model(tiny_model("llama"), ids, cfg, backend="numpy", mode="fake_quant",
                                       progress=False)
    assert plans["error"].plan.counts()["dynamic"] > 0  # the test model needs per-token dynamic by default
    res = plans["all_static"]
    assert any(g.band is ActPolicy.DYNAMIC for g in res.plan.groups)
    assert res.plan.counts()["dynamic"] == 0 and res.plan.counts()["fallback"] == 0
    assert all(g.act_scale is not None for g in res.plan.groups)
    from fptq.models.qlinear import quantized_linears

    layers = quantized_linears(res.model)
    assert layers and all(q.policy is not ActPolicy.DYNAMIC and q.act_scale is not None for q in layers.values())
    with torch.no_grad():
        assert torch.isfinite(res.model(ids).logits).all()


def test_quantize_activations_static_checkpoint_and_report(tmp_path, capsys):
    src = save_tiny_model(tmp_path / "tiny-llama", "llama")
    out = tmp_path / "static"
    assert main(["quantize", str(src), "--out", str(out), *SMALL, "--activations", "static"]) == 0
    meta = read_metadata(out)
    assert meta["quant_config"]["policy_select"] == "all_static"
    policies = [e["policy"] for e in meta["layers"].values()]
    assert policies and "dynamic" not in policies
    assert "dynamic" in {e["band"] for e in meta["layers"].values()}  # the bands alone would have some
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    line = [s for s in capsys.readouterr().out.splitlines() if s.startswith("activations:")]
    n_groups = len({(e.get("layer"), e.get("group")) for e in meta["layers"].values()})
    assert line == [f"activations: all_static ({SELECTION_TABLE['all_static'].label}; fptq quantize --activations "
                    f"static); 0 of {n_groups} groups per-token dynamic"]


def test_report_refuses_a_static_checkpoint_holding_a_dynamic_group():
    rows = [{"layer": 0, "group": "qkv", "policy": "static"}, {"layer": 1, "group": "down", "policy": "dynamic"}]
    with pytest.raises(ValueError, match="never plans per-token dynamic.*1 of 2.*layer 1 down"):
        activation_line({"policy_select": "all_static"}, rows)
    assert activation_line({"policy_select": "error", "v1": 150.0}, rows).endswith("; 1 of 2 groups per-token dynamic")
    assert "'someday'" in activation_line({"policy_select": "someday"}, rows)


def _parsed(*flags):
    return resolve_presets(build_parser().parse_args(["quantize", "--out", "x", *flags]))


def test_activations_flag_parses_to_its_preset():
    assert tuple(ACTIVATION_PRESETS) == ("static",)
    a = _parsed("--activations", "static")
    assert (a.policy_select, a.v1) == ("all_static", QuantConfig().v1)
    a = _parsed()
    assert (a.activations, a.policy_select, a.v1) == (None, "error", 150.0)  # the defaults, as QuantConfig's
    a = _parsed("--policy-select", "bands", "--v1", "100")
    assert (a.policy_select, a.v1) == ("bands", 100.0)
    assert _parsed("--policy-select", "all_static").policy_select == "all_static"


@pytest.mark.parametrize("flags, named", [
    (["--policy-select", "error"], "--policy-select error"),
    (["--policy-select", "all_static"], "--policy-select all_static"),
    (["--v1", "150"], "--v1 150.0"),
])
def test_contradicting_flags_are_refused_before_any_work(flags, named, monkeypatch, tmp_path, capsys):
    ran = []
    monkeypatch.setattr(fptq.cli_quantize, "run_quantize", lambda *a: ran.append(a) or 0)
    out = tmp_path / "never"
    assert main(["quantize", "--out", str(out), "--activations", "static", *flags]) == 2
    err = capsys.readouterr().err
    assert f"--activations static cannot be combined with {named}" in err and len(err.strip().splitlines()) == 1
    assert ran == [] and not out.exists()
    assert main(["quantize", "--out", str(out), *flags]) == 0 and len(ran) == 1  # each alone is fine


def test_unknown_activations_preset_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["quantize", "--out", "x", "--activations", "dynamic"])
    assert e.value.code == 2 and "invalid choice: 'dynamic'" in capsys.readouterr().err
