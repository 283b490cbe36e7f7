"""TIRG (Vo et al., CVPR 2019): gated residual composition, on the pooled vector or on the last conv map.

Both equal google/tirg's released `img_text_composition_models.py` (@ c58daa066d8af1a5b3de1a0ef6d112519ddda611):
`TIRG` (parity cases `tirg_compose_*`, `tirg_loss_*`) and `TIRGLastConv` (no fixture; same layers and formula).
The released weights load with `load_reference_state_dict` (names: `reference_names()`); the release's 4-vector
`a` becomes our 2-vector `weights` (it only ever uses a[0] and a[1]). The image and text encoders (`img_model.*`,
`text_model.*`) are cirlab's own modules and are not loaded from a released state_dict; the TIRG text model loads
with `LSTMTextEncoder.load_reference_state_dict`.
"""

from __future__ import annotations

import torch
from torch import nn

from cirlab.encoders import ImageEncoder, TextEncoder
from cirlab.models._layers import grads_by_reference_name, load_reference_entries, map_reference_names
from cirlab.models.base import MODELS, CompositionModel, ModelConfig
from cirlab.utils.errors import CirlabError

#: Released-state_dict prefixes of sub-modules that cirlab replaces with its own encoders (not loaded).
REFERENCE_ENCODER_PREFIXES = ("img_model.", "text_model.")
#: The learnable scale of the release's `normalization_layer` (ours: `CompositionModel.norm_scale`).
NORM_SCALE_NAMES = {"norm_scale": "normalization_layer.norm_s"}


class ReleasedTIRGHead(CompositionModel):
    """A google/tirg model family member: loads the release's weights, and gives its gradients under their names.

    `reference_prefixes` maps our module prefixes to the release's (the layers below keep their numbering);
    `mixing` names our parameter that holds the release's a[0], a[1] (None when the model has none)."""

    reference_prefixes: dict[str, str] = NORM_SCALE_NAMES
    mixing: str | None = None

    def reference_names(self) -> dict[str, str]:
        """{our state_dict name: the release's name}, the mixing weights excluded (see `load_reference_state_dict`)."""
        return map_reference_names(self, self.reference_prefixes)

    def load_reference_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load the composition head of a released google/tirg model's `state_dict()`: every entry outside its
        encoders must have a place here and every head parameter of ours a released entry."""
        names = self.reference_names()
        extra = {"a"} if self.mixing else set()
        unused = sorted(k for k in state_dict if k not in set(names.values()) | extra
                        and not k.startswith(REFERENCE_ENCODER_PREFIXES))
        head = [n for n, _ in self.named_parameters() if n not in names and n != self.mixing
                and not n.startswith(("image_encoder.", "text_encoder."))]
        if unused or head or not extra <= set(state_dict):
            raise CirlabError(f"{type(self).__name__}: not the released model's state_dict (released entries without "
                              f"a place here: {unused[:5]}; ours without a released entry: {head[:5]})")
        load_reference_entries(self, state_dict, names, f"released {type(self).__name__}")
        if self.mixing:
            with torch.no_grad():
                getattr(self, self.mixing).copy_(state_dict["a"][:2])

    def reference_grads(self) -> dict[str, torch.Tensor]:
        """Our gradients under the release's names (`a` gets (g0, g1, 0, 0): a[2], a[3] are unused there)."""
        grads = grads_by_reference_name(self, self.reference_names())
        if self.mixing:
            w = getattr(self, self.mixing)
            g = w.grad if w.grad is not None else torch.zeros_like(w)
            grads["a"] = torch.cat([g, torch.zeros(2, dtype=g.dtype, device=g.device)])
        return grads


@MODELS.register("tirg")
class TIRG(ReleasedTIRGHead):
    """f = sigmoid(G([x, t])) * x * w_g + R([x, t]) * w_r, w_g = 1, w_r = 10 at init (image first in [x, t]).

    G = BN -> ReLU -> Linear(Dx + Dt -> D); R = BN -> ReLU -> Linear(Dx + Dt -> Dx + Dt) -> ReLU -> Linear(-> D).
    The release's Sequentials start with a parameter-free concatenation, so their layer indices are ours + 1."""

    reference_prefixes = {**NORM_SCALE_NAMES, "gate.0": "gated_feature_composer.1",
                          "gate.2": "gated_feature_composer.3", "residual.0": "res_info_composer.1",
                          "residual.2": "res_info_composer.3", "residual.4": "res_info_composer.5"}
    mixing = "weights"

    def __init__(self, config: ModelConfig, image_encoder: ImageEncoder, text_encoder: TextEncoder) -> None:
        super().__init__(config, image_encoder, text_encoder)
        d, dt = config.embed_dim, config.text_dim
        self.gate = nn.Sequential(nn.BatchNorm1d(d + dt), nn.ReLU(), nn.Linear(d + dt, d))
        self.residual = nn.Sequential(nn.BatchNorm1d(d + dt), nn.ReLU(), nn.Linear(d + dt, d + dt), nn.ReLU(),
                                      nn.Linear(d + dt, d))
        self.weights = nn.Parameter(torch.tensor([1.0, 10.0]))

    def compose_features(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        xt = torch.cat([image_feats, text_feats], dim=1)
        return torch.sigmoid(self.gate(xt)) * image_feats * self.weights[0] + self.residual(xt) * self.weights[1]


@MODELS.register("tirg_lastconv")
class TIRGLastConv(ReleasedTIRGHead):
    """TIRG applied to the last conv map with the text tiled over the grid, then pooled and projected (the
    release's `TIRGLastConv`: `mod2d_gate` = our `gate`, `mod2d` = our `residual`, each BN2d -> Conv3x3 -> ReLU ->
    Conv3x3). The target is the plain image vector (pool + projection of the same map)."""

    reference_prefixes = {**NORM_SCALE_NAMES, "gate": "mod2d_gate", "residual": "mod2d"}
    mixing = "weights"

    def __init__(self, config: ModelConfig, image_encoder: ImageEncoder, text_encoder: TextEncoder) -> None:
        super().__init__(config, image_encoder, text_encoder)
        c, dt = image_encoder.map_channels, config.text_dim

        def branch() -> nn.Sequential:
            return nn.Sequential(nn.BatchNorm2d(c + dt), nn.Conv2d(c + dt, c + dt, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(c + dt, c, 3, padding=1))

        self.gate, self.residual = branch(), branch()
        self.weights = nn.Parameter(torch.tensor([1.0, 10.0]))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder.forward_map(images)

    def compose_features(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        b, _, h, w = image_feats.shape
        tiled = text_feats[:, :, None, None].expand(b, text_feats.shape[1], h, w)
        xt = torch.cat([image_feats, tiled], dim=1)
        fmap = self.weights[0] * torch.sigmoid(self.gate(xt)) * image_feats + self.weights[1] * self.residual(xt)
        return self.image_encoder.pool(fmap)

    def target_features(self, image_feats: torch.Tensor) -> torch.Tensor:
        return self.image_encoder.pool(image_feats)
