"""CLIP image-text scoring (Appendix A.1 step 3) with open_clip.

`load_clip` loads an open_clip model from a model name and a local checkpoint (named pretrained
tags would download, which a pipeline must not do mid-run) and scores batches on the CPU or
CUDA. Images reach it already decoded to the model's input size as uint8
(`filters.image_rules.decode_for_model`, JPEG draft mode), so it only normalises, stacks and
runs the two towers. The score is the cosine similarity of the normalised image and text
embeddings, as LAION and DataComp report it.

Each worker process of a run loads its own copy (`ClipConfig.shared_model` off, the default on
the CPU), or one `ClipService` process per machine holds the model and every worker sends it
its batches (the default on CUDA: a copy per worker would fill the GPU's memory and make the
workers queue for it).

`write_tiny_checkpoint` makes a small random-init model file (with its architecture JSON), loaded
through the same path a real checkpoint takes: the demo and the tests use it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

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
    # One model per machine, in a process of its own that every worker process sends its
    # batches to (`ClipService`), instead of one per worker. None: shared on CUDA, where a copy
    # per worker process would fill the GPU's memory and make the workers queue for it.
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


def load_tokenizer(config: ClipConfig):
    """The model's tokenizer (texts -> a LongTensor of token ids), without its weights."""
    import open_clip

    register_model_config(config.model_config, config.model)
    return open_clip.get_tokenizer(config.model)


@dataclass
class LoadedClip:
    model: Any
    tokenizer: Any
    mean: Any  # (1, 3, 1, 1) tensors on the device
    std: Any
    device: str
    dtype: Any

    def score(self, pixels: np.ndarray, texts: list[str]) -> np.ndarray:
        """Cosine similarity of each (image, text) pair; `pixels` (n, size, size, 3) uint8."""
        return self.score_tokens(pixels, self.tokenizer(texts))

    def score_tokens(self, pixels, tokens) -> np.ndarray:
        """The same from token ids: pixels (uint8, numpy or a pinned tensor) become floats on
        the device."""
        import torch

        with torch.inference_mode():
            images = torch.as_tensor(pixels).to(self.device, non_blocking=True)
            images = images.permute(0, 3, 1, 2).float().div_(255).sub_(self.mean).div_(self.std)
            tokens = torch.as_tensor(tokens).to(self.device, non_blocking=True)
            image_features = self.model.encode_image(images.to(self.dtype), normalize=True)
            text_features = self.model.encode_text(tokens, normalize=True)
            return (image_features * text_features).sum(dim=-1).float().cpu().numpy()


def load_clip(config: ClipConfig) -> LoadedClip:
    """The open_clip model of the config, from its local checkpoint, ready to score."""
    import open_clip
    import torch

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
    return LoadedClip(model, load_tokenizer(config), mean, std, config.device, dtype)


# ---- one model for every worker process of a machine -----------------------------------------

class RemoteClip:
    """A worker's end of `ClipService`, with the same `score` as a loaded model. The worker
    tokenizes the texts itself (tokenizing is Python work the model's process would otherwise
    do between batches); pixels and token ids go as raw bytes, the scores come back as a small
    array."""

    def __init__(self, connection, config: ClipConfig):
        self.connection, self.config = connection, config
        self.tokenizer = None

    def score(self, pixels: np.ndarray, texts: list[str]) -> np.ndarray:
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.config)
        pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
        tokens = np.ascontiguousarray(self.tokenizer(texts).numpy(), dtype=np.int64)
        self.connection.send((pixels.shape, tokens.shape))
        self.connection.send_bytes(memoryview(pixels).cast("B"))
        self.connection.send_bytes(memoryview(tokens).cast("B"))
        result = self.connection.recv()
        if isinstance(result, BaseException):
            raise result
        return result


class ClipService:
    """One process that holds the model (on the GPU) and scores the batches every worker process
    sends, so the model is loaded once per machine and the workers only decode images. A thread
    receives the next batches (into pinned memory on CUDA) while the model runs the current one.
    Started in a fresh interpreter (a forked process cannot use the GPU of its parent), before
    the workers are forked."""

    def __init__(self, config: ClipConfig, clients: int):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        pairs = [context.Pipe() for _ in range(clients)]
        self.clients = [RemoteClip(worker_end, config) for worker_end, _ in pairs]
        control, self._control = context.Pipe()
        self.process = context.Process(target=_serve, name="clip-service", daemon=True,
                                       args=(config, [server_end for _, server_end in pairs],
                                             control))
        self.process.start()
        for _, server_end in pairs:
            server_end.close()
        control.close()
        ready = self._control.recv()  # the model is loaded, or why it could not be
        if isinstance(ready, BaseException):
            self.close()
            raise ready

    def close(self) -> None:
        for client in self.clients:
            client.connection.close()
        with contextlib.suppress(OSError):
            self._control.send("stop")
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()


QUEUED_BATCHES = 4  # received and waiting for the model: enough to never leave it idle


def _serve(config: ClipConfig, connections: list, control) -> None:
    import queue
    import threading
    from multiprocessing.connection import wait

    import torch

    try:
        model = load_clip(config)
    except Exception as error:  # the launching process says why
        control.send(error)
        return
    control.send("ready")
    pinned = config.device.startswith("cuda")
    batches: queue.Queue = queue.Queue(maxsize=QUEUED_BATCHES)

    def buffer(shape, dtype) -> np.ndarray:
        if not pinned:
            return np.empty(shape, dtype=dtype)
        return torch.empty(shape, dtype=getattr(torch, np.dtype(dtype).name)).pin_memory().numpy()

    def receive():
        live = list(connections)
        while live:
            ready = wait(live + [control])
            if control in ready:  # the step is over (or the launching process is gone)
                break
            for connection in ready:
                try:
                    pixel_shape, token_shape = connection.recv()
                    pixels, tokens = buffer(pixel_shape, np.uint8), buffer(token_shape, np.int64)
                    connection.recv_bytes_into(memoryview(pixels).cast("B"))
                    connection.recv_bytes_into(memoryview(tokens).cast("B"))
                except (EOFError, OSError):  # that worker has exited
                    live.remove(connection)
                    continue
                batches.put((connection, pixels, tokens))
        batches.put(None)

    threading.Thread(target=receive, daemon=True).start()
    while (batch := batches.get()) is not None:
        connection, pixels, tokens = batch
        try:
            result = model.score_tokens(torch.from_numpy(pixels), torch.from_numpy(tokens))
        except Exception as error:  # the worker that sent the batch raises it
            result = error
        with contextlib.suppress(OSError):
            connection.send(result)


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
