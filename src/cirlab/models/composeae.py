"""ComposeAE (Anwaar et al., WACV 2021), its real-space ablation, and the interactive-retrieval variant
with cross-attention (smb-h/iirbctf). Reference math: shared/reference/MODELS.md.

Notation: z = image feature (size Dz, the image encoder's output), q = text feature (Dt), D = embed_dim.
The composition is `theta = w_1 * rho([re, im]) + w_0 * rho_conv([eta(z), delta, z, re, im])` with the complex
projection `re = eta(z) cos(delta)`, `im = c eta(z) sin(delta)`, `delta = gamma(q)`, c = +1 for queries.

Deviations from the released code (ecom-research/ComposeAE), all deliberate:
- the conjugate c = -1 is a Python scalar, not a fixed 32x1 CUDA tensor, so any batch size and any device work
  (the released code fails above batch 32 and on CPU); BatchNorm also trains on a batch of one;
- Dz and Dt may differ from D (pretrained or cached encoders keep their own sizes): the decoders reconstruct
  z and q at their own sizes, and where Dz != D a Linear(Dz -> D) maps z for the rho_conv channel and for the
  gallery side (the released code assumes Dz == D and has no such layer);
- the symmetry loss is the base loss between the conjugate composition of the target, f(psi(y), q, c = -1),
  and the reference image feature, as in the released training loop; the reconstruction losses are MSE
  to the raw (not normalised) features;
- `use_rho` / `use_rho_conv` options switch a branch off, for the paper's ablations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cirlab.encoders import ImageEncoder, TextEncoder
from cirlab.models._layers import bn, decoder, identity_or_linear
from cirlab.models.base import MODELS, BaseLoss, CompositionModel, ModelConfig
from cirlab.utils.errors import CirlabError


def _mapping(dim_in: int, dim_out: int) -> nn.Sequential:
    """ComposeAE's `rho`: BN -> ReLU -> Linear(in -> D) -> ReLU -> Linear(D, D)."""
    return nn.Sequential(bn(dim_in), nn.ReLU(), nn.Linear(dim_in, dim_out), nn.ReLU(), nn.Linear(dim_out, dim_out))


def _flag(value: object) -> bool:
    return str(value).lower() not in ("0", "false", "no", "none")


class AutoencoderComposition(CompositionModel):
    """Shared by the ComposeAE family: the image/text decoders and the loss terms built on them."""

    default_loss_weights = {"rec_img": 0.1, "rec_txt": 0.1, "symmetry": 0.01}
    #: Whether `theta` takes the conjugate rotation and the symmetry loss applies.
    symmetric = True

    def __init__(self, config: ModelConfig, image_encoder: ImageEncoder, text_encoder: TextEncoder) -> None:
        super().__init__(config, image_encoder, text_encoder)
        d, self.dz, self.dt = config.embed_dim, image_encoder.out_dim, text_encoder.out_dim
        self.decode_image = decoder(d, self.dz)
        self.decode_text = decoder(d, self.dt)
        self.image_in = identity_or_linear(self.dz, d)

    def theta(self, z: torch.Tensor, q: torch.Tensor, conjugate: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def compose_features(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        return self.theta(image_feats, text_feats)

    def target_features(self, image_feats: torch.Tensor) -> torch.Tensor:
        return self.image_in(image_feats)

    def training_losses(self, source: torch.Tensor, text: torch.Tensor, target: torch.Tensor, base_loss: BaseLoss
                        ) -> dict[str, torch.Tensor]:
        theta = self.theta(source, text)
        terms = {"base": base_loss(self.normalize(theta), self.normalize(self.target_features(target))),
                 "rec_img": F.mse_loss(self.decode_image(theta), source),
                 "rec_txt": F.mse_loss(self.decode_text(theta), text)}
        if self.symmetric:
            theta_star = self.theta(target, text, conjugate=True)
            terms["symmetry"] = base_loss(self.normalize(theta_star), self.normalize(self.target_features(source)))
        return terms


@MODELS.register("composeae")
class ComposeAE(AutoencoderComposition):
    """Complex-space rotation of the image by the text, mapped back by rho and rho_conv (weights 10 and 1)."""

    def __init__(self, config: ModelConfig, image_encoder: ImageEncoder, text_encoder: TextEncoder) -> None:
        super().__init__(config, image_encoder, text_encoder)
        d, opts = config.embed_dim, config.options
        self.use_rho, self.use_rho_conv = _flag(opts.get("use_rho", True)), _flag(opts.get("use_rho_conv", True))
        if not (self.use_rho or self.use_rho_conv):
            raise CirlabError("composeae: use_rho and use_rho_conv cannot both be false")
        self.eta = nn.Sequential(bn(self.dz), nn.Linear(self.dz, d), nn.Dropout(0.5), nn.ReLU(), nn.Linear(d, d))
        self.gamma = nn.Sequential(bn(self.dt), nn.Linear(self.dt, d), nn.ReLU(), nn.Linear(d, d))
        self.rho = _mapping(2 * d, d) if self.use_rho else None
        self.rho_conv = nn.Sequential(nn.Conv1d(5, 64, 3, padding=1), nn.AdaptiveMaxPool1d(16), nn.Flatten(),
                                      _mapping(64 * 16, d)) if self.use_rho_conv else None
        self.branch_weights = nn.Parameter(torch.tensor([10.0, 1.0]))  # w_1 (rho), w_0 (rho_conv)

    def branches(self, z: torch.Tensor, q: torch.Tensor, conjugate: bool = False
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(theta_lin, theta_conv) for a batch; c = -1 when `conjugate`."""
        e, delta = self.eta(z), self.gamma(q)
        c = -1.0 if conjugate else 1.0
        re, im = e * torch.cos(delta), c * e * torch.sin(delta)
        lin = self.rho(torch.cat([re, im], dim=1)) if self.rho is not None else None
        conv = None
        if self.rho_conv is not None:
            conv = self.rho_conv(torch.stack([e, delta, self.image_in(z), re, im], dim=1))
        return lin, conv

    def combine(self, lin: torch.Tensor | None, conv: torch.Tensor | None) -> torch.Tensor:
        out = 0.0
        if lin is not None:
            out = out + self.branch_weights[0] * lin
        if conv is not None:
            out = out + self.branch_weights[1] * conv
        return out  # type: ignore[return-value]

    def theta(self, z: torch.Tensor, q: torch.Tensor, conjugate: bool = False) -> torch.Tensor:
        return self.combine(*self.branches(z, q, conjugate))


@MODELS.register("composeae_xattn")
class ComposeAECrossAttention(ComposeAE):
    """theta = w_1 * MultiHeadCrossAttention(query = theta_lin, key = value = theta_conv) + w_0 * theta_conv.

    The released code (smb-h/iirbctf) permutes a 3-D tensor as 4-D and cannot run. Here each D-vector is
    split into `xattn_tokens` tokens of D / tokens channels (plus a learned position embedding), so the
    attention is a well-defined cross-attention between the two branches' token sequences; the output tokens
    are concatenated back into a D-vector. Options: `xattn_tokens` (8), `xattn_heads` (8). The paper's text
    tower is CLIP (512-d); any text encoder works here.

    Train it with gradient clipping (`--grad-clip 5`): with TIRG's SGD 0.01 and the 10x attention branch, the
    first steps' gradients explode and every feature collapses to one direction (the soft-triplet loss sticks
    at log 2 and recall at chance; measured on CSS, see docs/MODELS.md); clipped, it trains like ComposeAE.
    """

    def __init__(self, config: ModelConfig, image_encoder: ImageEncoder, text_encoder: TextEncoder) -> None:
        if not (_flag(config.options.get("use_rho", True)) and _flag(config.options.get("use_rho_conv", True))):
            raise CirlabError("composeae_xattn needs both rho and rho_conv")
        super().__init__(config, image_encoder, text_encoder)
        d = config.embed_dim
        self.tokens = int(config.options.get("xattn_tokens", 8))
        heads = int(config.options.get("xattn_heads", 8))
        if self.tokens <= 0 or d % self.tokens or (d // self.tokens) % heads:
            raise CirlabError(f"composeae_xattn: embed_dim {d} must split into xattn_tokens={self.tokens} tokens "
                              f"whose size is divisible by xattn_heads={heads}")
        width = d // self.tokens
        self.position = nn.Parameter(torch.randn(self.tokens, width) * 0.02)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)

    def combine(self, lin: torch.Tensor | None, conv: torch.Tensor | None) -> torch.Tensor:
        assert lin is not None and conv is not None
        b = lin.shape[0]
        q = lin.view(b, self.tokens, -1) + self.position
        kv = conv.view(b, self.tokens, -1) + self.position
        attended, _ = self.attention(q, kv, kv, need_weights=False)
        return self.branch_weights[0] * attended.reshape(b, -1) + self.branch_weights[1] * conv


@MODELS.register("realspace_concat_ae")
class RealSpaceConcatAE(AutoencoderComposition):
    """ComposeAE's ablation without the complex projection: linear and conv branches on [z, q] (10 and 1),
    both decoders, no symmetry loss."""

    default_loss_weights = {"rec_img": 0.1, "rec_txt": 0.1}
    symmetric = False

    def __init__(self, config: ModelConfig, image_encoder: ImageEncoder, text_encoder: TextEncoder) -> None:
        super().__init__(config, image_encoder, text_encoder)
        d, joint = config.embed_dim, self.dz + self.dt
        self.linear = _mapping(joint, d)
        self.conv = nn.Sequential(nn.Unflatten(1, (1, joint)), nn.Conv1d(1, 64, 3, padding=1),
                                  nn.AdaptiveMaxPool1d(20), nn.Flatten(), _mapping(64 * 20, d))
        self.branch_weights = nn.Parameter(torch.tensor([10.0, 1.0]))

    def theta(self, z: torch.Tensor, q: torch.Tensor, conjugate: bool = False) -> torch.Tensor:
        x = torch.cat([z, q], dim=1)
        return self.branch_weights[0] * self.linear(x) + self.branch_weights[1] * self.conv(x)
