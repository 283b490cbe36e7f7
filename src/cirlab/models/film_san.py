"""FiLM residual blocks + a two-hop Stacked Attention Network (huubinh49/Composed-Image-Retrieval).

Equal to the release's FiLM + SAN model, the SECOND class named `RealSpaceConcatAE` in
`img_text_composition_models.py` (with `FiLM`, `ResBlock`, `FiLMBlock`, `AttentionNet`, `OurRealLinearMapping`)
plus the loss lines of `main.py`, at commit 4117f5e987bdca1382b22211a876e420feaf6389 (tested against fixtures
produced by that code: tests/test_parity.py, cases `filmsan_*`).

Two branches on the reference image, both conditioned on the text q = text_head(sentence embedding):
- image vector z = image_head(GAP(map)) (Dropout(0.2), Linear, ReLU, Dropout(0.1), Linear), also the target;
- SAN (`StackedAttention`, on z): `q1 = W_q1 q + b`, `p1 = softmax(W_a1 tanh(W_i1 z + q1))` over the features,
  `u1 = p1 * z + q1`, `p2 = softmax(W_a2 tanh(W_i2 z + W_q2 u1))`, `theta_lin = (1 - p2) * z`; the image
  projections W_i have no bias, Dropout(0.2) follows each tanh;
- FiLM (`FiLM`, on the last conv map): `film_blocks` residual blocks (6) of `film_channels` (512) channels; each
  concatenates two coordinate maps in [-1, 1] (x then y), r = ReLU(conv1x1), h = BN(conv3x3(r)) (affine BN),
  out = ReLU(gamma * h + beta) + r; a Linear(Dt -> 2 * blocks * channels) gives every block's (gamma, beta)
  (the release names them the other way round twice over; index 0 multiplies). Global max pool,
  concatenated with q, then BN -> ReLU -> Linear -> ReLU -> Dropout(0.2) -> Linear gives `theta_conv`;
- `theta = w_0 * theta_lin + w_1 * theta_conv`, w learnable, initialised to 0.7 / 0.3 and trained at 0.01x the
  learning rate (the `branch_weights` group; `--model-option lr_mults='{"branch_weights": 1}'` changes it);
- training: `base + 0.1 MSE(d_img(theta_lin), z) + 0.1 MSE(d_txt(theta_conv), q)`: the decoders read the
  branches, not theta, and the reconstruction targets are z and q themselves (gradients flow into them).

Option `mask`: `none` (default, the release) or `paper`: the paper's Eq. 11 multiplies the FiLM maps by the
SAN's second mask m2 = p2 channel by channel before the mapping (the release omits it); it needs
`film_channels == embed_dim`. It is applied to the max-pooled maps, which is the same (p2 > 0).

Deviations from the release, none of which changes a number it computes: the model runs (the released
`main.py --model Ours` never builds it) and takes a batch of one (the release `.squeeze()`s the batch axis);
maps need not be square and the FiLM width `film_channels` may differ from the map's channels (the release
needs both); the text is any text encoder followed by the text head (the release: a frozen RoBERTa-NLI
sentence encoder, e.g. `--text-encoder minilm --freeze-text` here).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from cirlab.encoders import ImageEncoder, TextEncoder
from cirlab.models._layers import (
    bn,
    decoder,
    grads_by_reference_name,
    load_reference_entries,
    map_reference_names,
)
from cirlab.models.base import MODELS, BaseLoss, CompositionModel, ModelConfig, ModelOptions
from cirlab.utils.errors import CirlabError
from cirlab.utils.options import option

#: our prefix -> the released model's prefix (huubinh49/Composed-Image-Retrieval @ 4117f5e, the second
#: `RealSpaceConcatAE`); `FiLM` and `StackedAttention` keep the release's layer names inside.
REFERENCE_PREFIXES = {"image_head": "fc", "text_head": "fc_text_output", "film": "film_img_txt",
                      "film_out": "encoderLinear.1.mapping", "san": "attention_net", "decode_image": "decoder",
                      "decode_text": "txtdecoder", "branch_weights": "a", "norm_scale": "normalization_layer.norm_s"}
#: The released model's encoders (ResNet-18 trunk, SentenceTransformer), not loaded here.
REFERENCE_ENCODER_PREFIXES = ("img_model.", "text_model.")


def coordinate_maps(x: torch.Tensor) -> torch.Tensor:
    """(B, 2, h, w) maps of the x (along the width) and y (along the height) coordinates in [-1, 1]."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y])[None].expand(b, 2, h, w)


class FiLMResBlock(nn.Module):
    """The release's ResBlock: [x, coords] -> conv1 (1x1) -> ReLU (= r); ReLU(gamma * norm2(conv2(r)) + beta) + r."""

    def __init__(self, dim_in: int, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim_in + 2, channels, 1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        r = F.relu(self.conv1(torch.cat([x, coordinate_maps(x)], dim=1)))
        h = self.norm2(self.conv2(r))
        return F.relu(gamma[:, :, None, None] * h + beta[:, :, None, None]) + r


class FiLM(nn.Module):
    """The release's FiLM: `film_generator(question)` viewed as (B, blocks, 2, channels) gives each block's
    (gamma, beta); the map goes through the blocks in turn."""

    def __init__(self, question_dim: int, num_blocks: int, channels: int, in_channels: int | None = None) -> None:
        super().__init__()
        self.num_blocks, self.channels = num_blocks, channels
        self.film_generator = nn.Linear(question_dim, 2 * num_blocks * channels)
        first = channels if in_channels is None else in_channels
        self.res_blocks = nn.ModuleList([FiLMResBlock(first if i == 0 else channels, channels)
                                         for i in range(num_blocks)])

    def forward(self, x: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        film = self.film_generator(question).view(question.shape[0], self.num_blocks, 2, self.channels)
        for i, block in enumerate(self.res_blocks):
            x = block(x, film[:, i, 0], film[:, i, 1])
        return x


class SANOutput(NamedTuple):
    out: torch.Tensor
    pi_1: torch.Tensor
    pi_2: torch.Tensor


class StackedAttention(nn.Module):
    """The release's AttentionNet (two hops, feature-wise softmax); returns (1 - pi_2) * image and both masks.
    Works on (B, D) or (B, 1, D) inputs; the weights start Xavier-uniform as released."""

    def __init__(self, image_dim: int, question_dim: int) -> None:
        super().__init__()
        self.image1 = nn.Linear(image_dim, image_dim, bias=False)
        self.question1 = nn.Linear(question_dim, image_dim)
        self.attention1 = nn.Linear(image_dim, image_dim)
        self.image2 = nn.Linear(image_dim, image_dim, bias=False)
        self.question2 = nn.Linear(image_dim, image_dim)
        self.attention2 = nn.Linear(image_dim, image_dim)
        self.dropout = nn.Dropout(0.2)
        for layer in (self.image1, self.question1, self.attention1, self.image2, self.question2, self.attention2):
            nn.init.xavier_uniform_(layer.weight)

    def forward(self, image: torch.Tensor, question: torch.Tensor) -> SANOutput:
        q1 = self.question1(question)
        pi_1 = torch.softmax(self.attention1(self.dropout(torch.tanh(self.image1(image) + q1))), dim=-1)
        u_1 = pi_1 * image + q1
        pi_2 = torch.softmax(self.attention2(self.dropout(torch.tanh(self.image2(image) + self.question2(u_1)))),
                             dim=-1)
        return SANOutput((1 - pi_2) * image, pi_1, pi_2)


@dataclass
class FiLMSANOptions(ModelOptions):
    """`--model-option`s of film_san (see the module docstring)."""

    film_blocks: int = option(6, "FiLM residual blocks")
    film_channels: int = option(512, "channels of the FiLM blocks")
    mask: Literal["none", "paper"] = option("none", "none: the release; paper: Eq. 11 multiplies the FiLM channels "
                                                    "by the SAN mask m2 (needs film_channels == embed_dim)")


@MODELS.register("film_san")
class FiLMSAN(CompositionModel):
    """theta = 0.7 * SAN-kept image vector + 0.3 * FiLM-modulated map vector (weights learnable)."""

    Options = FiLMSANOptions
    default_loss_weights = {"rec_img": 0.1, "rec_txt": 0.1}
    default_lr_mults = {"branch_weights": 0.01}

    def __init__(self, config: ModelConfig, image_encoder: ImageEncoder, text_encoder: TextEncoder) -> None:
        super().__init__(config, image_encoder, text_encoder)
        c, d, dt = image_encoder.map_channels, config.embed_dim, text_encoder.out_dim
        num_blocks, cf = self.options.film_blocks, self.options.film_channels
        self.mask = self.options.mask
        if self.mask == "paper" and cf != d:
            raise CirlabError(f"film_san: mask=paper multiplies the FiLM channels by the SAN mask, so film_channels "
                              f"({cf}) must equal embed_dim ({d})")
        self.image_head = nn.Sequential(nn.Dropout(0.2), nn.Linear(c, d), nn.ReLU(), nn.Dropout(0.1), nn.Linear(d, d))
        self.text_head = nn.Sequential(nn.Dropout(0.1), nn.Linear(dt, dt), nn.ReLU(), nn.Linear(dt, dt))
        self.film = FiLM(dt, num_blocks, cf, in_channels=c)
        self.film_pool = nn.AdaptiveMaxPool2d(1)
        self.film_out = nn.Sequential(bn(cf + dt), nn.ReLU(), nn.Linear(cf + dt, d), nn.ReLU(), nn.Dropout(0.2),
                                      nn.Linear(d, d))
        self.san = StackedAttention(d, dt)
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
        """z, q, theta_lin, theta_conv and theta for one batch (map (B, C, h, w), sentence embedding (B, Dt))."""
        q, z = self.text_head(text), self.target_features(fmap)
        pooled = self.film_pool(self.film(fmap, q)).flatten(1)
        san = self.san(z, q)
        if self.mask == "paper":
            pooled = pooled * san.pi_2
        theta_conv = self.film_out(torch.cat([pooled, q], dim=1))
        theta = san.out * self.branch_weights[0] + theta_conv * self.branch_weights[1]
        return {"z": z, "q": q, "theta_lin": san.out, "theta_conv": theta_conv, "theta": theta}

    def compose_features(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        return self.branches(image_feats, text_feats)["theta"]

    def representations(self, source: torch.Tensor, text: torch.Tensor, target: torch.Tensor
                        ) -> dict[str, torch.Tensor]:
        """Everything one training step computes: the branches, the decoders on them, and the target vector."""
        out = self.branches(source, text)
        out.update(rec_img=self.decode_image(out["theta_lin"]), rec_txt=self.decode_text(out["theta_conv"]),
                   target=self.target_features(target))
        return out

    def losses_from(self, out: dict[str, torch.Tensor], base_loss: BaseLoss) -> dict[str, torch.Tensor]:
        """The released `compute_loss` + main.py terms on the normalised theta and target."""
        return {"base": base_loss(self.normalize(out["theta"]), self.normalize(out["target"])),
                "rec_img": F.mse_loss(out["rec_img"], out["z"]),
                "rec_txt": F.mse_loss(out["rec_txt"], out["q"])}

    def training_losses(self, source: torch.Tensor, text: torch.Tensor, target: torch.Tensor, base_loss: BaseLoss
                        ) -> dict[str, torch.Tensor]:
        return self.losses_from(self.representations(source, text, target), base_loss)

    # the released weights ---------------------------------------------------------------------------
    def reference_names(self) -> dict[str, str]:
        """{our state_dict name: the release's name} for every entry of the composition head."""
        return map_reference_names(self, REFERENCE_PREFIXES)

    def load_reference_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load the head of the released FiLM + SAN model's `state_dict()`; its encoders (`img_model.*`,
        `text_model.*`) are skipped. Every other released entry must map to ours and back."""
        names = self.reference_names()
        unused = sorted(k for k in state_dict if k not in set(names.values())
                        and not k.startswith(REFERENCE_ENCODER_PREFIXES))
        head = [n for n, _ in self.named_parameters() if n not in names
                and not n.startswith(("image_encoder.", "text_encoder."))]
        if unused or head:
            raise CirlabError(f"film_san: not the released model's state_dict (released entries without a place "
                              f"here: {unused[:5]}; ours without a released entry: {head[:5]})")
        load_reference_entries(self, state_dict, names, "released FiLM + SAN")

    def reference_grads(self) -> dict[str, torch.Tensor]:
        """Our gradients under the release's names."""
        return grads_by_reference_name(self, self.reference_names())
