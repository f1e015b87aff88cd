"""The noise-prediction U-Net: eps = UNet(x_t, t, class). It knows nothing of betas."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ddpm_guard.generator.config import UNetConfig


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in the Transformer and Ho et al."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, add the time/class embedding, GroupNorm -> SiLU -> dropout -> conv."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity: stabler early training
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over pixels, fused through scaled_dot_product_attention."""

    def __init__(self, ch: int, heads: int, groups: int):
        super().__init__()
        if ch % heads:
            raise ValueError(f"{ch} channels do not split into {heads} heads")
        self.heads = heads
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        # (3, b, heads, hw, d) with d contiguous: the layout the fused (flash) CPU kernel needs; the
        # strided views it replaced fell back to the unfused math path (bench: 91 -> 38 ms per 3 passes)
        q, k, v = qkv.permute(1, 0, 2, 4, 3).contiguous().unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.config = cfg
        levels = len(cfg.channel_mult)
        if cfg.image_size % (2 ** (levels - 1)):
            raise ValueError(f"image_size {cfg.image_size} is not divisible by 2**{levels - 1}")
        ch = cfg.base_channels
        emb_dim = 4 * ch
        g = cfg.norm_groups
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # num_classes + 1 rows: the last is the learned null class used for classifier-free guidance
        self.class_emb = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes else None
        self.guidance_mlp = None
        if cfg.guidance_embed:  # the CFG scale as an input; zero-initialised so a copied teacher starts unchanged
            self.guidance_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            nn.init.zeros_(self.guidance_mlp[2].weight)
            nn.init.zeros_(self.guidance_mlp[2].bias)
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        self.down = nn.ModuleList()
        skips = [ch]
        cur, res = ch, cfg.image_size
        for i, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                blocks = [ResBlock(cur, ch * mult, emb_dim, cfg.dropout, g)]
                cur = ch * mult
                if res in cfg.attention_resolutions:
                    blocks.append(AttentionBlock(cur, cfg.num_heads, g))
                self.down.append(nn.ModuleList(blocks))
                skips.append(cur)
            if i < levels - 1:
                self.down.append(nn.ModuleList([nn.Conv2d(cur, cur, 3, stride=2, padding=1)]))
                skips.append(cur)
                res //= 2

        self.mid = nn.ModuleList([ResBlock(cur, cur, emb_dim, cfg.dropout, g),
                                  AttentionBlock(cur, cfg.num_heads, g),
                                  ResBlock(cur, cur, emb_dim, cfg.dropout, g)])

        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(cfg.channel_mult))):
            for j in range(cfg.num_res_blocks + 1):
                blocks = [ResBlock(cur + skips.pop(), ch * mult, emb_dim, cfg.dropout, g)]
                cur = ch * mult
                if res in cfg.attention_resolutions:
                    blocks.append(AttentionBlock(cur, cfg.num_heads, g))
                if i > 0 and j == cfg.num_res_blocks:
                    blocks.append(nn.Upsample(scale_factor=2, mode="nearest"))
                    blocks.append(nn.Conv2d(cur, cur, 3, padding=1))
                    res *= 2
                self.up.append(nn.ModuleList(blocks))

        self.norm_out = nn.GroupNorm(g, cur)
        self.conv_out = nn.Conv2d(cur, cfg.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @staticmethod
    def _run(blocks: nn.ModuleList, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for block in blocks:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
                guidance: torch.Tensor | float | None = None) -> torch.Tensor:
        """Predict the noise in x_t (or v, when config.prediction is "v"). `cond` holds class indices;
        index num_classes (or None) is the null class. `guidance` (B,) or a float is the CFG scale of a
        guidance-embedding model (1.0 when None) and must be None for any other model."""
        t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels))
        if self.class_emb is not None:
            if cond is None:
                cond = torch.full((x.shape[0],), self.config.num_classes, device=x.device, dtype=torch.long)
            emb = emb + self.class_emb(cond)
        if self.guidance_mlp is not None:
            g = torch.as_tensor(1.0 if guidance is None else guidance, device=x.device, dtype=torch.float32)
            # scaled so that scales 0-5 spread over the sinusoid's range as timesteps 0-500 do
            emb = emb + self.guidance_mlp(timestep_embedding(g.reshape(-1).expand(x.shape[0]) * 100.0,
                                                             self.config.base_channels))
        elif guidance is not None:
            raise ValueError("this model has no guidance input; apply classifier-free guidance outside it")
        h = self.conv_in(x)
        hs = [h]
        for blocks in self.down:
            h = self._run(blocks, h, emb)
            hs.append(h)
        h = self._run(self.mid, h, emb)
        for blocks in self.up:
            h = self._run(blocks, torch.cat([h, hs.pop()], dim=1), emb)
        return self.conv_out(F.silu(self.norm_out(h)))


class VPrediction(nn.Module):
    """A network trained to predict v = alpha_t eps - sigma_t x0 (Salimans & Ho 2022), seen from outside
    as a noise predictor: forward returns eps = sigma_t x_t + alpha_t v in float32, so every sampler,
    the inversion and the watermark use it unchanged. alpha_t, sigma_t come from the caller's schedule
    (sqrt(abar_t), sqrt(1 - abar_t)); the network itself still knows nothing of betas."""

    def __init__(self, unet: UNet, alpha: torch.Tensor, sigma: torch.Tensor):
        super().__init__()
        self.unet = unet
        self.config = unet.config
        self.register_buffer("alpha", alpha.float().clone(), persistent=False)
        self.register_buffer("sigma", sigma.float().clone(), persistent=False)

    def v(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
          guidance: torch.Tensor | float | None = None) -> torch.Tensor:
        return self.unet(x, t, cond, guidance)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
                guidance: torch.Tensor | float | None = None) -> torch.Tensor:
        t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t
        v = self.unet(x, t, cond, guidance).float()
        a, s = self.alpha[t].view(-1, 1, 1, 1), self.sigma[t].view(-1, 1, 1, 1)
        return s * x.float() + a * v
