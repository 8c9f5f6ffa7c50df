"""CLIP image-text scoring (Appendix A.1 step 3) with open_clip.

`load_clip` loads an open_clip model from a model name and its weights, named as open_clip's
`pretrained` names them (`local_weights`): a local file, a URI (copied into a cache once), a
pretrained tag of the model (`laion2b_s34b_b79k`) or a Hugging Face repository
(`hf-hub:laion/CLIP-ViT-L-14-laion2B-s32B-b82K`). Named weights are read from huggingface_hub's
cache, where open_clip keeps them, and fetched into it only when missing: `model_input_size`
does that first, in the process that launches the workers. A config naming weights that are
neither cached nor fetchable fails when it is validated, in one line that says which file to put
where (`MissingWeights`).

The model scores batches on the CPU or CUDA. Images reach it already decoded to the model's
input size as uint8
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
import hashlib
import json
import logging
import os
import posixpath
import shutil
import socket
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from corpus.config import ConfigError
from corpus.profiles import clip_threshold

log = logging.getLogger(__name__)

HF_HUB_PREFIX = "hf-hub:"  # open_clip's prefix for a model held in a Hugging Face repository
LOCAL_DIR_PREFIX = "local-dir:"  # open_clip's prefix for a folder holding a repository's files
# The file names open_clip gives a repository's config and weights (open_clip.constants).
HUB_CONFIG_FILE = "open_clip_config.json"
HUB_WEIGHTS_FILE = "open_clip_pytorch_model.bin"
HUB_SAFETENSORS_FILE = "open_clip_model.safetensors"
# The settings of a pretrained tag that say how its images were normalised in training.
TAG_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")
URI_CACHE = os.path.expanduser("~/.cache/clip")  # open_clip's own cache for weights by URL
HUB_PROBE_SECONDS = 3.0

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
    # The weights, as open_clip's `pretrained` takes them: a local file, a URI, a pretrained tag
    # of `model` (`open_clip.list_pretrained_tags_by_model`, e.g. laion2b_s34b_b79k), or
    # `hf-hub:ORG/REPO` (architecture and weights both from that repository). None (and no
    # score_field) = CLIP off.
    checkpoint: str | None = None
    model_config: str | None = None  # architecture JSON for a model open_clip does not ship
    # Where named weights are cached (open_clip's `cache_dir`); None: huggingface_hub's cache
    # (HF_HUB_CACHE, ~/.cache/huggingface/hub). URI copies go here too (None: ~/.cache/clip).
    cache_dir: str | None = None
    # The paper's "harsh CLIP score" depends on the model that scores: None takes the model's
    # cut from corpus/data/datasets.yaml (0.28 for ViT-B-32, LAION-5B's English cut).
    threshold: float | None = None
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

    def __post_init__(self):
        if self.threshold is None:
            self.threshold = clip_threshold(self.model)

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
        if self.checkpoint and not self.score_field:
            check_weights(self)
        if self.threshold is None and self.enabled:
            raise ValueError(f"clip.threshold: no known cut for model {self.model!r}; set one")
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


# ---- the weights: a file, a URI, or named as open_clip names them ------------------------------

class MissingWeights(FileNotFoundError):
    """Named weights that are neither in the cache nor fetchable from here. A FileNotFoundError,
    so `corpus` prints it as one line; it says which file to put where."""


@dataclass(frozen=True)
class HubWeights:
    """Named weights as open_clip fetches them: files of a Hugging Face repository, kept in
    huggingface_hub's cache (`CACHE/models--ORG--REPO/snapshots/REVISION/FILE`)."""

    repo: str
    # Each file needed, as the names open_clip takes it under, preferred first.
    files: tuple[tuple[str, ...], ...]
    cache_dir: str

    @property
    def folder(self) -> str:
        return os.path.join(self.cache_dir, "models--" + self.repo.replace("/", "--"))

    def cached(self) -> list[str] | None:
        """Each needed file's path in the cache, or None while one is missing. No network."""
        from huggingface_hub import try_to_load_from_cache

        paths = []
        for names in self.files:
            found = [try_to_load_from_cache(self.repo, name, cache_dir=self.cache_dir)
                     for name in names]
            found = [path for path in found if isinstance(path, str)]  # a str: it is there
            if not found:
                return None
            paths.append(found[0])
        return paths

    def download(self) -> list[str]:
        """Each needed file, fetched into the cache by open_clip (safetensors first)."""
        from open_clip.pretrained import download_pretrained_from_hf

        return [download_pretrained_from_hf(self.repo, filename=names[-1],
                                            cache_dir=self.cache_dir) for names in self.files]

    def missing(self, name: str, why: str) -> MissingWeights:
        wanted = [names[-1] for names in self.files]
        return MissingWeights(
            f"clip.checkpoint {name!r}: {' and '.join(wanted)} of the Hugging Face repository "
            f"{self.repo} not in the cache, and {why}; put {' and '.join(wanted)} in "
            f"{os.path.join(self.folder, 'snapshots', 'main')}{os.sep} (or, where there is a "
            f"network, run `hf download {self.repo} {' '.join(wanted)} --cache-dir "
            f"{self.cache_dir}` and copy {self.folder} here)")


@dataclass(frozen=True)
class LocalWeights:
    """The configured model as open_clip builds it from files on this machine."""

    model: str  # an architecture name, or `local-dir:FOLDER` holding a repository's files
    pretrained: str | None  # the weights file; None when `model` names the folder holding them
    tag: dict = field(default_factory=dict)  # a pretrained tag's settings; {} for other weights


def weights_kind(checkpoint: str) -> str:
    """`hub` (hf-hub:ORG/REPO), `uri`, `file` (a path: tags never hold a slash) or `tag`."""
    if checkpoint.startswith(HF_HUB_PREFIX):
        return "hub"
    if "://" in checkpoint:
        return "uri"
    if "/" in checkpoint or os.sep in checkpoint or os.path.isfile(checkpoint):
        return "file"
    return "tag"


def pretrained_tag(config: ClipConfig) -> dict:
    """open_clip's settings of the config's pretrained tag (its Hub repository, normalisation,
    QuickGELU); the tag's spelling is open_clip's (case and - or _ do not matter)."""
    import open_clip

    settings = open_clip.get_pretrained_cfg(config.model, config.checkpoint)
    if not settings.get("hf_hub"):  # every tag open_clip 3 lists is on the Hub
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(config.model)) or "none"
        raise ConfigError(f"clip.checkpoint: no such file {config.checkpoint!r}, nor a "
                          f"pretrained tag of {config.model} (its tags: {tags})")
    return settings


def hub_weight_names(filename: str) -> tuple[str, ...]:
    """The names open_clip looks for a repository's weights under, preferred first: the
    safetensors form, then the file itself."""
    filename = filename or HUB_WEIGHTS_FILE
    if filename == HUB_WEIGHTS_FILE:
        return (HUB_SAFETENSORS_FILE, filename)
    if filename.endswith((".bin", ".pth")):
        return (filename[:-4] + ".safetensors", filename)
    return (filename,)


def hub_weights(config: ClipConfig) -> HubWeights:
    """Where open_clip fetches and caches the weights the config names by tag or hf-hub."""
    from huggingface_hub import constants

    cache_dir = config.cache_dir or constants.HF_HUB_CACHE
    if config.checkpoint.startswith(HF_HUB_PREFIX):
        repo = config.checkpoint[len(HF_HUB_PREFIX):].strip("/")
        if repo.count("/") != 1:
            raise ConfigError(f"clip.checkpoint: {config.checkpoint!r} is not hf-hub:ORG/REPO")
        return HubWeights(repo, ((HUB_CONFIG_FILE,), hub_weight_names("")), cache_dir)
    # A tag's `hf_hub` is `ORG/REPO/` or `ORG/REPO/FILE` (open_clip.download_pretrained).
    repo, filename = posixpath.split(pretrained_tag(config)["hf_hub"])
    return HubWeights(repo, (hub_weight_names(filename),), cache_dir)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE, read now (huggingface_hub reads it once, when it is imported)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "")
    return constants.HF_HUB_OFFLINE or value.upper() in ("1", "ON", "YES", "TRUE")


def hub_reachable() -> bool:
    """Whether the Hub's host takes a connection within a few seconds."""
    from huggingface_hub import constants

    url = urllib.parse.urlsplit(constants.ENDPOINT)
    if urllib.request.getproxies().get(url.scheme):
        return True  # reached through a proxy: the download itself will tell
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=HUB_PROBE_SECONDS).close()
    except OSError:
        return False
    return True


def why_no_download() -> str | None:
    """Why named weights cannot be fetched from here, or None. Asked before downloading:
    huggingface_hub retries a host it cannot reach for a minute and more per file."""
    from huggingface_hub import constants

    if hub_offline():
        return "the network is off (HF_HUB_OFFLINE)"
    if not hub_reachable():
        return f"{constants.ENDPOINT} cannot be reached"
    return None


def fetch(hub: HubWeights, name: str) -> list[str]:
    """The needed files, downloaded into the cache; `MissingWeights` when they cannot be."""
    why = why_no_download()
    if why is not None:
        raise hub.missing(name, why)
    log.info("fetching %s from the Hugging Face repository %s into %s", name, hub.repo,
             hub.cache_dir)
    try:
        return hub.download()
    except (FileNotFoundError, RuntimeError) as error:  # open_clip wraps any failure in these
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise hub.missing(name, f"the download failed ({reason})") from error


def copy_to_cache(uri: str, cache_dir: str | None) -> str:
    """A local copy of weights named by URI (open_clip reads local files only), made once per
    cache as `CACHE/uri-HASH/NAME` under a temporary name, then renamed."""
    import fsspec

    digest = hashlib.sha256(uri.encode("utf-8")).hexdigest()[:16]
    folder = os.path.join(cache_dir or URI_CACHE, f"uri-{digest}")
    path = os.path.join(folder, posixpath.basename(uri.rstrip("/")) or "weights")
    if not os.path.isfile(path):
        os.makedirs(folder, exist_ok=True)
        partial = f"{path}.{os.getpid()}.partial"
        with fsspec.open(uri, "rb") as source, open(partial, "wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)
        os.replace(partial, path)
    return path


def check_weights(config: ClipConfig) -> None:
    """Fail at config time, in one line, on weights that cannot be had: a missing file, a tag
    open_clip does not know for the model, named weights neither cached nor fetchable."""
    kind = weights_kind(config.checkpoint)
    if kind == "file" and not os.path.isfile(config.checkpoint):
        raise ConfigError(f"clip.checkpoint: no such file {config.checkpoint!r}")
    if kind in ("tag", "hub"):
        hub = hub_weights(config)
        why = why_no_download() if hub.cached() is None else None
        if why is not None:
            raise hub.missing(config.checkpoint, why)


def local_weights(config: ClipConfig) -> LocalWeights:
    """The files open_clip builds the configured model from: named weights from the cache,
    fetched into it first when missing; a URI's copy."""
    kind = weights_kind(config.checkpoint) if config.checkpoint else "file"
    if kind == "hub":
        return repository_folder(config)
    register_model_config(config.model_config, config.model)
    if kind == "uri":
        return LocalWeights(config.model, copy_to_cache(config.checkpoint, config.cache_dir))
    if kind == "tag":
        hub = hub_weights(config)
        (weights,) = hub.cached() or fetch(hub, config.checkpoint)
        return LocalWeights(config.model, weights, pretrained_tag(config))
    return LocalWeights(config.model, config.checkpoint)


def repository_folder(config: ClipConfig) -> LocalWeights:
    """An hf-hub repository's cached snapshot, which open_clip reads as a `local-dir:` model
    (its config, normalisation and weights) without the network."""
    hub = hub_weights(config)
    config_file, weights = hub.cached() or fetch(hub, config.checkpoint)
    folder = os.path.dirname(config_file)
    if os.path.dirname(weights) != folder:  # open_clip would build the model without them
        raise hub.missing(config.checkpoint, f"{weights} is not beside {config_file}")
    return LocalWeights(LOCAL_DIR_PREFIX + folder, None)


def model_input_size(config: ClipConfig) -> int:
    """The image side the model expects, from its architecture config. Named weights are found
    (or fetched) here too: it runs in the process that launches the workers, before them."""
    import open_clip

    size = open_clip.get_model_config(local_weights(config).model)["vision_cfg"]["image_size"]
    return size if isinstance(size, int) else int(size[0])


def load_tokenizer(config: ClipConfig):
    """The model's tokenizer (texts -> a LongTensor of token ids), without its weights."""
    import open_clip

    return open_clip.get_tokenizer(local_weights(config).model)


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
    """The open_clip model of the config, from its weights (`local_weights`), ready to score."""
    import open_clip
    import torch

    weights = local_weights(config)
    # A tag's weights were trained with its QuickGELU setting and its normalisation, which
    # open_clip applies only when it is given the tag, not the file.
    model = open_clip.create_model(weights.model, pretrained=weights.pretrained,
                                   precision=config.precision, device=config.device,
                                   force_quick_gelu=weights.tag.get("quick_gelu", False))
    model.eval()
    preprocess = {**open_clip.get_model_preprocess_cfg(model),
                  **{key: weights.tag[key] for key in TAG_PREPROCESS_KEYS if key in weights.tag}}
    open_clip.set_model_preprocess_cfg(model, preprocess)
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
    logging.disable(logging.WARNING)  # open_clip warns that no weights were loaded: the point
    try:
        model = open_clip.create_model(TINY_MODEL_NAME)
    finally:
        logging.disable(logging.NOTSET)
    checkpoint_path = os.path.join(directory, f"{TINY_MODEL_NAME}.pt")
    torch.save({"state_dict": model.state_dict()}, checkpoint_path)
    return config_path, checkpoint_path
