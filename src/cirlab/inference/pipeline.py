"""A loaded model and its preprocessing: what evaluation, indexing, serving and the Python API run.

`load(path, device=...)` reads a model folder or a run directory (`cirlab.models.folder`): the model in eval mode
on the device, the "preprocess" block (derived from the train config and the dataset class for runs saved before
that block existed) and, for a run, its `RunSpec` (dataset, evaluation split). Inputs always follow the model: a
`Pipeline` reads its device from the model's parameters at each call, so `pipe.model.cuda()` (or `pipe.to("cuda")`)
is all it takes to move it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from cirlab.datasets import CIRDataset, load_rgb
from cirlab.datasets.transforms import ImageTransform, Preprocess
from cirlab.inference.embedding import embed_batches
from cirlab.inference.precision import check_precision
from cirlab.inference.run_spec import RunSpec
from cirlab.models import CompositionModel
from cirlab.models.folder import CONFIG_FILE, read_folder_config
from cirlab.utils.device import resolve_device
from cirlab.utils.errors import CirlabError

#: Images per forward pass when neither the caller nor the run says (a run uses its `eval_batch_size`).
DEFAULT_BATCH_SIZE = 64
ImageInput = Image.Image | str | Path


class Pipeline:
    """A model ready for retrieval: `compose(images, texts)` gives query vectors and `embed(images)` gallery
    vectors, both (B, D), unit length, float32, on the model's device, in one embedding space.

    `run` describes the data of a run directory (None for a bare model folder); `precision` is the autocast of
    the forward passes ("fp32", "bf16", or "fp16" on CUDA); `batch_size` bounds each forward pass."""

    def __init__(self, model: CompositionModel, preprocess: Preprocess, run: RunSpec | None = None,
                 directory: Path | None = None, precision: str = "fp32", batch_size: int = DEFAULT_BATCH_SIZE
                 ) -> None:
        self.model = model
        self.preprocess = preprocess
        self.run = run
        self.directory = Path(directory) if directory is not None else None
        self.precision = precision
        self.batch_size = batch_size
        check_precision(precision, self.device)
        if batch_size < 1:
            raise CirlabError(f"batch size must be >= 1, got {batch_size}")

    def __repr__(self) -> str:
        where = f" from {self.directory}" if self.directory else ""
        return (f"Pipeline({self.model.config.name}{where}, {self.embed_dim}-d, device {self.device}, "
                f"preprocess {self.preprocess})")

    @property
    def device(self) -> torch.device:
        """Where the model is now (inputs are sent there)."""
        return next(self.model.parameters()).device

    @property
    def transform(self) -> ImageTransform:
        """The evaluation transform of `preprocess` (PIL image -> normalised tensor)."""
        return self.preprocess.transform()

    @property
    def embed_dim(self) -> int:
        return self.model.embed_dim

    def to(self, device: str | torch.device) -> Pipeline:
        """Move the model to `device` ('cpu', 'cuda', 'cuda:N', 'auto'); returns the pipeline."""
        self.model.to(resolve_device(device))
        check_precision(self.precision, self.device)
        return self

    # PIL images -------------------------------------------------------------------------------------------
    def compose(self, images: Sequence[ImageInput], texts: Sequence[str]) -> torch.Tensor:
        """Query vectors for reference images (PIL images or image files) modified by texts: (B, D) on the device."""
        if isinstance(texts, str) or len(images) != len(texts):
            raise CirlabError(f"compose takes a list of images and a list of texts of the same length, got "
                              f"{len(images)} image(s) and {'a string' if isinstance(texts, str) else len(texts)}")
        self.model.eval()
        device = self.device
        return embed_batches(
            len(images), lambda rows: self.model.compose(self._pixels(images, rows, device), [texts[r] for r in rows]),
            self.embed_dim, batch_size=self.batch_size, device=device, precision=self.precision,
            output_device=device)

    def embed(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Gallery vectors for images (PIL images or image files): (B, D) on the device."""
        self.model.eval()
        device = self.device
        return embed_batches(len(images), lambda rows: self.model.embed_target(self._pixels(images, rows, device)),
                             self.embed_dim, batch_size=self.batch_size, device=device, precision=self.precision,
                             output_device=device)

    def _pixels(self, images: Sequence[ImageInput], rows: list[int], device: torch.device) -> torch.Tensor:
        transform = self.transform
        loaded = [images[r] if isinstance(images[r], Image.Image) else load_rgb(images[r]) for r in rows]
        return torch.stack([transform(img) for img in loaded]).to(device)

    # dataset images ---------------------------------------------------------------------------------------
    def embed_dataset(self, dataset: CIRDataset, indices: Sequence[int], progress: bool = False,
                      desc: str = "gallery") -> torch.Tensor:
        """Gallery vectors of dataset images `indices`, (N, D) on the CPU; under torchrun every rank encodes a
        share and all get the whole."""
        self.model.eval()
        device, transform = self.device, self.transform
        return embed_batches(
            len(indices), lambda rows: self.model.embed_target(
                dataset.load_batch([indices[r] for r in rows], transform).to(device)),
            self.embed_dim, batch_size=self.batch_size, device=device, precision=self.precision, shard=True,
            progress=progress, desc=desc, describe=lambda r: str(dataset.image_path(indices[r])))

    def compose_dataset(self, dataset: CIRDataset, images: Sequence[int], texts: Sequence[str],
                        progress: bool = False) -> torch.Tensor:
        """Query vectors of dataset images `images` modified by `texts`, (Q, D) on the CPU, sharded like
        `embed_dataset`."""
        self.model.eval()
        device, transform = self.device, self.transform
        return embed_batches(
            len(images), lambda rows: self.model.compose(
                dataset.load_batch([images[r] for r in rows], transform).to(device), [texts[r] for r in rows]),
            self.embed_dim, batch_size=self.batch_size, device=device, precision=self.precision, shard=True,
            progress=progress, desc="queries", describe=lambda r: f"query {r} ({dataset.image_path(images[r])})")

    # the run's data and the folder ------------------------------------------------------------------------
    def open_dataset(self, split: str | None = None, data_root: str | Path | None = None, **options: object
                     ) -> CIRDataset:
        """The dataset the run trained on, on `split` (default: its evaluation split); see `RunSpec.open_dataset`."""
        if self.run is None:
            raise CirlabError(f"{self.directory or 'this model'} is a model folder, not a run directory: it names no "
                              "dataset (index images with --images DIR; in Python, build the dataset with "
                              "cirlab.build_dataset(name, root, split))")
        return self.run.open_dataset(split, data_root, **options)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the model folder (config.json with this preprocess block, model.safetensors, text assets)."""
        self.model.save_pretrained(directory, self.preprocess)


def load(path: str | Path, device: str | torch.device = "cpu", precision: str = "fp32",
         batch_size: int | None = None) -> Pipeline:
    """The pipeline of a model folder or a run directory, on `device` ('cpu', 'cuda', 'cuda:N' or 'auto').

    `batch_size` defaults to the run's `eval_batch_size` (64 for a model folder)."""
    directory = Path(path)
    data = read_folder_config(directory)
    config_path = directory / CONFIG_FILE
    run = RunSpec.from_train_dict(data["train"], f"{config_path}: train") if "train" in data else None
    model = CompositionModel.from_pretrained(directory, device)
    if "preprocess" in data:
        preprocess = Preprocess.from_dict(data["preprocess"], f"{config_path}: preprocess")
    elif run is not None:
        preprocess = run.preprocess(model)
    else:
        raise CirlabError(f"{config_path} has no 'preprocess' block: save the model with "
                          "model.save_pretrained(dir, preprocess=Preprocess(...)) or Pipeline.save_pretrained(dir)")
    size = batch_size or (run.eval_batch_size if run is not None else DEFAULT_BATCH_SIZE)
    return Pipeline(model, preprocess, run, directory, precision, size)
