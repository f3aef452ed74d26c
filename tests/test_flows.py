"""Inverse autoregressive flow steps: triangular Jacobians, exact log-determinants, inverses."""

import gc
import weakref

import pyro.distributions as dist
import pytest
import torch
from torch.distributions import kl_divergence

from lvmtoolkit import flows
from lvmtoolkit.core.runtime import take_rows
from lvmtoolkit.errors import LvmError
from lvmtoolkit.flows import (
    AutoregressiveConvCell,
    BatchedAutoregressiveCell,
    GaussianFlow,
    autoregressive_masks,
    image_shape,
)


def perturbed(cell: torch.nn.Module, seed: int = 0, scale: float = 0.5) -> torch.nn.Module:
    """The cell in float64 with every weight random (a fresh cell is the identity)."""
    generator = torch.Generator().manual_seed(seed)
    cell = cell.double()
    with torch.no_grad():
        for param in cell.parameters():
            param.copy_(scale * torch.randn(param.shape, generator=generator, dtype=param.dtype))
    if isinstance(cell, BatchedAutoregressiveCell):
        cell.zero_outside_masks()  # written by hand: restore the zeros its forward relies on
    return cell


def shared(event_shape, reverse=False, context_channels=0):
    return perturbed(
        AutoregressiveConvCell(event_shape, 6, context_channels=context_channels, reverse=reverse)
    )


def batched(event_shape, reverse=False, num=3):
    return perturbed(BatchedAutoregressiveCell.identity(num, event_shape, 7, reverse=reverse), 1)


def transforms_of(kind: str, event_shape, reverse: bool):
    """(transform for all rows, transform for row i alone) of each kind of cell."""
    torch.manual_seed(0)
    num = 3
    if kind == "shared":
        cell = shared(event_shape, reverse)
        return cell.condition(), lambda i: cell.condition()
    if kind == "context":
        cell = shared(event_shape, reverse, context_channels=2)
        _, height, width = image_shape(event_shape)
        context = torch.randn(num, 2, height, width, dtype=torch.float64)
        return cell.condition(context), lambda i: cell.condition(context[i : i + 1])
    cell = batched(event_shape, reverse, num)
    return cell.transform(), lambda i: cell.transform(slice(i, i + 1))


CASES = [
    (kind, shape, reverse)
    for kind in ("shared", "context", "batched")
    for shape in ((5,), (2, 3, 3))
    for reverse in (False, True)
    if not (kind == "context" and len(shape) == 1)
]
IDS = [f"{k}-{'x'.join(map(str, s))}-{'rev' if r else 'fwd'}" for k, s, r in CASES]


@pytest.mark.parametrize(("kind", "event_shape", "reverse"), CASES, ids=IDS)
def test_log_det_matches_the_numerical_jacobian(kind, event_shape, reverse):
    transform, row = transforms_of(kind, event_shape, reverse)
    z = torch.randn(3, *event_shape, dtype=torch.float64)
    log_det = transform.log_abs_det_jacobian(z, transform(z))
    assert log_det.shape == (3,)
    for i in range(3):
        step = row(i)

        def f(v, step=step):
            return step(v.view(1, *event_shape)).flatten()

        jacobian = torch.autograd.functional.jacobian(f, z[i].flatten())
        sign, numerical = torch.linalg.slogdet(jacobian)
        assert sign > 0
        assert log_det[i].item() == pytest.approx(numerical.item(), abs=1e-9)


@pytest.mark.parametrize(("kind", "event_shape", "reverse"), CASES, ids=IDS)
def test_inverse_of_forward_is_the_identity(kind, event_shape, reverse):
    transform, _ = transforms_of(kind, event_shape, reverse)
    z = torch.randn(3, *event_shape, dtype=torch.float64)
    y = transform(z)
    # a clone is not the cached output, so this runs the coordinate-wise inversion
    assert torch.allclose(transform.inv(y.clone()), z, atol=1e-10)
    assert torch.allclose(transform(transform.inv(y.clone())), y, atol=1e-10)


def test_the_jacobian_is_triangular_in_raster_then_channel_order():
    cell = shared((2, 3, 3))
    step = cell.condition()
    z = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(
        lambda v: step(v.view(1, 2, 3, 3)).flatten(), z.flatten()
    )
    # flattened (c, h, w) -> position in the autoregressive order (pixel-major, channel-minor)
    order = torch.arange(18).view(2, 3, 3).permute(1, 2, 0).flatten()
    in_order = jacobian[order][:, order]
    assert torch.count_nonzero(in_order.triu(1)) == 0
    assert torch.count_nonzero(in_order.tril(-1)) > 0  # and it is not just diagonal


def test_masks_shapes_and_strictness():
    first, second = autoregressive_masks(channels=3, hidden=5, kernel_size=3)
    assert first.shape == (5, 3, 3, 3) and second.shape == (6, 5, 3, 3)
    assert first[:, :, 2, :].sum() == 0 and first[:, :, 1, 2].sum() == 0  # no future pixel
    assert second[:, :, 1, 1][0].sum() == 0  # channel 0's shift sees nothing at its own pixel
    with pytest.raises(LvmError, match="odd"):
        autoregressive_masks(3, 5, 2)


@pytest.mark.parametrize("hidden", [3, 8, 49, 200])
def test_every_input_reaches_a_later_output_however_narrow_the_layer(hidden):
    first, second = (m[:, :, 0, 0] for m in autoregressive_masks(50, hidden, 1))
    reach = second @ first  # (2C, C): paths from input j to the shift/log-scale of channel i
    reach = reach[:50] + reach[50:]
    assert torch.count_nonzero(reach.triu()) == 0  # strictly autoregressive
    assert (reach.sum(dim=0)[:-1] > 0).all()  # every input but the last feeds some output
    if hidden > 1:
        assert (reach.sum(dim=1)[1:] > 0).all()  # every output but the first sees some input


def test_masks_of_wide_layers_are_unchanged_by_the_narrow_rule():
    # degrees 0..C-2 repeated: what every existing checkpoint's cells were built with
    first, _ = autoregressive_masks(10, 40, 1)
    degrees = first[:, :, 0, 0].sum(dim=1) - 1
    assert torch.equal(degrees, (torch.arange(40) % 9).float())


def test_identity_cells_start_as_the_identity():
    cell = BatchedAutoregressiveCell.identity(4, (3, 5, 5), 6, reverse=True)
    step = cell.transform()
    z = torch.randn(4, 3, 5, 5)
    assert torch.equal(step(z), z)
    assert torch.equal(step.log_abs_det_jacobian(z, step(z)), torch.zeros(4))


def test_per_datapoint_copy_computes_what_the_shared_cell_computes():
    cell = shared((2, 4, 4), context_channels=3)
    context = torch.randn(5, 3, 4, 4, dtype=torch.float64)
    z = torch.randn(5, 2, 4, 4, dtype=torch.float64)
    copy = cell.per_datapoint(5, context)
    assert copy.num_datapoints == 5
    assert torch.allclose(copy.transform()(z), cell.condition(context)(z), atol=1e-12)


def test_each_datapoint_has_its_own_flow_parameters():
    cell = batched((4,), num=3)
    z = torch.randn(3, 4, dtype=torch.float64)
    cell.transform()(z)[1].sum().backward()
    for param in cell.parameters():
        assert param.grad[1].abs().sum() > 0
        assert torch.count_nonzero(param.grad[0]) == 0 and torch.count_nonzero(param.grad[2]) == 0


def test_rows_may_repeat_datapoints():
    cell = batched((2, 3, 3), num=3)
    z = torch.randn(1, 2, 3, 3, dtype=torch.float64).expand(4, -1, -1, -1)
    out = cell.transform(torch.tensor([2, 0, 2, 1]))(z)
    assert torch.equal(out[0], out[2])
    assert torch.allclose(out[1], cell.transform(slice(0, 1))(z[:1])[0])


def test_transformed_distribution_scores_samples_without_inverting():
    cell = batched((2, 3, 3), num=3)
    base = dist.Normal(
        torch.zeros(3, 2, 3, 3, dtype=torch.float64), torch.ones(3, 2, 3, 3, dtype=torch.float64)
    ).to_event(3)
    q = dist.TransformedDistribution(base, [cell.transform(), cell.transform()])
    torch.manual_seed(0)
    y = q.rsample()
    cached = q.log_prob(y)  # from the cached pairs
    inverted = q.log_prob(y.clone())  # through the inversion
    assert cached.shape == (3,)
    assert torch.allclose(cached, inverted, atol=1e-9)


def test_a_scored_flow_is_freed_without_the_cycle_collector():
    # torch's Transform.inv and its inverse refer to each other; with the draws and their
    # graphs cached on the step, such cycles held gigabytes until a collection ran.
    cell = batched((2, 3, 3), num=3)
    base = dist.Normal(
        torch.zeros(3, 2, 3, 3, dtype=torch.float64), torch.ones(3, 2, 3, 3, dtype=torch.float64)
    ).to_event(3)
    step = cell.transform()
    q = dist.TransformedDistribution(base, [step])
    y = q.rsample()
    q.log_prob(y.clone())  # goes through step.inv
    assert step.inv.inv is step
    freed = weakref.ref(step)
    gc.disable()
    try:
        del q, step
        assert freed() is None
    finally:
        gc.enable()


def test_a_context_cell_needs_its_context():
    cell = AutoregressiveConvCell((2, 3, 3), 4, context_channels=2)
    with pytest.raises(LvmError, match="context"):
        cell.condition()


def normals(num=3, shape=(2, 3, 3), loc=0.0, scale=1.0):
    zeros = torch.zeros(num, *shape, dtype=torch.float64)
    return dist.Normal(zeros + loc, zeros + scale).to_event(len(shape))


def test_gaussian_flow_kl_is_exact_at_the_identity():
    cell = BatchedAutoregressiveCell.identity(3, (2, 3, 3), 4).double()
    q = GaussianFlow(normals(loc=0.3, scale=0.7), [cell.transform()])
    p = normals()
    q.rsample()
    assert torch.allclose(kl_divergence(q, p), kl_divergence(q.base_dist, p))


def test_gaussian_flow_kl_is_unbiased_and_lower_variance_near_the_identity():
    cell = perturbed(BatchedAutoregressiveCell.identity(3, (2, 3, 3), 7), seed=1, scale=0.1)
    p = normals()
    torch.manual_seed(0)
    estimates, monte_carlo = [], []
    with torch.no_grad():
        for _ in range(3000):
            q = GaussianFlow(normals(loc=0.3, scale=0.7), [cell.transform()])
            z = q.rsample()
            estimates.append(kl_divergence(q, p))
            monte_carlo.append(q.log_prob(z) - p.log_prob(z))
    estimates, monte_carlo = torch.stack(estimates), torch.stack(monte_carlo)
    standard_error = monte_carlo.std(0) / 3000**0.5
    assert ((estimates.mean(0) - monte_carlo.mean(0)).abs() < 4 * standard_error).all()
    assert (estimates.std(0) < monte_carlo.std(0)).all()


def test_gaussian_flow_kl_needs_a_draw_and_a_normal_prior():
    cell = BatchedAutoregressiveCell.identity(3, (2, 3, 3), 4).double()
    q = GaussianFlow(normals(), [cell.transform()])
    with pytest.raises(NotImplementedError):
        kl_divergence(q, normals())  # nothing drawn yet: Pyro falls back to log p - log q
    assert q.expand((3,)) is q
    with pytest.raises(LvmError, match="one set of weights per row"):
        q.expand((2, 3))
    with pytest.raises(LvmError, match="one sample per row"):
        q.rsample((2,))


def test_per_datapoint_weights_stay_zero_outside_their_masks():
    # The batched cell's forward pass skips the mask multiply, so its weights must hold
    # zeros there: after construction, after loading any state dict, after optimiser steps.
    cell = BatchedAutoregressiveCell.identity(3, (2, 3, 3), 5)
    first, second = autoregressive_masks(2, 5, 3)
    state = {k: torch.randn_like(v) for k, v in cell.state_dict().items()}
    cell.load_state_dict(state)
    assert (cell.w1[:, first == 0] == 0).all() and (cell.w2[:, second == 0] == 0).all()
    assert torch.equal(cell.w1, state["w1"] * first)
    parent = torch.nn.ModuleDict({"site": torch.nn.ModuleList([cell])})  # as results load
    parent.load_state_dict({f"site.0.{k}": v for k, v in state.items()})
    assert torch.equal(cell.w2, state["w2"] * second)
    optimizer = torch.optim.Adam(cell.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        cell.transform()(torch.randn(3, 2, 3, 3)).pow(2).sum().backward()
        optimizer.step()
    assert (cell.w1[:, first == 0] == 0).all() and (cell.w2[:, second == 0] == 0).all()
    assert (cell.w2[:, second == 1] != 0).any()  # the unmasked weights did move
    # ... and computes what multiplying by the masks computes, value and gradient.
    z = torch.randn(3, 2, 3, 3)
    weights = [p.detach().clone().requires_grad_() for p in (cell.w1, cell.b1, cell.w2, cell.b2)]
    plain = flows._conditioner(tuple(weights), (first, second), 3.0)(z)
    skipped = flows._conditioner(tuple(weights), (first, second), 3.0, zero_outside=True)(z)
    assert all(torch.equal(a, b) for a, b in zip(plain, skipped, strict=True))
    grads = [torch.autograd.grad(sum(o.sum() for o in out), weights) for out in (plain, skipped)]
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


def test_take_rows_returns_the_tensor_itself_for_all_rows():
    tensor = torch.arange(12.0).view(4, 3)
    assert take_rows(tensor, slice(None)) is tensor
    assert take_rows(tensor, slice(0, 4)) is tensor
    assert torch.equal(take_rows(tensor, slice(1, 3)), tensor[1:3])
    assert torch.equal(take_rows(tensor, torch.tensor([3, 0, 3])), tensor[[3, 0, 3]])
