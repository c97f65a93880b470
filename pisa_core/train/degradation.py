"""Real-ESRGAN-style second-order degradation with the PiSA-SR release's parameters.

The numbers live in `DegradationConfig` and are the release's (docs/release.md, "Training":
Real-ESRGAN's second-order model at scale 4). Every random choice of one sample is drawn from a
pair of generators (numpy for parameters and kernels, torch for noise) seeded from `(seed, index)`,
so the LQ image of a sample is reproducible on its own, in any worker, in any order.

Images are float32 tensors `[3, H, W]` in [0, 1] on the CPU.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import PiSAError

KERNEL_NAMES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")


@dataclass(frozen=True)
class DegradationConfig:
    """The release's values (docs/release.md, "Training")."""

    scale: int = 4
    kernel_size: int = 21                      # largest kernel; sizes 7, 9, ..., 21 are drawn
    kernel_prob: tuple = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    # first order
    sinc_prob: float = 0.1
    blur_sigma: tuple = (0.2, 3.0)
    betag_range: tuple = (0.5, 4.0)
    betap_range: tuple = (1.0, 2.0)
    resize_prob: tuple = (0.2, 0.7, 0.1)       # up, down, keep
    resize_range: tuple = (0.3, 1.5)
    gaussian_noise_prob: float = 0.5
    noise_range: tuple = (1.0, 15.0)           # sigma in 8-bit levels
    poisson_scale_range: tuple = (0.05, 2.0)
    gray_noise_prob: float = 0.4
    jpeg_range: tuple = (60, 95)
    # second order
    second_blur_prob: float = 0.5
    sinc_prob2: float = 0.1
    blur_sigma2: tuple = (0.2, 1.5)
    betag_range2: tuple = (0.5, 4.0)
    betap_range2: tuple = (1.0, 2.0)
    resize_prob2: tuple = (0.3, 0.4, 0.3)
    resize_range2: tuple = (0.6, 1.2)
    gaussian_noise_prob2: float = 0.5
    noise_range2: tuple = (1.0, 12.0)
    poisson_scale_range2: tuple = (0.05, 1.0)
    gray_noise_prob2: float = 0.4
    jpeg_range2: tuple = (60, 100)
    final_sinc_prob: float = 0.8


class SampleRNG:
    """The two generators of one sample, derived from (seed, index) only."""

    def __init__(self, seed: int, index: int):
        seq = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index) & 0xFFFFFFFFFFFF])
        self.np = np.random.default_rng(seq)
        self.torch = torch.Generator().manual_seed(int(seq.generate_state(1, np.uint64)[0] >> np.uint64(1)))

    def uniform(self, low: float, high: float) -> float:
        return float(self.np.uniform(low, high))

    def chance(self, p: float) -> bool:
        return bool(self.np.uniform() < p)

    def choice(self, options, p=None):
        return options[int(self.np.choice(len(options), p=p))]


# ----------------------------------------------------------------------------- kernels


def _grid(size: int) -> np.ndarray:
    """Pixel offsets from the kernel centre, [size, size, 2] (x, y)."""
    ax = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    xx, yy = np.meshgrid(ax, ax)
    return np.stack([xx, yy], axis=-1)


def _quadratic_form(size: int, sigma_x: float, sigma_y: float, rotation: float) -> np.ndarray:
    """x^T Σ^-1 x with Σ = R diag(σx², σy²) R^T (the bivariate Gaussian exponent)."""
    rot = np.array([[math.cos(rotation), -math.sin(rotation)], [math.sin(rotation), math.cos(rotation)]])
    cov = rot @ np.diag([sigma_x**2, sigma_y**2]) @ rot.T
    inv = np.linalg.inv(cov)
    xy = _grid(size)
    return np.einsum("hwi,ij,hwj->hw", xy, inv, xy)


def gaussian_kernel(size, sigma_x, sigma_y, rotation) -> np.ndarray:
    """Bivariate Gaussian: k ∝ exp(-½ xᵀΣ⁻¹x)."""
    k = np.exp(-0.5 * _quadratic_form(size, sigma_x, sigma_y, rotation))
    return k / k.sum()


def generalized_gaussian_kernel(size, sigma_x, sigma_y, rotation, beta) -> np.ndarray:
    """Generalised Gaussian: k ∝ exp(-½ (xᵀΣ⁻¹x)^β) (Real-ESRGAN, shape parameter β_g)."""
    k = np.exp(-0.5 * np.power(_quadratic_form(size, sigma_x, sigma_y, rotation), beta))
    return k / k.sum()


def plateau_kernel(size, sigma_x, sigma_y, rotation, beta) -> np.ndarray:
    """Plateau-shaped: k ∝ 1 / (1 + (xᵀΣ⁻¹x)^β) (Real-ESRGAN, shape parameter β_p)."""
    k = 1.0 / (np.power(_quadratic_form(size, sigma_x, sigma_y, rotation), beta) + 1.0)
    return k / k.sum()


def sinc_kernel(size: int, omega_c: float) -> np.ndarray:
    """Circular low-pass (2-D sinc): k(r) = ω_c J1(ω_c r) / (2π r), k(0) = ω_c² / (4π); ringing/overshoot."""
    r = np.sqrt((_grid(size) ** 2).sum(-1))
    safe = np.where(r == 0, 1.0, r)
    j1 = torch.special.bessel_j1(torch.from_numpy((omega_c * safe).astype(np.float32))).numpy().astype(np.float64)
    k = omega_c * j1 / (2 * math.pi * safe)
    k = np.where(r == 0, omega_c**2 / (4 * math.pi), k)
    return k / k.sum()


def pad_kernel(kernel: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad an odd kernel to `size` x `size` so all kernels of a batch share one shape."""
    pad = (size - kernel.shape[0]) // 2
    return np.pad(kernel, ((pad, pad), (pad, pad))) if pad > 0 else kernel


def _beta(rng: SampleRNG, low: float, high: float) -> float:
    """Shape parameter: half the time below 1, half above (Real-ESRGAN's split of the range)."""
    return rng.uniform(low, 1.0) if rng.chance(0.5) else rng.uniform(1.0, high)


def random_mixed_kernel(rng: SampleRNG, size, kernel_prob, sigma_range, betag_range, betap_range) -> np.ndarray:
    """One of the six kernel families, drawn with `kernel_prob`; iso kinds have σx = σy and no rotation."""
    name = rng.choice(KERNEL_NAMES, p=np.asarray(kernel_prob, dtype=np.float64) / sum(kernel_prob))
    sigma_x = rng.uniform(*sigma_range)
    if name.endswith("aniso"):
        sigma_y, rotation = rng.uniform(*sigma_range), rng.uniform(-math.pi, math.pi)
    else:
        sigma_y, rotation = sigma_x, 0.0
    if name.startswith("generalized"):
        return generalized_gaussian_kernel(size, sigma_x, sigma_y, rotation, _beta(rng, *betag_range))
    if name.startswith("plateau"):
        return plateau_kernel(size, sigma_x, sigma_y, rotation, _beta(rng, *betap_range))
    return gaussian_kernel(size, sigma_x, sigma_y, rotation)


def random_blur_kernel(rng: SampleRNG, cfg: DegradationConfig, second: bool) -> np.ndarray:
    """Blur kernel of one order: sinc with probability sinc_prob, else a mixed kernel; padded to 21."""
    size = int(rng.choice(list(range(7, cfg.kernel_size + 1, 2))))
    if rng.chance(cfg.sinc_prob2 if second else cfg.sinc_prob):
        omega_c = rng.uniform(math.pi / 3, math.pi) if size < 13 else rng.uniform(math.pi / 5, math.pi)
        kernel = sinc_kernel(size, omega_c)
    elif second:
        kernel = random_mixed_kernel(rng, size, cfg.kernel_prob, cfg.blur_sigma2, cfg.betag_range2, cfg.betap_range2)
    else:
        kernel = random_mixed_kernel(rng, size, cfg.kernel_prob, cfg.blur_sigma, cfg.betag_range, cfg.betap_range)
    return pad_kernel(kernel, cfg.kernel_size)


def random_final_sinc(rng: SampleRNG, cfg: DegradationConfig) -> np.ndarray:
    """Final sinc filter with probability final_sinc_prob, else the identity (a pulse)."""
    if rng.chance(cfg.final_sinc_prob):
        size = int(rng.choice(list(range(7, cfg.kernel_size + 1, 2))))
        return pad_kernel(sinc_kernel(size, rng.uniform(math.pi / 3, math.pi)), cfg.kernel_size)
    pulse = np.zeros((cfg.kernel_size, cfg.kernel_size))
    pulse[cfg.kernel_size // 2, cfg.kernel_size // 2] = 1.0
    return pulse


# ----------------------------------------------------------------------------- operators


def filter2d(image: torch.Tensor, kernel: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Convolve each channel of [C,H,W] with a square odd kernel, reflect padding (replicate when too small)."""
    k = torch.as_tensor(kernel, dtype=torch.float32)
    pad = k.shape[-1] // 2
    mode = "reflect" if pad < min(image.shape[-2:]) else "replicate"
    x = F.pad(image[None], (pad, pad, pad, pad), mode=mode)
    c = image.shape[0]
    return F.conv2d(x, k.expand(c, 1, *k.shape), groups=c)[0]


def resize(image: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize [C,H,W] to (h, w) with 'area', 'bilinear' or 'bicubic' (no antialias, as Real-ESRGAN)."""
    size = (max(1, int(size[0])), max(1, int(size[1])))
    kwargs = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(image[None], size=size, mode=mode, **kwargs)[0]


def add_gaussian_noise(image, sigma: float, gray: bool, generator: torch.Generator) -> torch.Tensor:
    """x + n, n ~ N(0, (σ/255)²); gray noise shares one noise map across channels. Clipped to [0, 1]."""
    shape = (1, *image.shape[1:]) if gray else image.shape
    noise = torch.randn(shape, generator=generator) * (sigma / 255.0)
    return (image + noise).clamp(0, 1)


def to_gray(image: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma, [1,H,W]."""
    w = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    return (image * w).sum(0, keepdim=True)


def add_poisson_noise(image, scale: float, gray: bool, generator: torch.Generator) -> torch.Tensor:
    """Shot noise: n = Poisson(v·x)/v − x on the 8-bit-quantised image, v = distinct levels rounded up to a
    power of two; x + scale·n, clipped to [0, 1]. Gray noise is computed on the luma and shared."""
    src = to_gray(image) if gray else image
    src = (src * 255).round().clamp(0, 255) / 255
    levels = max(2, int(torch.count_nonzero(torch.bincount((src * 255).round().long().flatten(), minlength=256))))
    vals = float(2 ** math.ceil(math.log2(levels)))
    noise = torch.poisson(src * vals, generator=generator) / vals - src
    return (image + scale * noise).clamp(0, 1)


def jpeg_compress(image: torch.Tensor, quality: int) -> torch.Tensor:
    """Real JPEG round trip through PIL at `quality` (1-100), 4:2:0 chroma as PIL's default."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array, "RGB").save(buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    decoded = np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(decoded.copy()).permute(2, 0, 1)


def quantize_8bit(image: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to 8-bit levels."""
    return (image.clamp(0, 1) * 255).round() / 255


# ----------------------------------------------------------------------------- pipeline


def _random_noise(image, rng: SampleRNG, gaussian_prob, noise_range, poisson_range, gray_prob):
    if rng.chance(gaussian_prob):
        sigma = rng.uniform(*noise_range)
        return add_gaussian_noise(image, sigma, rng.chance(gray_prob), rng.torch)
    scale = rng.uniform(*poisson_range)
    return add_poisson_noise(image, scale, rng.chance(gray_prob), rng.torch)


def _random_scale(rng: SampleRNG, probs, scale_range) -> float:
    kind = rng.choice(("up", "down", "keep"), p=np.asarray(probs, dtype=np.float64) / sum(probs))
    if kind == "up":
        return rng.uniform(1.0, scale_range[1])
    if kind == "down":
        return rng.uniform(scale_range[0], 1.0)
    return 1.0


def degrade(hq: torch.Tensor, *, seed: int = 0, index: int = 0, config: DegradationConfig | None = None,
            resize_back: bool = True) -> torch.Tensor:
    """Second-order degradation of one HQ image [3,H,W] in [0,1] (H, W multiples of the scale).

    Returns the LQ image: at H/scale x W/scale, or (resize_back, the training input of the release)
    resized back to H x W with a random one of area/bilinear/bicubic; always 8-bit quantised.
    """
    cfg = config or DegradationConfig()
    if hq.ndim != 3 or hq.shape[0] != 3:
        raise PiSAError(f"degrade expects an RGB image tensor [3, H, W], found shape {tuple(hq.shape)}.")
    h, w = hq.shape[-2:]
    if h % cfg.scale or w % cfg.scale:
        raise PiSAError(f"degrade expects sides that are multiples of {cfg.scale}, found {h}x{w}.")
    rng = SampleRNG(seed, index)
    # kernels first, as in Real-ESRGAN's data pipeline
    kernel1 = random_blur_kernel(rng, cfg, second=False)
    kernel2 = random_blur_kernel(rng, cfg, second=True)
    final_sinc = random_final_sinc(rng, cfg)
    x = hq.float().clamp(0, 1)

    # first order: blur, resize, noise, JPEG
    x = filter2d(x, kernel1)
    s = _random_scale(rng, cfg.resize_prob, cfg.resize_range)
    x = resize(x, (h * s, w * s), rng.choice(RESIZE_MODES))
    x = _random_noise(x, rng, cfg.gaussian_noise_prob, cfg.noise_range, cfg.poisson_scale_range, cfg.gray_noise_prob)
    x = jpeg_compress(x, round(rng.uniform(*cfg.jpeg_range)))

    # second order: blur (with probability), resize relative to the target size, noise
    if rng.chance(cfg.second_blur_prob):
        x = filter2d(x, kernel2)
    s = _random_scale(rng, cfg.resize_prob2, cfg.resize_range2)
    x = resize(x, (h / cfg.scale * s, w / cfg.scale * s), rng.choice(RESIZE_MODES))
    x = _random_noise(x, rng, cfg.gaussian_noise_prob2, cfg.noise_range2, cfg.poisson_scale_range2,
                      cfg.gray_noise_prob2)

    # final: [resize to 1/scale + sinc] and JPEG, in random order
    target = (h // cfg.scale, w // cfg.scale)
    quality = round(rng.uniform(*cfg.jpeg_range2))
    mode = rng.choice(RESIZE_MODES)
    if rng.chance(0.5):
        x = filter2d(resize(x, target, mode), final_sinc)
        x = jpeg_compress(x, quality)
    else:
        x = jpeg_compress(x, quality)
        x = filter2d(resize(x, target, mode), final_sinc)
    x = quantize_8bit(x)
    if resize_back:
        x = quantize_8bit(resize(x, (h, w), rng.choice(RESIZE_MODES)))
    return x
