"""CLIP4Cir's Combiner (Baldrati et al., 2022-2023): a small fusion network on frozen image/text features.

Equal to `src/combiner.py` of ABaldrati/CLIP4Cir at commit dfed9f748a8a4d05abf613164e06d59b22dbdf13 (tested
against fixtures produced by that code: tests/test_parity.py, cases `clip4cir_*`). With i the image feature
(size d) and w the text feature, every Dropout p = 0.5:
`w' = Dropout(ReLU(text_projection_layer(w)))`, `i' = Dropout(ReLU(image_projection_layer(i)))`,
`raw = [w', i']` (text first), `cf = Dropout(ReLU(combiner_layer(raw)))`,
`lambda = dynamic_scalar(raw)` = sigmoid(Linear(Dropout(ReLU(Linear(raw))))),
`out = normalize(output_layer(cf) + lambda * w + (1 - lambda) * i)`; the target is `normalize(i)`.

Training (the loss lines of `src/combiner_train.py`): `logits = 100 * out @ normalize(target)^T`,
cross-entropy with labels arange(B), i.e. `--loss batch_based_classification`. The scale 100 is fixed (option
`norm_scale`). cirlab's losses take two scaled feature sets, so the Combiner scales both by sqrt(100): the
product is 100 x cosine, the release's logits (equal up to float rounding), and with `--loss soft_triplet`
(not in CLIP4Cir) the squared distances are 100 x those of unit vectors. Stage 2 of CLIP4Cir: frozen
encoders with `project=false`, `--freeze-image --freeze-text --feature-cache`.

Sizes: `proj_dim` = 4d and `hidden_dim` = 8d by default. The release's script writes its defaults as
`640 * 4` and `640 * 8` (2560 / 5120) for its RN50x4 CLIP (d = 640); cirlab keeps the ratio for other d,
options `proj_dim=2560 hidden_dim=5120` give the script's literal widths.

Deviations (options do not apply; the release has no such case): when the text size differs from d
(CLIP's are equal), a Linear(Dt -> d) maps w first (`text_align`); the release trains under fp16 autocast,
cirlab in the trainer's precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cirlab.encoders import ImageEncoder, TextEncoder
from cirlab.models._layers import identity_or_linear
from cirlab.models.base import MODELS, CompositionModel, ModelConfig, ModelOptions
from cirlab.utils.errors import CirlabError
from cirlab.utils.options import option

#: Released CLIP4Cir `Combiner.state_dict()` name -> cirlab `Combiner` parameter name (the layers keep the
#: release's names, so a checkpoint's `"Combiner"` entry loads as is through `load_reference_state_dict`).
REFERENCE_NAMES: dict[str, str] = {
    f"{layer}.{kind}": f"{layer}.{kind}"
    for layer in ("text_projection_layer", "image_projection_layer", "combiner_layer", "output_layer",
                  "dynamic_scalar.0", "dynamic_scalar.3")
    for kind in ("weight", "bias")
}


@dataclass
class CombinerOptions(ModelOptions):
    """`--model-option`s of combiner; the logit scale is fixed at 100 (CLIP4Cir's)."""

    norm_scale: float = option(100.0, "the fixed logit scale s: query . target = s x cosine (CLIP4Cir: 100)")
    proj_dim: int = option(0, "width of the text/image projection layers; 0: 4 x the image feature size d "
                              "(the script's 640 * 4 for d = 640)")
    hidden_dim: int = option(0, "width of the combiner and dynamic-scalar layers; 0: 8 x d (the script's 640 * 8)")


@MODELS.register("combiner")
class Combiner(CompositionModel):
    """normalize(output_layer(cf) + lambda * w + (1 - lambda) * i), CLIP4Cir's `combine_features`."""

    Options = CombinerOptions

    def __init__(self, config: ModelConfig, image_encoder: ImageEncoder, text_encoder: TextEncoder) -> None:
        super().__init__(config, image_encoder, text_encoder)
        d = image_encoder.out_dim
        proj, hidden = self.options.proj_dim or 4 * d, self.options.hidden_dim or 8 * d
        self.dim = d
        self.text_align = identity_or_linear(text_encoder.out_dim, d)
        self.text_projection_layer = nn.Linear(d, proj)
        self.image_projection_layer = nn.Linear(d, proj)
        self.dropout1 = nn.Dropout(0.5)
        self.dropout2 = nn.Dropout(0.5)
        self.combiner_layer = nn.Linear(2 * proj, hidden)
        self.output_layer = nn.Linear(hidden, d)
        self.dropout3 = nn.Dropout(0.5)
        self.dynamic_scalar = nn.Sequential(nn.Linear(2 * proj, hidden), nn.ReLU(), nn.Dropout(0.5),
                                            nn.Linear(hidden, 1), nn.Sigmoid())
        self.norm_scale.requires_grad_(False)

    @property
    def embed_dim(self) -> int:
        return self.dim

    def combine(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(unit query, lambda): the release's `combine_features` and its dynamic scalar (B, 1)."""
        w = self.text_align(text_feats)
        text_projected = self.dropout1(F.relu(self.text_projection_layer(w)))
        image_projected = self.dropout2(F.relu(self.image_projection_layer(image_feats)))
        raw = torch.cat((text_projected, image_projected), -1)
        combined = self.dropout3(F.relu(self.combiner_layer(raw)))
        lam = self.dynamic_scalar(raw)
        return F.normalize(self.output_layer(combined) + lam * w + (1 - lam) * image_feats, dim=-1), lam

    def compose_features(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        return self.combine(image_feats, text_feats)[0]

    def target_features(self, image_feats: torch.Tensor) -> torch.Tensor:
        return F.normalize(image_feats, dim=-1)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """sqrt(s) * x / ||x||: query . target = s * cosine, the release's `logit_scale * predicted @ target.T`
        with s applied once (s = `norm_scale`, 100)."""
        return self.norm_scale.sqrt() * F.normalize(x, dim=-1)

    def load_reference_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a released CLIP4Cir `Combiner.state_dict()` (names: `REFERENCE_NAMES`); every entry is needed."""
        missing = sorted(set(REFERENCE_NAMES) - set(state_dict))
        extra = sorted(set(state_dict) - set(REFERENCE_NAMES))
        if missing or extra:
            raise CirlabError(f"not a CLIP4Cir Combiner state_dict: missing {missing}, unexpected {extra}")
        own = dict(self.named_parameters())
        for ref_name, name in REFERENCE_NAMES.items():
            if tuple(state_dict[ref_name].shape) != tuple(own[name].shape):
                raise CirlabError(f"CLIP4Cir Combiner entry {ref_name}: shape {tuple(state_dict[ref_name].shape)}, "
                                  f"this model has {tuple(own[name].shape)} (check proj_dim / hidden_dim)")
        with torch.no_grad():
            for ref_name, name in REFERENCE_NAMES.items():
                own[name].copy_(state_dict[ref_name])
