"""FiLM residual blocks + a two-hop Stacked Attention Network (huubinh49/Composed-Image-Retrieval).

Two branches on the reference image, both conditioned on the text q:
- SAN (on the image vector z): `h1 = tanh(W_i1 z + W_q1 q)`, `p1 = softmax(W_a1 h1)`, `u1 = p1 * z + W_q1 q`;
  `h2 = tanh(W_i2 z + W_q2 u1)`, `p2 = softmax(W_a2 h2)`; `theta_lin = (1 - p2) * z` (what to keep of z).
- FiLM (on the last conv map): `film_blocks` residual blocks (6) of `film_channels` (512) channels; each
  concatenates two coordinate maps in [-1, 1], conv1x1 -> ReLU (the identity path), conv3x3 -> BN ->
  `gamma * h + beta` -> ReLU, plus the identity; a Linear(Dt -> 2 * blocks * channels) generator gives every
  block's (gamma, beta). Global max pool, concatenated with q, then an MLP gives `theta_conv`.
- `theta = w_0 * theta_lin + w_1 * (m2 * theta_conv)`, `w` initialised to 0.7 / 0.3 and trained at 0.01x the
  learning rate (the `branch_weights` group; `--model-option lr_mults='{"branch_weights": 1}'` changes it).
- Reconstruction: `d_img(theta_lin) ~ z`, `d_txt(theta_conv) ~ q`, ComposeAE's weights 0.1 / 0.1, no symmetry.

Deviations from the released code, deliberate: the model runs (the released `main.py` never builds it); gamma
multiplies and beta shifts (the released code swaps their names); the paper's mask `m2` on the FiLM output is
applied (the released code omits it), as `m2 = D * p2` so that a uniform attention leaves theta_conv unchanged
(the paper does not give the scale; `mask=none` drops it); the text is any text encoder followed by the
paper's text head (the paper uses a frozen RoBERTa-NLI sentence encoder, e.g. `--text-encoder minilm
--freeze-text` here); the image head follows the paper's GAP -> Dropout(0.2) -> Linear -> ReLU -> Dropout(0.1)
-> Linear on the encoder's last map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cirlab.encoders import ImageEncoder, TextEncoder
from cirlab.models._layers import bn, decoder
from cirlab.models.base import MODELS, BaseLoss, CompositionModel, ModelConfig
from cirlab.utils.errors import CirlabError


def coordinate_maps(x: torch.Tensor) -> torch.Tensor:
    """(B, 2, h, w) maps of the x and y coordinates in [-1, 1]."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y])[None].expand(b, 2, h, w)


class FiLMBlock(nn.Module):
    """[x, coords] -> conv1x1 -> ReLU (= r); conv3x3(r) -> BN -> gamma * . + beta -> ReLU; + r."""

    def __init__(self, dim_in: int, channels: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(dim_in + 2, channels, 1)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(channels, affine=False)

    def forward(self, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        r = F.relu(self.conv_in(torch.cat([x, coordinate_maps(x)], dim=1)))
        h = self.norm(self.conv(r))
        return F.relu(gamma[:, :, None, None] * h + beta[:, :, None, None]) + r


@MODELS.register("film_san")
class FiLMSAN(CompositionModel):
    """theta = 0.7 * SAN-masked image vector + 0.3 * mask * FiLM-modulated map vector (weights learnable)."""

    default_loss_weights = {"rec_img": 0.1, "rec_txt": 0.1}
    default_lr_mults = {"branch_weights": 0.01}

    def __init__(self, config: ModelConfig, image_encoder: ImageEncoder, text_encoder: TextEncoder) -> None:
        super().__init__(config, image_encoder, text_encoder)
        c, d, dt = image_encoder.map_channels, config.embed_dim, text_encoder.out_dim
        opts = config.options
        self.num_blocks, self.film_channels = int(opts.get("film_blocks", 6)), int(opts.get("film_channels", 512))
        self.mask = str(opts.get("mask", "paper"))
        if self.mask not in ("paper", "none"):
            raise CirlabError(f"film_san: mask must be 'paper' or 'none', not {self.mask!r}")
        cf = self.film_channels
        self.image_head = nn.Sequential(nn.Dropout(0.2), nn.Linear(c, d), nn.ReLU(), nn.Dropout(0.1), nn.Linear(d, d))
        self.text_head = nn.Sequential(nn.Dropout(0.1), nn.Linear(dt, dt), nn.ReLU(), nn.Linear(dt, dt))
        self.film_generator = nn.Linear(dt, 2 * self.num_blocks * cf)
        self.blocks = nn.ModuleList([FiLMBlock(c if i == 0 else cf, cf) for i in range(self.num_blocks)])
        self.film_out = nn.Sequential(bn(cf + dt), nn.ReLU(), nn.Linear(cf + dt, d), nn.ReLU(), nn.Dropout(0.2),
                                      nn.Linear(d, d))
        self.w_i1, self.w_q1, self.w_a1 = nn.Linear(d, d), nn.Linear(dt, d), nn.Linear(d, d)
        self.w_i2, self.w_q2, self.w_a2 = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.branch_weights = nn.Parameter(torch.tensor([0.7, 0.3]))  # w_0 (SAN), w_1 (FiLM)
        self.decode_image = decoder(d, d)
        self.decode_text = decoder(d, dt)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder.forward_map(images)

    def target_features(self, image_feats: torch.Tensor) -> torch.Tensor:
        return self.image_head(image_feats.mean(dim=(2, 3)))

    def lr_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"branch_weights": [self.branch_weights]}

    def branches(self, fmap: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        """z, q, theta_lin, theta_conv (masked) and theta for one batch."""
        z, q = self.target_features(fmap), self.text_head(text)
        wq1 = self.w_q1(q)
        p1 = torch.softmax(self.w_a1(torch.tanh(self.w_i1(z) + wq1)), dim=-1)
        u1 = p1 * z + wq1
        p2 = torch.softmax(self.w_a2(torch.tanh(self.w_i2(z) + self.w_q2(u1))), dim=-1)
        theta_lin = (1.0 - p2) * z
        film = self.film_generator(q).view(q.shape[0], self.num_blocks, 2, self.film_channels)
        x = fmap
        for i, block in enumerate(self.blocks):
            x = block(x, film[:, i, 0], film[:, i, 1])
        theta_conv = self.film_out(torch.cat([x.amax(dim=(2, 3)), q], dim=1))
        if self.mask == "paper":
            theta_conv = theta_conv * (p2 * p2.shape[1])
        theta = self.branch_weights[0] * theta_lin + self.branch_weights[1] * theta_conv
        return {"z": z, "q": q, "theta_lin": theta_lin, "theta_conv": theta_conv, "theta": theta}

    def compose_features(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        return self.branches(image_feats, text_feats)["theta"]

    def training_losses(self, source: torch.Tensor, text: torch.Tensor, target: torch.Tensor, base_loss: BaseLoss
                        ) -> dict[str, torch.Tensor]:
        out = self.branches(source, text)
        return {"base": base_loss(self.normalize(out["theta"]), self.normalize(self.target_features(target))),
                "rec_img": F.mse_loss(self.decode_image(out["theta_lin"]), out["z"]),
                "rec_txt": F.mse_loss(self.decode_text(out["theta_conv"]), out["q"])}
