import pytest
import torch

from pisa_core.errors import PiSAError
from pisa_core.inference.guidance import PISA, PIX, check_lambda, dual_guidance, plan_passes, residual_latent


@pytest.mark.parametrize("lp, ls, branches", [
    (1.0, 1.0, (PISA,)), (0.7, 0.7, (PISA,)), (1.0, 0.0, (PIX,)), (0.3, 0.0, (PIX,)),
    (0.0, 0.0, ()), (0.8, 1.2, (PIX, PISA)), (0.0, 1.0, (PIX, PISA)),
])
def test_pass_planning(lp, ls, branches):
    assert plan_passes(lp, ls).branches == branches


@pytest.mark.parametrize("lp, ls", [(1.0, 1.0), (0.7, 0.7), (1.0, 0.0), (0.0, 0.0), (0.8, 1.2), (0.0, 1.5)])
def test_plan_combination_equals_the_dual_guidance_formula(lp, ls):
    g = torch.Generator().manual_seed(0)
    eps = {PIX: torch.randn(2, 4, 3, 5, generator=g), PISA: torch.randn(2, 4, 3, 5, generator=g)}
    plan = plan_passes(lp, ls)
    combined = plan.combine({k: eps[k] for k in plan.branches}, like=eps[PIX])
    torch.testing.assert_close(combined, dual_guidance(eps[PIX], eps[PISA], lp, ls), rtol=0, atol=1e-6)


def test_residual_latent():
    z, e = torch.ones(1, 4, 2, 2), torch.full((1, 4, 2, 2), 0.25)
    assert torch.equal(residual_latent(z, e), torch.full((1, 4, 2, 2), 0.75))


@pytest.mark.parametrize("value", [10.5, -11.0, 1e30, torch.tensor([[0.5, 12.0], [1.0, 1.0]])])
def test_lambda_beyond_the_stated_range_is_refused(value):
    with pytest.raises(PiSAError, match=r"lambda_sem.* between -10 and 10 \(the paper uses 0 to 1.5\)"):
        check_lambda(value, "lambda_sem")


@pytest.mark.parametrize("value", [10.0, -10.0, 0.0, 1.5])
def test_lambda_at_the_bounds_is_accepted(value):
    assert check_lambda(value, "lambda_pix") == value
    assert check_lambda(torch.full((2, 2), value), "lambda_pix") == value  # a constant map: its number
