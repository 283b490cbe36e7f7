"""How much the feature cache speeds up training with frozen pretrained encoders on a CPU.

Trains the Combiner on frozen EfficientNet-Lite0 (ImageNet) + MiniLM twice with the same pairs: end to end
(every batch re-encodes its 2 x batch images and texts) and on the feature cache (encoded once). Prints seconds
per iteration, the speed-up, the one-off cache cost and the iteration count after which caching has paid off.

    OMP_NUM_THREADS=1 python bench/feature_cache_speedup.py --image-size 224 --iters 5
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from cirlab.datasets.css_synth import CSSSynthConfig, generate_css
from cirlab.models import ModelConfig
from cirlab.training import TrainConfig, Trainer


def train(root: Path, out: Path, cached: bool, args: argparse.Namespace) -> dict:
    model = ModelConfig(name="combiner", image_encoder="efficientnet_lite0", text_encoder="minilm",
                        image_options={"project": False}, text_options={"project": False}, text_dim=384,
                        freeze_image=True, freeze_text=True, options={"proj_dim": 512, "hidden_dim": 1024})
    config = TrainConfig(data_root=str(root), model=model, loss="batch_based_classification", optimizer="adam",
                         lr=1e-4, iters=args.iters, batch_size=args.batch_size, image_size=args.image_size,
                         checkpoint_every=0, device="cpu", feature_cache=cached)
    summary = Trainer(config, out, evaluate=None, progress=False).train()
    cache = [json.loads(p.read_text())["seconds"] for p in (out / "feature_cache").glob("*/meta.json")]
    return {"seconds": summary["train_seconds"], "cache_seconds": sum(cache)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--train-images", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "css"
        generate_css(root, CSSSynthConfig(seed=0, train_images=args.train_images, test_images=50), progress=False)
        plain = train(root, Path(tmp) / "plain", False, args)
        cached = train(root, Path(tmp) / "cached", True, args)
    per_plain, per_cached = plain["seconds"] / args.iters, cached["seconds"] / args.iters
    images_per_iter = 2 * args.batch_size
    print(f"Combiner on frozen EfficientNet-Lite0 ({args.image_size} px) + MiniLM, batch {args.batch_size}, "
          f"{args.iters} iterations, {args.train_images} training images")
    print(f"end to end : {per_plain:8.3f} s/iter ({images_per_iter / per_plain:.1f} images/s)")
    print(f"cached     : {per_cached:8.4f} s/iter")
    print(f"speed-up   : {per_plain / max(per_cached, 1e-9):8.0f}x per iteration")
    print(f"cache cost : {cached['cache_seconds']:8.1f} s once ({args.train_images / cached['cache_seconds']:.1f} "
          f"images/s incl. texts); pays off after {cached['cache_seconds'] / max(per_plain - per_cached, 1e-9):.0f} "
          "iterations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
