"""Training losses (ℓ2, LPIPS(VGG), CSD) and the trainable LoRA layers (peft), on tiny models."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tiny_models import tiny_unet

from pisa_core.errors import PiSAError
from pisa_core.model.lora import LoRAFamily, lora_delta, release_target_modules
from pisa_core.train import losses as L
from pisa_core.train.lora import install_lora
from pisa_core.train.lpips import LPIPS, TAP_CHANNELS, load_lpips

SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


# ----------------------------------------------------------------------------- diffusion helpers


def test_alphas_cumprod_matches_the_scaled_linear_schedule():
    abar = L.alphas_cumprod({"_class_name": "DDPMScheduler", **SCHEDULER})
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    assert abar.dtype == torch.float32 and abar.shape == (1000,)
    assert np.allclose(abar.numpy(), np.cumprod(1 - betas), rtol=1e-5)


def test_x0_from_eps_inverts_add_noise():
    g = torch.Generator().manual_seed(0)
    z0, n = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    abar_t = torch.tensor([0.9, 0.3])
    z_t = L.add_noise(z0, n, abar_t)
    assert torch.allclose(L.x0_from_eps(z_t, n, abar_t), z0, atol=1e-5)


def test_cfg_eps_endpoints():
    u, c = torch.zeros(3), torch.ones(3)
    assert torch.equal(L.cfg_eps(u, c, 0.0), u) and torch.equal(L.cfg_eps(u, c, 1.0), c)
    assert torch.allclose(L.cfg_eps(u, c, 7.5), torch.full((3,), 7.5))


# ----------------------------------------------------------------------------- CSD


def test_csd_step_moves_z_towards_the_cfg_estimate():
    """With an unconditional estimate at z itself, one descent step on the CSD loss moves z_H
    towards x0(ε_cfg)."""
    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 4, 8, 8, generator=g, requires_grad=True)
    x0_cfg = torch.randn(2, 4, 8, 8, generator=g)
    grad = L.csd_gradient(z.detach(), z.detach(), x0_cfg)
    loss = L.csd_loss_from_gradient(z, grad)
    (dz,) = torch.autograd.grad(loss, z)
    before = (z.detach() - x0_cfg).norm()
    after = (z.detach() - 10.0 * dz - x0_cfg).norm()
    assert after < before
    # the loss gradient is exactly 2·grad/numel (stop-gradient surrogate)
    assert torch.allclose(dz, 2 * grad / z.numel(), atol=1e-7)


def test_csd_weight_normalises_by_the_mean_distance():
    z = torch.zeros(2, 1, 2, 2)
    x0_cfg = torch.stack([torch.full((1, 2, 2), 1.0), torch.full((1, 2, 2), 4.0)])
    x0_uncond = torch.zeros_like(z)
    grad = L.csd_gradient(z, x0_uncond, x0_cfg)
    # w = mean|z - x0_cfg| = 1 and 4; grad = (0 - x0_cfg) / w = -1 for both samples
    assert torch.allclose(grad, torch.full_like(z, -1.0))


@pytest.fixture(scope="module")
def unet():
    return tiny_unet()


def test_csd_loss_with_a_unet_points_from_uncond_to_cfg(unet):
    abar = L.alphas_cumprod(SCHEDULER)
    g = torch.Generator().manual_seed(0)
    z_h = torch.randn(2, 4, 8, 8, generator=g, requires_grad=True)
    cond, uncond = torch.randn(2, 77, 32, generator=g), torch.randn(2, 77, 32, generator=g)

    def base_eps(z_t, t, embeds):
        return unet(z_t, t, encoder_hidden_states=embeds).sample

    loss, info = L.csd_loss(z_h, base_eps, cond, uncond, abar, generator=torch.Generator().manual_seed(5))
    (dz,) = torch.autograd.grad(loss, z_h)
    assert ((info.timesteps >= 20) & (info.timesteps < 500)).all()
    direction = info.x0_cfg - info.x0_uncond
    assert float((-dz * direction).sum()) > 0
    assert torch.allclose(dz, 2 * info.grad / z_h.numel(), atol=1e-7)
    # same generator state -> same draw
    loss2, info2 = L.csd_loss(z_h, base_eps, cond, uncond, abar, generator=torch.Generator().manual_seed(5))
    assert torch.equal(info.timesteps, info2.timesteps) and torch.equal(loss, loss2)


def test_l2_loss():
    a, b = torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.5)
    assert float(L.l2_loss(a, b)) == pytest.approx(0.25)


# ----------------------------------------------------------------------------- LPIPS


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory):
    """Random VGG16 + heads in torchvision/lpips-package naming, as two files and as one."""
    root = tmp_path_factory.mktemp("lpips")
    g = torch.Generator().manual_seed(0)
    model = LPIPS()
    vgg, heads, slices = {}, {}, {}
    slice_of = [(1, 4), (2, 9), (3, 16), (4, 23), (5, 30)]
    for key, value in model.state_dict().items():
        if key.startswith("lins."):
            k = int(key.split(".")[1])
            heads[f"lin{k}.model.1.weight"] = torch.rand(value.shape, generator=g) * 0.1
        else:
            index = int(key.split(".")[2])
            tensor = torch.randn(value.shape, generator=g) * (0.05 if key.endswith("weight") else 0.01)
            vgg[key.replace("net.", "")] = tensor
            number = next(n for n, end in slice_of if index < end)
            slices[f"net.slice{number}.{index}.{key.rsplit('.', 1)[1]}"] = tensor
    torch.save(vgg, root / "vgg16.pth")
    torch.save(heads, root / "vgg_lin.pth")
    save_file({**slices, **heads}, str(root / "lpips_full.safetensors"))
    return root


def test_lpips_loads_local_weights_and_measures_distance(lpips_files):
    model = load_lpips([lpips_files / "vgg16.pth", lpips_files / "vgg_lin.pth"])
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    y = (x + 0.3 * torch.randn(2, 3, 32, 32, generator=g)).clamp(-1, 1)
    d = model(x, y)
    assert d.shape == (2,) and (d > 0).all()
    assert torch.allclose(model(x, x), torch.zeros(2), atol=1e-7)
    assert torch.allclose(model(y, x), d, atol=1e-6)
    # the lpips package's own key names give the same network
    other = load_lpips(lpips_files / "lpips_full.safetensors")
    assert torch.allclose(other(x, y), d, atol=1e-6)


def test_lpips_taps_have_vgg_widths():
    taps = LPIPS().net(torch.zeros(1, 3, 32, 32))
    assert [t.shape[1] for t in taps] == list(TAP_CHANNELS)
    assert [t.shape[-1] for t in taps] == [32, 16, 8, 4, 2]


def test_lpips_errors_name_the_option(lpips_files, tmp_path):
    with pytest.raises(PiSAError, match="--lpips-weights"):
        load_lpips([])
    with pytest.raises(PiSAError, match="--lpips-weights"):
        load_lpips(tmp_path / "missing.pth")
    with pytest.raises(PiSAError, match="heads"):
        load_lpips(lpips_files / "vgg16.pth")


# ----------------------------------------------------------------------------- LoRA layers (peft)


def installed(unet, ranks=None, **kw):
    """A deep copy of `unet` with the pix and sem adapters."""
    import copy

    copied = copy.deepcopy(unet)
    return install_lora(copied, ranks or {"pix": 4, "sem": 4}, {"pix": 8.0, "sem": 8.0}, **kw)


def run(unet, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z, e = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        return unet(z, torch.tensor([1]), encoder_hidden_states=e).sample


def test_lora_install_targets_the_release_modules_and_starts_neutral(unet):
    lora = installed(unet)
    assert list(lora.layers) == release_target_modules(unet)
    assert all(type(layer).__module__.startswith("peft.") for layer in lora.layers.values())
    assert torch.allclose(run(lora.unet), run(unet), atol=1e-6)


def test_lora_a_starts_gaussian_with_std_one_over_rank_and_b_at_zero(unet):
    """The release's init (peft "gaussian"): A ~ N(0, 1/r²), B = 0; peft's default Kaiming-uniform
    A is 1/sqrt(3·fan_in), much smaller at SD2.1 widths."""
    lora = installed(unet, {"pix": 4, "sem": 2}, seed=3)
    for family, rank in (("pix", 4), ("sem", 2)):
        pairs = lora.pairs(family).values()
        A = torch.cat([A.detach().flatten() for A, _ in pairs])
        assert abs(float(A.std()) * rank - 1) < 0.05 and abs(float(A.mean())) < 0.05 / rank
        assert all(B.abs().max() == 0 for _, B in pairs)
    kaiming = installed(unet, seed=3, init="kaiming")
    for A, _ in kaiming.pairs("pix").values():
        bound = 1 / np.sqrt(A[0].numel())  # kaiming_uniform_(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        assert float(A.abs().max()) <= bound + 1e-6
    # seeded and reproducible, and the global RNG is left alone
    before = torch.random.get_rng_state()
    again = installed(unet, {"pix": 4, "sem": 2}, seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(again.pairs("pix").values(), lora.pairs("pix").values()))
    other = installed(unet, {"pix": 4, "sem": 2}, seed=4)
    assert not torch.equal(next(iter(other.pairs("pix").values()))[0], next(iter(lora.pairs("pix").values()))[0])


def test_lora_branches_equal_the_merged_weights_of_inference(unet):
    """peft's adapters and pisa_core.model.lora.lora_delta merged into the weights give the same UNet
    output, so what training optimises is what inference runs."""
    lora = installed(unet, {"pix": 4, "sem": 2})
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for family in ("pix", "sem"):
            for _, B in lora.pairs(family).values():
                B.copy_(0.05 * torch.randn(B.shape, generator=g))
    merged = copy.deepcopy(unet)
    modules = dict(merged.named_modules())
    with torch.no_grad():
        for family in ("pix", "sem"):
            fam = lora.family(family)
            for name, (A, B) in fam.factors.items():
                modules[name].weight.add_(lora_delta(A, B, fam.scale))
    assert torch.allclose(run(lora.unet), run(merged), atol=1e-4)
    with lora.base_unet():
        assert torch.allclose(run(lora.unet), run(unet), atol=1e-6)
    assert lora.active() == {"pix": True, "sem": True}
    assert not torch.allclose(run(lora.unet), run(unet), atol=1e-4)


def test_lora_trainable_family_survives_peft_switches(unet):
    """peft's set_adapter/enable_adapters mark the adapters they touch trainable; the frozen pix
    LoRA of the sem stage must stay frozen through the CSD switch and back."""
    lora = installed(unet)
    lora.set_trainable("sem")
    lora.set_active(pix=True, sem=True)
    with lora.base_unet():
        run(lora.unet)
        assert not any(p.requires_grad for p in lora.parameters("pix"))
    assert all(p.requires_grad for p in lora.parameters("sem"))
    assert not any(p.requires_grad for p in lora.parameters("pix"))
    assert not any(p.requires_grad for n, p in lora.unet.named_parameters() if "lora_" not in n)
    lora.set_active(pix=True, sem=False)
    assert not any(p.requires_grad for p in lora.parameters("pix"))


def test_lora_load_family_checks_shapes_and_scale(unet):
    lora = installed(unet)
    fam = lora.family("pix")
    lora.load_family("sem", fam, "same")
    with pytest.raises(PiSAError, match="--rank-sem"):
        lora.load_family("sem", installed(unet, {"pix": 2, "sem": 4}).family("pix"), "rank 2")
    with pytest.raises(PiSAError, match="--alpha-pix"):
        lora.load_family("pix", LoRAFamily(fam.rank, 4.0, fam.factors), "alpha 4")
