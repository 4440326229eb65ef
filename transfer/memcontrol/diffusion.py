"""A small class-conditional DDPM for MemControl's experiments, and the objectives measured on it.

Used by `transfer.memcontrol.experiment` (and `benchmarks/memcontrol.py`) to reproduce at small
scale the setting of MemControl (Dutt et al., "MemControl: Mitigating Memorization in Diffusion
Models via Automated Parameter Selection", WACV 2025, arXiv 2405.19458; reference code
github.com/Raman1121/Diffusion_Memorization_HPO). The paper fine-tunes Stable Diffusion v1.5
on MIMIC-CXR; here a DDPM of a few hundred thousand parameters is pretrained on MNIST and
fine-tuned on Fashion-MNIST (or digits → digits in tests). Everything in this file is our
own code; what is the paper's and what is ours:

Model (ours). `TinyUNet`: a U-Net on 1-channel images whose side is divisible by 4
(28×28 MNIST, 8×8 digits): stem conv, three resolution levels of residual blocks (GroupNorm,
SiLU, 3×3 convs, a per-block linear projection of the embedding added after the first conv),
a middle with self-attention, skip connections by concatenation. Timesteps enter through a
sinusoidal embedding and an MLP; the class through an embedding table with one extra row,
the null label (index ``n_classes``), used for classifier-free guidance (Ho & Salimans 2022)
— the analogue of SD's empty prompt. Its blocks are named (`TinyUNet.block_names`, at the
paths `TinyUNet.block_modules`) so a mask can address them: the paper masks SD's 13
cross-attention transformer blocks; we mask the 10 blocks of this U-Net (the timestep MLP, six
residual blocks of the encoder and decoder, the middle's two residual blocks and its
attention). The label table plays SD's frozen text encoder: it is pretrained with the model
and never fine-tuned.

Prompts (ours). `add_prompt_labels` gives each memorised image a label of its own, initialised
to its class's row plus noise — the analogue of a caption that identifies one training image.
This is needed for the paper's detector to respond: with only the class label, shared with
every other image of the class, we measured the noise-magnitude metric *lower* for a model
trained on images repeated ×32–50 than for one that saw them once (digits, 300 and 800 steps:
1.41 vs 1.39 and 1.24 vs 1.53), because the unconditional model memorises the repeated images
too; with a prompt of their own it is higher (1.90 vs 1.34), as Wen et al. (ICLR 2024), whose
detector the paper uses, report for memorised prompts.

Diffusion (DDPM, Ho et al. 2020): T = 1000, linear β from 1e-4 to 0.02, ε-prediction, MSE
loss; labels replaced by the null label with probability `p_uncond` during training.
Sampling: DDIM (Song et al. 2021, η = 0) with `steps` steps and guidance scale w,
ε̃ = ε(x_t, ∅) + w·(ε(x_t, c) − ε(x_t, ∅)) — a deviation from 1000-step ancestral sampling,
for cost.

Objectives:
- `noise_memorization` — the paper's reward (the reference's validation epoch): over the
  memorised images, noise at random timesteps, ‖ε(x_t, c) − ε(x_t, ∅)‖₂ per image, the max
  over the batch, averaged over batches. (They use SD's text prompt and the empty prompt; we
  use the class label and the null label. Timesteps and noise are drawn from a fixed
  generator, so every trial is measured on the same draws.)
- `fid` — Fréchet distance between Gaussian fits of features of real and generated images.
  The paper uses a chest-X-ray DenseNet instead of Inception; we use the penultimate layer of
  a small CNN classifier trained here on the target data (`FeatureNet`): nothing can be
  downloaded. FID from a few hundred samples is biased upwards; compare only at equal n.
- `nn_memorization` — the held-out measure the search never sees (ours; the paper uses an
  extraction attack on tiles): a generation counts as memorised when its L2 distance to the
  nearest fine-tuning image is below `threshold` × its distance to the nearest image of an
  equally large held-out real set from the same distribution. A copy scores ≈ 0, a novel
  sample ≈ 1.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class UNetConfig:
    image_size: int = 28
    n_classes: int = 10
    channels: tuple[int, int, int] = (16, 32, 48)   # per resolution level
    emb_dim: int = 64
    groups: int = 8

    def __post_init__(self):
        if self.image_size % 4:
            raise ValueError(f"image_size: {self.image_size} must be divisible by 4 (two 2× downsamplings)")
        if any(c % self.groups for c in self.channels):
            raise ValueError(f"channels: {self.channels} must all be multiples of groups={self.groups}")

    def to_dict(self) -> dict:
        return {**asdict(self), "channels": list(self.channels)}


def add_prompt_labels(model: "TinyUNet", classes: torch.Tensor, *, seed: int = 0) -> "TinyUNet":
    """Give `len(classes)` new labels of their own (caption-like prompts) to `model`, in place.

    Rows ``n .. n+k-1`` of the label table (n = the old number of labels) are the new prompts, each
    initialised to its class's row plus Gaussian noise with the table's per-entry std; the null
    label moves to the last row. Returns the model (its `config.n_classes` and `null_label` updated).
    """
    old = model.embed.label
    n, k = model.config.n_classes, len(classes)
    weight = old.weight.detach()
    noise = torch.randn((k, weight.shape[1]), generator=torch.Generator().manual_seed(seed)) * weight[:n].std()
    new = nn.Embedding(n + k + 1, weight.shape[1]).to(weight.device)
    with torch.no_grad():
        new.weight[:n] = weight[:n]
        new.weight[n:n + k] = weight[classes.long()] + noise.to(weight.device)
        new.weight[n + k] = weight[n]                       # the null label
    new.weight.requires_grad_(old.weight.requires_grad)
    model.embed.label = new
    model.config = replace(model.config, n_classes=n + k)
    model.null_label = n + k
    return model


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=1)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class Attention(nn.Module):
    def __init__(self, channels: int, groups: int, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x, emb=None):
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)                  # (b, hw, c)
        q, k, v = self.qkv(tokens).reshape(b, h * w, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        return x + self.proj(out).transpose(1, 2).reshape(b, c, h, w)


class Embedding(nn.Module):
    """Timestep MLP + class table (row `n_classes` is the null label)."""

    def __init__(self, n_classes: int, dim: int):
        super().__init__()
        self.dim = dim
        self.label = nn.Embedding(n_classes + 1, dim)
        self.time = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t, y):
        return self.time(timestep_embedding(t, self.dim)) + self.label(y)


class TinyUNet(nn.Module):
    """ε(x_t, t, y): a class-conditional U-Net whose maskable blocks are named in `block_names`."""

    block_names = ("time", "enc0", "enc1", "enc2", "mid1", "attn", "mid2", "dec2", "dec1", "dec0")
    block_modules = ("embed.time", "enc0", "enc1", "enc2", "mid1", "attn", "mid2", "dec2", "dec1", "dec0")

    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        self.config = config
        c0, c1, c2 = config.channels
        e, g = config.emb_dim, config.groups
        self.null_label = config.n_classes
        self.embed = Embedding(config.n_classes, e)
        self.stem = nn.Conv2d(1, c0, 3, padding=1)
        self.enc0 = ResBlock(c0, c0, e, g)
        self.down0 = nn.Conv2d(c0, c0, 3, stride=2, padding=1)
        self.enc1 = ResBlock(c0, c1, e, g)
        self.down1 = nn.Conv2d(c1, c1, 3, stride=2, padding=1)
        self.enc2 = ResBlock(c1, c2, e, g)
        self.mid1 = ResBlock(c2, c2, e, g)
        self.attn = Attention(c2, g)
        self.mid2 = ResBlock(c2, c2, e, g)
        self.dec2 = ResBlock(c2 + c2, c2, e, g)
        self.up1 = nn.Conv2d(c2, c1, 3, padding=1)
        self.dec1 = ResBlock(c1 + c1, c1, e, g)
        self.up0 = nn.Conv2d(c1, c0, 3, padding=1)
        self.dec0 = ResBlock(c0 + c0, c0, e, g)
        self.out_norm = nn.GroupNorm(g, c0)
        self.out = nn.Conv2d(c0, 1, 3, padding=1)

    def forward(self, x, t, y):
        emb = self.embed(t, y)
        h0 = self.enc0(self.stem(x), emb)
        h1 = self.enc1(self.down0(h0), emb)
        h2 = self.enc2(self.down1(h1), emb)
        m = self.mid2(self.attn(self.mid1(h2, emb)), emb)
        d2 = self.dec2(torch.cat([m, h2], 1), emb)
        d1 = self.dec1(torch.cat([self.up1(F.interpolate(d2, scale_factor=2, mode="nearest")), h1], 1), emb)
        d0 = self.dec0(torch.cat([self.up0(F.interpolate(d1, scale_factor=2, mode="nearest")), h0], 1), emb)
        return self.out(F.silu(self.out_norm(d0)))


# --------------------------------------------------------------------------- diffusion


class DDPM:
    """The noise schedule and what is done with it: the training loss, noising, DDIM sampling."""

    def __init__(self, timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02):
        self.T = timesteps
        betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
        self.alpha_bar = torch.cumprod(1 - betas, 0).float()

    def noisy(self, x0, t, noise):
        ab = self.alpha_bar.to(x0.device)[t][:, None, None, None]
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def loss(self, model, x0, y, *, p_uncond: float, generator: torch.Generator | None = None):
        b = len(x0)
        t = torch.randint(0, self.T, (b,), generator=generator).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator).to(x0.device)
        drop = torch.rand(b, generator=generator).to(x0.device) < p_uncond
        y = torch.where(drop, torch.full_like(y, model.null_label), y)
        return F.mse_loss(model(self.noisy(x0, t, noise), t, y), noise)

    @torch.no_grad()
    def sample(self, model, labels: torch.Tensor, *, steps: int = 25, guidance: float = 2.0,
               generator: torch.Generator | None = None, batch_size: int = 256, device=None) -> torch.Tensor:
        """DDIM (η = 0) with classifier-free guidance; images in [-1, 1], shape (n, 1, H, W)."""
        model.eval()
        device = device or next(model.parameters()).device
        size = model.config.image_size
        times = torch.linspace(self.T - 1, 0, steps).round().long()
        out = []
        for start in range(0, len(labels), batch_size):
            y = labels[start:start + batch_size].to(device)
            n = len(y)
            x = torch.randn((n, 1, size, size), generator=generator).to(device)
            y2 = torch.cat([y, torch.full_like(y, model.null_label)])
            for i, t in enumerate(times):
                tt = torch.full((2 * n,), int(t), device=device)
                eps_c, eps_u = model(torch.cat([x, x]), tt, y2).chunk(2)
                eps = eps_u + guidance * (eps_c - eps_u)
                ab = self.alpha_bar[t].to(device)
                ab_prev = self.alpha_bar[times[i + 1]].to(device) if i + 1 < steps else torch.tensor(1.0, device=device)
                x0 = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1, 1)
                eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
                x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
            out.append(x.clamp(-1, 1).cpu())
        return torch.cat(out)


def to_model_range(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels → [-1, 1]."""
    return x * 2 - 1


def train_steps(model, ddpm: DDPM, x, y, *, steps: int, lr: float, batch_size: int, p_uncond: float,
                generator: torch.Generator, device, weight_decay: float = 0.0, on_step=None) -> float:
    """AdamW on the trainable parameters for `steps` minibatches drawn without replacement per epoch.

    `x` in [-1, 1]. Returns the mean loss of the last 10% of steps.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: no parameter requires a gradient (an all-zero mask?)")
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    model.train()
    order = torch.randperm(len(y), generator=generator)
    pos, tail = 0, []
    for step in range(steps):
        if pos + batch_size > len(y):
            order, pos = torch.randperm(len(y), generator=generator), 0
        batch = order[pos:pos + batch_size]
        pos += batch_size
        loss = ddpm.loss(model, x[batch].to(device), y[batch].to(device), p_uncond=p_uncond, generator=generator)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"diffusion loss became {float(loss)} at step {step}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= steps - max(1, steps // 10):
            tail.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, float(loss.detach()))
    return float(np.mean(tail))


# --------------------------------------------------------------------------- objectives


@torch.no_grad()
def noise_memorization(model, ddpm: DDPM, x, y, *, passes: int = 8, batch_size: int = 64, seed: int = 0,
                       device=None) -> float:
    """MemControl's memorisation reward on images `x` (in [-1, 1]) with labels `y`.

    For each batch (the images split into batches of `batch_size`, the whole set seen `passes`
    times with fresh timesteps and noise): d_i = ‖ε(x_t, y_i) − ε(x_t, ∅)‖₂ per image, the batch's
    max d_i; the result is the mean of these maxima over batches. Draws come from a generator
    seeded with `seed`, so two models are compared on the same x_t.
    """
    model.eval()
    device = device or next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    maxima = []
    for _ in range(passes):
        for start in range(0, len(y), batch_size):
            xb, yb = x[start:start + batch_size].to(device), y[start:start + batch_size].to(device)
            n = len(yb)
            t = torch.randint(0, ddpm.T, (n,), generator=g).to(device)
            xt = ddpm.noisy(xb, t, torch.randn(xb.shape, generator=g).to(device))
            eps_c, eps_u = model(torch.cat([xt, xt]), torch.cat([t, t]),
                                 torch.cat([yb, torch.full_like(yb, model.null_label)])).chunk(2)
            maxima.append(float((eps_c - eps_u).flatten(1).norm(dim=1).max()))
    return float(np.mean(maxima))


class FeatureNet(nn.Module):
    """A small CNN classifier; `features` (penultimate layer, `feature_dim`) feed the FID."""

    def __init__(self, image_size: int, n_classes: int = 10, feature_dim: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * (image_size // 4) ** 2, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, n_classes)

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head(self.body(x))


def train_classifier(x, y, *, image_size: int, epochs: int, seed: int, device, batch_size: int = 64,
                     lr: float = 1e-3) -> FeatureNet:
    """`FeatureNet` trained with Adam on (x in [-1, 1], y)."""
    torch.manual_seed(seed)
    net = FeatureNet(image_size, n_classes=int(y.max()) + 1).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        order = torch.randperm(len(y), generator=g)
        for start in range(0, len(y), batch_size):
            batch = order[start:start + batch_size]
            loss = F.cross_entropy(net(x[batch].to(device)), y[batch].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return net.eval()


@torch.no_grad()
def classifier_accuracy(net: FeatureNet, x, y, device, batch_size: int = 512) -> float:
    net.eval()
    hits = sum(int((net(x[i:i + batch_size].to(device)).argmax(1).cpu() == y[i:i + batch_size]).sum())
               for i in range(0, len(y), batch_size))
    return hits / len(y)


@torch.no_grad()
def features(net: FeatureNet, x, device, batch_size: int = 512) -> np.ndarray:
    net.eval()
    return torch.cat([net.features(x[i:i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
                     ).double().numpy()


def _sqrtm_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½) of Gaussian fits to two feature sets (rows = samples).

    Tr((Σ₁Σ₂)^½) is computed as Tr((Σ₁^½ Σ₂ Σ₁^½)^½) — the same value, from symmetric matrices.
    """
    if len(f1) < 2 or len(f2) < 2:
        raise ValueError("frechet_distance needs at least 2 samples per set")
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    r1 = _sqrtm_psd(s1)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * cross)


@dataclass(frozen=True)
class KID:
    """Kernel Inception Distance: the mean over subsets, their spread, and a 95% interval."""

    mean: float
    std: float
    subsets: int
    subset_size: int

    @property
    def interval(self) -> tuple[float, float]:
        """mean ± 1.96 std: where one subset-size estimate falls 95% of the time (conservative for the mean)."""
        return self.mean - 1.96 * self.std, self.mean + 1.96 * self.std


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with the cubic polynomial kernel k(a, b) = (aᵀb / d + 1)³ (Bińkowski et al. 2018, §3)."""
    d = x.shape[1]
    kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
    n, m = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.mean())


def kernel_inception_distance(f1: np.ndarray, f2: np.ndarray, *, subsets: int = 50, subset_size: int = 1000,
                              seed: int = 0) -> KID:
    """KID of two feature sets (rows = samples), Bińkowski et al., "Demystifying MMD GANs", ICLR 2018.

    Unbiased at any sample size (FID is not: its bias grows as n falls, so FIDs at n = 200 mislead). As in
    the paper and common implementations, the estimate is averaged over `subsets` random subsets of
    `subset_size` rows of each set (drawn without replacement; capped at the smaller set's size) and their
    standard deviation is reported: it is the estimator's spread at that size.
    """
    size = min(subset_size, len(f1), len(f2))
    if size < 2:
        raise ValueError("kernel_inception_distance needs at least 2 samples per set")
    rng = np.random.default_rng(seed)
    values = [_mmd2_unbiased(f1[rng.choice(len(f1), size, replace=False)],
                             f2[rng.choice(len(f2), size, replace=False)]) for _ in range(subsets)]
    return KID(mean=float(np.mean(values)), std=float(np.std(values, ddof=1)) if subsets > 1 else 0.0,
               subsets=subsets, subset_size=size)


def nn_memorization(generated, train, heldout, *, threshold: float = 0.5) -> tuple[float, float]:
    """(fraction of generations with d_train / d_heldout < threshold, median of that ratio).

    d_train: L2 distance of a generation to its nearest fine-tuning image (unique images);
    d_heldout: to its nearest image of a held-out real set of the same size. Pixels in any
    common range (here [-1, 1]).
    """
    if len(heldout) != len(train):
        raise ValueError(f"held-out set ({len(heldout)}) must be as large as the training set ({len(train)})")
    g = generated.flatten(1).double()
    d_train = torch.cdist(g, train.flatten(1).double()).min(1).values
    d_held = torch.cdist(g, heldout.flatten(1).double()).min(1).values
    ratio = d_train / d_held.clamp_min(1e-12)
    return float((ratio < threshold).float().mean()), float(ratio.median())
