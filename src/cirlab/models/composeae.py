"""ComposeAE (Anwaar et al., WACV 2021), its real-space ablation, and the interactive-retrieval variant
with cross-attention (smb-h/iirbctf).

ComposeAE and RealSpaceConcatAE equal `img_text_composition_models.py` + the loss assembly of `main.py` of
ecom-research/ComposeAE at commit f5ea4ffee06447532c69bd393fce0b2c1cfdea30 (tested against fixtures produced
by that code: tests/test_parity.py, cases `composeae_*` and `realconcatae_*`).

Notation: z = image feature (size Dz, the image encoder's output), q = text feature (Dt), D = embed_dim.
Each branch has its OWN complex projection (two independent modules, as released):
`re = eta(z) cos(gamma(q))`, `im = c eta(z) sin(gamma(q))`, c = +1 for queries, -1 for the symmetry term;
`theta = w_lin * rho([re, im]) + w_conv * rho_conv([eta'(z), gamma'(q), z, re', im'])` (w = 10 / 1 at init,
the release's `a[1]` / `a[0]`). Training (`training_losses`) = the released `compute_loss` + main.py's total:
`base(f(z, q), y) + 0.1 MSE(dec_img(theta), z) + 0.1 MSE(dec_txt(theta), q) + 0.01 base(f(y, q, c=-1), z)`,
with every feature normalised by the learnable scale; the conjugate pass runs both decoders too (its outputs
are unused, as released, but their BatchNorm statistics move exactly as in the release).

Deviations from the release (none changes a number the release computes):
- the conjugate c is a Python scalar, not a fixed 32x1 tensor, so any batch size and any device work (the
  released code fails above batch 32 and on CPU); BatchNorm also trains on a batch of one;
- Dz, Dt and D are free (the release hard-wires 512 / 768): the decoders reconstruct z and q at their own
  sizes, and where Dz != D a Linear(Dz -> D) maps z for the rho_conv channel and the gallery side;
- `use_rho` / `use_rho_conv` options switch a branch off, for the paper's ablations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cirlab.encoders import ImageEncoder, TextEncoder
from cirlab.models._layers import (
    bn,
    decoder,
    grads_by_reference_name,
    identity_or_linear,
    load_reference_entries,
    map_reference_names,
)
from cirlab.models.base import MODELS, BaseLoss, CompositionModel, ModelConfig, ModelOptions
from cirlab.utils.errors import CirlabError
from cirlab.utils.options import option

#: The released model's sub-modules that are the encoders here (ResNet-18, LSTM): not loaded by
#: `load_reference_state_dict` (cirlab's encoders have their own weights).
REFERENCE_ENCODER_PREFIXES = ("img_model.", "text_model.")


def _mapping(dim_in: int, dim_out: int) -> nn.Sequential:
    """ComposeAE's `rho`: BN -> ReLU -> Linear(in -> D) -> ReLU -> Linear(D, D)."""
    return nn.Sequential(bn(dim_in), nn.ReLU(), nn.Linear(dim_in, dim_out), nn.ReLU(), nn.Linear(dim_out, dim_out))


class ComplexProjection(nn.Module):
    """The release's ComplexProjectionModule: eta(z) rotated by gamma(q) in the complex plane.

    eta = BN -> Linear(Dz -> D) -> Dropout(0.5) -> ReLU -> Linear(D, D); gamma = BN -> Linear(Dt -> D) -> ReLU ->
    Linear(D, D). Returns (eta(z), gamma(q), re, im) with re = eta cos(gamma), im = c eta sin(gamma)."""

    def __init__(self, dim_image: int, dim_text: int, dim: int) -> None:
        super().__init__()
        self.eta = nn.Sequential(bn(dim_image), nn.Linear(dim_image, dim), nn.Dropout(0.5), nn.ReLU(),
                                 nn.Linear(dim, dim))
        self.gamma = nn.Sequential(bn(dim_text), nn.Linear(dim_text, dim), nn.ReLU(), nn.Linear(dim, dim))

    def forward(self, z: torch.Tensor, q: torch.Tensor, conjugate: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        e, delta = self.eta(z), self.gamma(q)
        c = -1.0 if conjugate else 1.0
        return e, delta, e * torch.cos(delta), e * (c * torch.sin(delta))


class AutoencoderComposition(CompositionModel):
    """Shared by the ComposeAE family: the image/text decoders, the loss terms built on them, and loading the
    released weights (`load_reference_state_dict`, names: `reference_names()`)."""

    default_loss_weights = {"rec_img": 0.1, "rec_txt": 0.1, "symmetry": 0.01}
    #: Whether `theta` takes the conjugate rotation and the symmetry loss applies.
    symmetric = True
    #: our prefix -> the released model's prefix (ecom-research/ComposeAE @ f5ea4ff); subclasses add theirs.
    reference_prefixes: dict[str, str] = {"decode_image": "decoder", "decode_text": "txtdecoder",
                                          "norm_scale": "normalization_layer.norm_s"}

    def __init__(self, config: ModelConfig, image_encoder: ImageEncoder, text_encoder: TextEncoder) -> None:
        super().__init__(config, image_encoder, text_encoder)
        d, self.dz, self.dt = config.embed_dim, image_encoder.out_dim, text_encoder.out_dim
        self.decode_image = decoder(d, self.dz)
        self.decode_text = decoder(d, self.dt)
        self.image_in = identity_or_linear(self.dz, d)
        #: (w_lin, w_conv) = the release's (a[1], a[0]); a[2], a[3] are unused there.
        self.branch_weights = nn.Parameter(torch.tensor([10.0, 1.0]))

    def theta(self, z: torch.Tensor, q: torch.Tensor, conjugate: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def compose_features(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        return self.theta(image_feats, text_feats)

    def target_features(self, image_feats: torch.Tensor) -> torch.Tensor:
        return self.image_in(image_feats)

    def representations(self, source: torch.Tensor, text: torch.Tensor, target: torch.Tensor
                        ) -> dict[str, torch.Tensor]:
        """Everything one training step computes, in the release's order: theta and both decoders on the query;
        the target vector; for the symmetric model the conjugate composition of the target (theta_star) and the
        decoders on it (unused by the loss, as released; run so that their BatchNorm statistics move alike)."""
        theta = self.theta(source, text)
        out = {"z": source, "q": text, "theta": theta, "rec_img": self.decode_image(theta),
               "rec_txt": self.decode_text(theta), "target": self.target_features(target)}
        if self.symmetric:
            theta_star = self.theta(target, text, conjugate=True)
            out.update(theta_star=theta_star, rec_img_star=self.decode_image(theta_star),
                       rec_txt_star=self.decode_text(theta_star))
        return out

    def losses_from(self, out: dict[str, torch.Tensor], base_loss: BaseLoss) -> dict[str, torch.Tensor]:
        """The released `compute_loss` + main.py terms: base loss, MSE reconstructions of the RAW features
        (gradients flow into them), and the symmetry loss of theta_star against the source image. The symmetry
        term is computed first, as released (a sampling base loss draws its triplets in the release's order); the
        terms are summed in main.py's order."""
        symmetry = None
        if "theta_star" in out:
            symmetry = base_loss(self.normalize(out["theta_star"]), self.normalize(self.target_features(out["z"])))
        terms = {"base": base_loss(self.normalize(out["theta"]), self.normalize(out["target"])),
                 "rec_img": F.mse_loss(out["rec_img"], out["z"]),
                 "rec_txt": F.mse_loss(out["rec_txt"], out["q"])}
        if symmetry is not None:
            terms["symmetry"] = symmetry
        return terms

    def training_losses(self, source: torch.Tensor, text: torch.Tensor, target: torch.Tensor, base_loss: BaseLoss
                        ) -> dict[str, torch.Tensor]:
        return self.losses_from(self.representations(source, text, target), base_loss)

    # the released weights ---------------------------------------------------------------------------
    def reference_names(self) -> dict[str, str]:
        """{our state_dict name: the release's name} for every entry loaded from a released checkpoint
        (`branch_weights` comes from the release's 4-vector `a`, see `load_reference_state_dict`)."""
        return map_reference_names(self, self.reference_prefixes)

    def load_reference_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load the composition head of a released ComposeAE-repo model's `state_dict()`; its encoders
        (`img_model.*`, `text_model.*`) are skipped. Every other released entry must map to ours and back."""
        names = self.reference_names()
        unused = sorted(k for k in state_dict if k not in set(names.values()) | {"a"}
                        and not k.startswith(REFERENCE_ENCODER_PREFIXES))
        head = [n for n, _ in self.named_parameters() if n not in names and n != "branch_weights"
                and not n.startswith(("image_encoder.", "text_encoder."))]
        if unused or head or "a" not in state_dict:
            raise CirlabError(f"{type(self).__name__}: not the released model's state_dict (released entries "
                              f"without a place here: {unused[:5]}; ours without a released entry: {head[:5]})")
        load_reference_entries(self, state_dict, names, f"released {type(self).__name__}")
        with torch.no_grad():
            self.branch_weights.copy_(state_dict["a"][[1, 0]])

    def reference_grads(self) -> dict[str, torch.Tensor]:
        """Our gradients under the release's names (`a` gets (w_conv, w_lin, 0, 0))."""
        grads = grads_by_reference_name(self, self.reference_names())
        g = self.branch_weights.grad if self.branch_weights.grad is not None else torch.zeros(2)
        grads["a"] = torch.stack([g[1], g[0], torch.zeros_like(g[0]), torch.zeros_like(g[0])])
        return grads


@dataclass
class ComposeAEOptions(ModelOptions):
    """`--model-option`s of composeae: the paper's ablations switch a branch off."""

    use_rho: bool = option(True, "the linear branch rho on the complex projection (false: the paper's ablation)")
    use_rho_conv: bool = option(True, "the convolutional branch rho_conv (false: the paper's ablation)")


@MODELS.register("composeae")
class ComposeAE(AutoencoderComposition):
    """Complex-space rotation of the image by the text, mapped back by rho and rho_conv (weights 10 and 1)."""

    Options = ComposeAEOptions

    reference_prefixes = {**AutoencoderComposition.reference_prefixes,
                          "projection_lin.eta": "encoderLinear.0.image_features",
                          "projection_lin.gamma": "encoderLinear.0.bert_features",
                          "rho": "encoderLinear.1.mapping",
                          "projection_conv.eta": "encoderWithConv.0.image_features",
                          "projection_conv.gamma": "encoderWithConv.0.bert_features",
                          "rho_conv.0": "encoderWithConv.1.conv",
                          "rho_conv.3": "encoderWithConv.1.mapping"}

    def __init__(self, config: ModelConfig, image_encoder: ImageEncoder, text_encoder: TextEncoder) -> None:
        super().__init__(config, image_encoder, text_encoder)
        d = config.embed_dim
        self.use_rho, self.use_rho_conv = self.options.use_rho, self.options.use_rho_conv
        if not (self.use_rho or self.use_rho_conv):
            raise CirlabError("composeae: use_rho and use_rho_conv cannot both be false")
        self.projection_lin = ComplexProjection(self.dz, self.dt, d) if self.use_rho else None
        self.rho = _mapping(2 * d, d) if self.use_rho else None
        self.projection_conv = ComplexProjection(self.dz, self.dt, d) if self.use_rho_conv else None
        self.rho_conv = nn.Sequential(nn.Conv1d(5, 64, 3, padding=1), nn.AdaptiveMaxPool1d(16), nn.Flatten(),
                                      _mapping(64 * 16, d)) if self.use_rho_conv else None

    def branches(self, z: torch.Tensor, q: torch.Tensor, conjugate: bool = False
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(theta_lin, theta_conv) for a batch; c = -1 when `conjugate`."""
        lin = conv = None
        if self.projection_lin is not None and self.rho is not None:
            _, _, re, im = self.projection_lin(z, q, conjugate)
            lin = self.rho(torch.cat([re, im], dim=1))
        if self.projection_conv is not None and self.rho_conv is not None:
            e, delta, re, im = self.projection_conv(z, q, conjugate)
            conv = self.rho_conv(torch.stack([e, delta, self.image_in(z), re, im], dim=1))
        return lin, conv

    def combine(self, lin: torch.Tensor | None, conv: torch.Tensor | None) -> torch.Tensor:
        out = 0.0
        if lin is not None:
            out = out + lin * self.branch_weights[0]
        if conv is not None:
            out = out + conv * self.branch_weights[1]
        return out  # type: ignore[return-value]

    def theta(self, z: torch.Tensor, q: torch.Tensor, conjugate: bool = False) -> torch.Tensor:
        return self.combine(*self.branches(z, q, conjugate))


@dataclass
class ComposeAECrossAttentionOptions(ComposeAEOptions):
    """`--model-option`s of composeae_xattn (both branches are needed)."""

    xattn_tokens: int = option(8, "tokens each branch's D-vector is split into (D / tokens channels each)")
    xattn_heads: int = option(8, "attention heads (the token size must divide by it)")


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

    Options = ComposeAECrossAttentionOptions

    def __init__(self, config: ModelConfig, image_encoder: ImageEncoder, text_encoder: TextEncoder) -> None:
        super().__init__(config, image_encoder, text_encoder)
        if not (self.use_rho and self.use_rho_conv):
            raise CirlabError("composeae_xattn needs both rho and rho_conv")
        d = config.embed_dim
        self.tokens, heads = self.options.xattn_tokens, self.options.xattn_heads
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
    """ComposeAE's ablation without the complex projection (the release's first `RealSpaceConcatAE`): a linear
    and a conv branch on [z, q] (10 and 1), both decoders on theta, no symmetry loss."""

    default_loss_weights = {"rec_img": 0.1, "rec_txt": 0.1}
    symmetric = False
    reference_prefixes = {**AutoencoderComposition.reference_prefixes,
                          "linear": "encoderLinear.1.mapping",
                          "conv.1": "encoderWithConv.1.conv1",
                          "conv.4": "encoderWithConv.1.mapping"}

    def __init__(self, config: ModelConfig, image_encoder: ImageEncoder, text_encoder: TextEncoder) -> None:
        super().__init__(config, image_encoder, text_encoder)
        d, joint = config.embed_dim, self.dz + self.dt
        self.linear = _mapping(joint, d)
        self.conv = nn.Sequential(nn.Unflatten(1, (1, joint)), nn.Conv1d(1, 64, 3, padding=1),
                                  nn.AdaptiveMaxPool1d(20), nn.Flatten(), _mapping(64 * 20, d))

    def theta(self, z: torch.Tensor, q: torch.Tensor, conjugate: bool = False) -> torch.Tensor:
        x = torch.cat([z, q], dim=1)
        return self.linear(x) * self.branch_weights[0] + self.conv(x) * self.branch_weights[1]
