"""A decoded token's and a prefill's linears on several threads (:mod:`fptq.runtime.decode`) give the bits of
one serial call each.

The linears are the runtime's stacked blocked tuples (:func:`fptq.runtime.linears.stack_linears`) of real
W4A8 linears quantized by the reference; block counts are odd and unequal (the two halves cut through a
linear), one linear has a static activation scale (it gets its own quantized input), and a NaN in the
input is counted as the serial calls count it.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numba")

from fptq import spec  # noqa: E402
from fptq.models.qlinear import W4A8Linear  # noqa: E402
from fptq.runtime import decode  # noqa: E402
from fptq.runtime import forward as fw  # noqa: E402
from fptq.runtime.linears import stack_linears  # noqa: E402


def _linears(rng, n: int, k: int, layers: int, bias: bool, static: float | None = None) -> tuple:
    """One slot's stacked tuple of ``layers`` random W4A8 linears [n, k], group 32, asymmetric."""
    mods = []
    for _ in range(layers):
        lin = torch.nn.Linear(k, n, bias=bias)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(rng.standard_normal((n, k)).astype(np.float32)))
        policy = spec.ActPolicy.DYNAMIC if static is None else spec.ActPolicy.STATIC
        mods.append(W4A8Linear.from_linear(lin, policy, None if static is None else np.float32(static), 32,
                                           spec.WeightFormat.ASYMMETRIC, backend="numba"))
    return stack_linears(mods, "test", threads=2)


@pytest.fixture(scope="module")
def slots():
    rng = np.random.default_rng(3)
    k = 96
    return k, (_linears(rng, 80, k, 2, True), _linears(rng, 23, k, 2, True, static=0.05),
               _linears(rng, 48, k, 2, False))


@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("m", [1, 3])
def test_group_on_threads_equals_the_serial_calls(slots, count, m):
    k, lins = slots
    x = (np.random.default_rng(m).standard_normal((m, k)) * 3).astype(np.float32)
    for layer, parts in ((0, 2), (1, 2), (1, 3), (0, 7)):          # 7 parts: some threads get no block
        got = decode.group(x, *lins, count, layer, parts)
        for i in range(count):
            want, bad = fw.linear_serial(x, lins[i], layer)
            assert bad == 0
            assert got[i].shape == want.shape and got[i].flags.c_contiguous
            assert np.array_equal(got[i].view(np.uint32), want.view(np.uint32)), f"linear {i}, layer {layer}"
        assert got[3] == 0
        ys = fw.linear_group(x, *lins, count, layer, 2, 1 << 62, 0)           # the forward's entry, split
        assert all(np.array_equal(ys[i], got[i]) for i in range(count))


@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("m", [9, 70])                # a prefill: more rows than a tile, 70 past M_CHUNK
def test_prefill_group_equals_the_serial_calls(slots, count, m):
    k, lins = slots
    x = (np.random.default_rng(m).standard_normal((m, k)) * 3).astype(np.float32)
    parts = decode.prefill_parts(*lins, count)
    assert parts == -(-sum(lin[0].shape[1] for lin in lins[:count]) // lins[0][10])
    for layer in (0, 1):
        ys = fw.linear_group(x, *lins, count, layer, 2, 0, decode.NEVER)   # the forward's prefill entry
        for p in (parts, 2, 5):
            got = decode.group(x, *lins, count, layer, p)
            for i in range(count):
                want, bad = fw.linear_serial(x, lins[i], layer)
                assert bad == 0
                assert np.array_equal(got[i].view(np.uint32), want.view(np.uint32)), f"linear {i}, parts {p}"
                assert np.array_equal(ys[i].view(np.uint32), want.view(np.uint32)), f"linear {i}, forward"
        assert ys[3] == 0


def test_a_nonfinite_input_row_is_counted_per_linear(slots):
    k, lins = slots
    x = np.ones((2, k), np.float32)
    x[1, 5] = np.nan
    assert decode.group(x, *lins, 3, 0, 2)[3] == sum(fw.linear_serial(x, lin, 0)[1] for lin in lins) == 3
    xp = np.ones((12, k), np.float32)                   # a prefill's rows: the parallel quantizer counts them
    xp[[3, 11], 7] = np.inf
    assert decode.group(xp, *lins, 3, 0, 4)[3] == sum(fw.linear_serial(xp, lin, 0)[1] for lin in lins) == 6


def test_split_tuner_uses_the_faster_mode_and_retries_the_other():
    from fptq.runtime.tuning import SplitTuner

    dims = np.array([0, 0, 0, 0, 0, 0, 2, 0, 1000], np.int64)
    tuner = SplitTuner(dims)
    cost = {True: 1.0, False: 2.0}                       # split twice as fast
    modes = []
    for _ in range(200):
        mode = tuner.pick()
        assert dims[8] == (1000 if mode else decode.NEVER)
        modes.append(mode)
        tuner.record(mode, cost[mode])
    assert modes[:2] == [True, False] and modes.count(False) <= 6      # probes back off: 16, 32, 64, ...
    cost = {True: 5.0, False: 1.0}                       # the machine got busy: serial now faster
    later = []
    for _ in range(400):
        mode = tuner.pick()
        later.append(mode)
        tuner.record(mode, cost[mode])
    assert later[-100:].count(True) <= 2 and tuner.prefer is False
    one = SplitTuner(np.array([0, 0, 0, 0, 0, 0, 1, 0, 1000], np.int64))   # one thread: nothing to choose
    assert not one.active and one.pick() is True


def test_split_tuner_is_not_flipped_by_one_fast_token():
    """A retry that wins once (noise) runs once more and flips the choice only if it wins again: one fluke
    serial token while split is faster leaves split preferred; serial winning twice in a row takes over."""
    from fptq.runtime.tuning import SplitTuner

    tuner = SplitTuner(np.array([0, 0, 0, 0, 0, 0, 2, 0, 1000], np.int64))
    cost = {True: 1.0, False: 2.0}
    fluke_at = None
    modes = []
    for _ in range(120):
        mode = tuner.pick()
        modes.append(mode)
        t = cost[mode]
        if mode is False and fluke_at is None and len(modes) > 10:
            t, fluke_at = 0.9, len(modes)                  # one serial retry token measured 10% faster than split
        tuner.record(mode, t)
    assert fluke_at is not None and tuner.prefer is True
    assert modes[fluke_at:].count(False) <= 2              # its confirmation token, not 16 serial ones (17 before)
    cost = {True: 1.0, False: 0.5}                         # serial really faster now
    later = []
    for _ in range(200):
        mode = tuner.pick()
        later.append(mode)
        tuner.record(mode, cost[mode])
    assert tuner.prefer is False and later[-50:].count(True) <= 1
