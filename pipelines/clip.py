"""CLIP image-text scoring (Appendix A.1 step 3) with Beam `RunInference` and open_clip.

`OpenClipModelHandler` loads an open_clip model from a model name and a local checkpoint (named
pretrained tags would download, which a pipeline must not do mid-run), once per worker, and
scores batches on the CPU or CUDA. Images reach it already decoded to the model's input size
(`filters.image_rules.decode_for_model`, JPEG draft mode), so the handler only normalises,
stacks and runs the two towers. The score is the cosine similarity of the normalised image and
text embeddings, as LAION and DataComp report it.

`write_tiny_checkpoint` makes a small random-init model file (with its architecture JSON), loaded
through the same path a real checkpoint takes: the demo and the tests use it.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from corpus.schema import Sample

log = logging.getLogger(__name__)

TINY_MODEL_NAME = "corpus-tiny-clip"
# Small enough to run in milliseconds on a CPU; the text tower keeps CLIP's vocabulary and
# context so open_clip's bundled tokenizer applies unchanged.
TINY_MODEL_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@dataclass
class ClipConfig:
    """Step 3. On only when a checkpoint (or an input score field) is configured."""

    model: str = "ViT-B-32"  # an open_clip architecture name
    checkpoint: str | None = None  # local weights file; None (and no score_field) = CLIP off
    model_config: str | None = None  # architecture JSON for a model open_clip does not ship
    # The paper's "harsh CLIP score" is dataset-specific; 0.28 is LAION-400M's ViT-B/32 cut.
    threshold: float = 0.28
    batch_size: int = 64
    device: str = "cpu"  # or "cuda", "cuda:1"
    precision: str = "fp32"  # or "bf16", "fp16" (CUDA)
    score_field: str | None = None  # use a score the input carries (img2dataset json `similarity`)
    # True: score only the pairs the text rules keep (cheaper; not the paper's order).
    after_text_rules: bool = False
    # One model per machine, in a process of its own that every worker sends its batches to
    # (Beam's shared model), instead of one per worker. None: shared on CUDA, where a copy per
    # worker process would fill the GPU's memory and make the workers queue for it.
    share_model_across_processes: bool | None = None

    @property
    def shared_model(self) -> bool:
        if self.share_model_across_processes is None:
            return self.device.startswith("cuda")
        return self.share_model_across_processes

    @property
    def enabled(self) -> bool:
        return bool(self.checkpoint or self.score_field)

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"clip.batch_size must be >= 1, got {self.batch_size}")
        if self.checkpoint and not self.score_field and not os.path.isfile(self.checkpoint) \
                and "://" not in self.checkpoint:
            raise ValueError(f"clip.checkpoint: no such file {self.checkpoint!r}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"clip.precision must be fp32, bf16 or fp16, got {self.precision!r}")


def register_model_config(model_config: str | None, model: str) -> None:
    """Make an architecture JSON known to open_clip (its file stem is the model name)."""
    import open_clip

    if model_config and model not in open_clip.list_models():
        open_clip.add_model_config(model_config)
    if model not in open_clip.list_models():
        raise ValueError(f"open_clip knows no model {model!r}; give clip.model_config "
                         f"(an architecture JSON named {model}.json)")


def model_input_size(config: ClipConfig) -> int:
    """The image side the model expects, from its architecture config (no weights loaded)."""
    import open_clip

    register_model_config(config.model_config, config.model)
    size = open_clip.get_model_config(config.model)["vision_cfg"]["image_size"]
    return size if isinstance(size, int) else int(size[0])


class ClipExample(NamedTuple):
    """One model input: the sample rides along, so no join is needed afterwards."""

    sample: Sample
    pixels: np.ndarray  # (size, size, 3) uint8
    text: str


@dataclass
class LoadedClip:
    model: Any
    tokenizer: Any
    mean: Any  # (1, 3, 1, 1) tensors on the device
    std: Any
    device: str
    dtype: Any

    def score(self, pixels: list[np.ndarray], texts: list[str]) -> np.ndarray:
        """Cosine similarity of each (image, text) pair. One call in, numpy out: a shared
        model (in a process of its own) is called through a proxy, which pickles the arguments
        and the result, never a tensor on the device."""
        import torch

        with torch.inference_mode():
            images = torch.from_numpy(np.stack(pixels)).to(self.device, non_blocking=True)
            images = images.permute(0, 3, 1, 2).float().div_(255).sub_(self.mean).div_(self.std)
            tokens = self.tokenizer(texts).to(self.device)
            image_features = self.model.encode_image(images.to(self.dtype), normalize=True)
            text_features = self.model.encode_text(tokens, normalize=True)
            return (image_features * text_features).sum(dim=-1).float().cpu().numpy()


class OpenClipModelHandler(ModelHandler[ClipExample, PredictionResult, LoadedClip]):
    """Beam loads the model once per worker process (or once per machine, shared by its worker
    processes: `ClipConfig.share_model_across_processes`) and feeds it batches of
    ClipExamples."""

    def __init__(self, config: ClipConfig):
        # With Beam's own batching, min = max: every batch is full-sized (bar the last of a
        # bundle); BatchElements would otherwise start small and grow. The pairs pipeline forms
        # its batches itself (`pipelines.common.Batches`) and passes `with_no_batching()`.
        super().__init__(min_batch_size=config.batch_size, max_batch_size=config.batch_size)
        self.config = config

    def load_model(self) -> LoadedClip:
        import open_clip
        import torch

        config = self.config
        register_model_config(config.model_config, config.model)
        model = open_clip.create_model(config.model, pretrained=config.checkpoint,
                                       precision=config.precision, device=config.device)
        model.eval()
        preprocess = open_clip.get_model_preprocess_cfg(model)
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[
            config.precision]
        mean = torch.tensor(preprocess["mean"], device=config.device).view(1, 3, 1, 1)
        std = torch.tensor(preprocess["std"], device=config.device).view(1, 3, 1, 1)
        log.info("CLIP %s loaded from %s on %s", config.model, config.checkpoint, config.device)
        return LoadedClip(model, open_clip.get_tokenizer(config.model), mean, std,
                          config.device, dtype)

    def run_inference(self, batch: Sequence[ClipExample], model: LoadedClip,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        scores = model.score([e.pixels for e in batch], [e.text for e in batch])
        return [PredictionResult(example, float(score)) for example, score in zip(batch, scores)]

    def share_model_across_processes(self) -> bool:
        return self.config.shared_model

    def get_num_bytes(self, batch: Sequence[ClipExample]) -> int:
        return sum(e.pixels.nbytes + len(e.text) for e in batch)  # not a pickle of the samples

    def get_metrics_namespace(self) -> str:
        return "corpus_clip"


def write_tiny_checkpoint(directory: str, seed: int = 0) -> tuple[str, str]:
    """A random-init tiny model: (architecture JSON path, checkpoint path)."""
    import open_clip
    import torch

    os.makedirs(directory, exist_ok=True)
    config_path = os.path.join(directory, f"{TINY_MODEL_NAME}.json")
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(TINY_MODEL_CONFIG, f, indent=2)
    register_model_config(config_path, TINY_MODEL_NAME)
    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_MODEL_NAME)
    checkpoint_path = os.path.join(directory, f"{TINY_MODEL_NAME}.pt")
    torch.save({"state_dict": model.state_dict()}, checkpoint_path)
    return config_path, checkpoint_path
