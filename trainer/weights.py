"""A model's initial weights, filled in part by part into a model built without them.

The trainer builds the architecture with its parameters on the meta device (`parameters_on_meta`:
shapes only, nothing allocated, no file read; buffers are computed as usual), then
`InitialWeights.fill` gives a set of parameters storage on the training device and their values:
- from a checkpoint of this trainer (`--init`, `--resume`), or
- from the pretrained files the config names (an open_clip checkpoint for the ViT, a Hugging Face
  folder for the LLM), and
- for every module none of those covers, the module's own initialisation (Hugging Face's
  `_init_weights` in the LLM, PyTorch's and open_clip's in the ViT, the adapter's), drawn from a
  generator seeded by the run's seed and the module's name.

Files are memory-mapped or read tensor by tensor, and the random draws depend on the module, not
on the order of filling: filling a model whole (one process, DDP) or one FSDP unit after another,
each rank sharding a unit before the next is filled, gives the same weights, and under FSDP no
rank ever holds more than one unit unsharded (trainer/distributed.py).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
import warnings
import zipfile
from collections.abc import Callable, Iterable

import torch
import torch.distributed.checkpoint as dcp
from open_clip.model import resize_pos_embed
from open_clip.transformer import QuickGELU, VisionTransformer
from torch import nn
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import TensorStorageMetadata

from corpus.config import ConfigError
from trainer.checkpoint import IndexedOnce, weights_path
from trainer.qwen_v1 import qwen2_readers, qwen_v1_config

Reader = Callable[[], torch.Tensor]

# the files open_clip reads from a `local-dir:` folder, in its order of preference
OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                   "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth",
                   "model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")


@contextlib.contextmanager
def parameters_on_meta():
    """Modules built inside put every parameter they register on the meta device; buffers stay
    where they are computed (rotary frequencies, pixel statistics: small, and not in any
    checkpoint)."""
    register = nn.Module.register_parameter

    def register_on_meta(module, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def building_on_meta() -> bool:
    """Inside `parameters_on_meta`: a builder that moves what it builds (open_clip moves its
    model to a device) must move it to the meta device."""
    return nn.Module.register_parameter.__name__ == "register_on_meta"


def move_buffers(model: nn.Module, device: torch.device) -> None:
    """The buffers alone to `device` (`Module.to` refuses a model whose parameters are on the
    meta device)."""
    for module in model.modules():
        for name, buffer in module._buffers.items():
            if buffer is not None:
                module._buffers[name] = buffer.to(device)


def tensor_readers(path: str) -> dict[str, Reader]:
    """name -> a function reading that tensor from a safetensors file, a (memory-mapped) torch
    file, a TorchScript archive (OpenAI's CLIP checkpoints, read whole) or a
    `torch.distributed.checkpoint` folder (whole tensors, whatever the ranks that wrote them);
    an open_clip training checkpoint's `state_dict` and DDP's `module.` prefixes are
    unwrapped."""
    if os.path.isdir(path):
        return distributed_checkpoint_readers(path)
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        handle = safe_open(path, framework="pt")
        return {key: (lambda key=key: handle.get_tensor(key)) for key in handle.keys()}
    try:
        if is_torchscript(path):
            with warnings.catch_warnings():  # TorchScript is deprecated; these files are in it
                warnings.simplefilter("ignore", FutureWarning)
                state = torch.jit.load(path, map_location="cpu").state_dict()
        else:
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, ValueError) as error:
        raise ConfigError(f"{path}: not a torch, TorchScript or safetensors checkpoint the "
                          f"trainer reads ({str(error).splitlines()[0]})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return {key.removeprefix("module."): (lambda tensor=tensor: tensor)
            for key, tensor in state.items()}


def distributed_checkpoint_readers(folder: str) -> dict[str, Reader]:
    reader = IndexedOnce(folder)  # one index read for all the tensors
    entries = reader.read_metadata().state_dict_metadata

    def read(name: str, entry: TensorStorageMetadata) -> torch.Tensor:
        tensor = torch.empty(entry.size, dtype=entry.properties.dtype)
        dcp.load({name: tensor}, storage_reader=reader, no_dist=True,
                 planner=DefaultLoadPlanner(allow_partial_load=True))
        return tensor

    return {name: (lambda name=name, entry=entry: read(name, entry))
            for name, entry in entries.items() if isinstance(entry, TensorStorageMetadata)}


def read_weights(checkpoint: str) -> dict[str, torch.Tensor]:
    """A trainer checkpoint's weights, whole, on the CPU."""
    return {name: read() for name, read in tensor_readers(weights_path(checkpoint)).items()}


def is_torchscript(path: str) -> bool:
    """A TorchScript archive: a zip holding its code's constants beside the tensors."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") for name in archive.namelist())


def uses_quick_gelu(visual: VisionTransformer) -> bool:
    return all(isinstance(block.mlp.gelu, QuickGELU) for block in visual.transformer.resblocks)


def hugging_face_files(folder: str) -> list[str]:
    """The weight files of a Hugging Face model folder: its safetensors, else its torch files."""
    names = sorted(os.listdir(folder))
    files = ([n for n in names if n.endswith(".safetensors")]
             or [n for n in names if n.startswith("pytorch_model") and n.endswith(".bin")])
    if not files:
        raise ConfigError(f"model.llm.pretrained: {folder} holds no *.safetensors or "
                          "pytorch_model*.bin weights")
    return [os.path.join(folder, n) for n in files]


def open_clip_file(model_name: str | None, pretrained: str | None) -> str | None:
    """The open_clip checkpoint a config names: `pretrained` (a local file), or the weights in a
    `local-dir:` model folder; None when the ViT starts from random weights."""
    if pretrained:
        if not os.path.isfile(pretrained):
            raise ConfigError(f"model.visual.pretrained: {pretrained} is not a file (the trainer "
                              "reads local open_clip checkpoints)")
        return pretrained
    if model_name and model_name.startswith("local-dir:"):
        folder = model_name.removeprefix("local-dir:")
        return next((os.path.join(folder, name) for name in OPEN_CLIP_FILES
                     if os.path.isfile(os.path.join(folder, name))), None)
    return None


def module_seed(seed: int, name: str) -> int:
    digest = hashlib.blake2b(f"{seed}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2 ** 63 - 1)


class InitialWeights:
    """Where each parameter of `model` starts: `checkpoint` (a trainer checkpoint folder) for all
    of them, else the pretrained files of `model.config`, else a seeded
    initialisation. Build it while the parameters are on the meta device.

    `values=False` gives the parameters storage alone, for values loaded into the model once
    it is sharded (trainer.checkpoint.load_model: each rank reads its own part)."""

    def __init__(self, model: nn.Module, seed: int, checkpoint: str | None = None,
                 values: bool = True):
        self.seed = seed
        self.values = values
        self.llm = model.llm
        self.readers: dict[str, Reader] = {}
        self.required: tuple[str, ...] = ()  # names the files must hold (prefixes)
        if values and checkpoint:
            self._read_checkpoint(model, checkpoint)
        elif values:
            self._read_pretrained(model)
        self._resize_position_embeddings(model)
        # a parameter may be registered on several modules (tied embeddings): all take the new one
        self.owners: dict[int, list[tuple[str, nn.Module, str]]] = {}
        for module_name, module in model.named_modules(remove_duplicate=False):
            for leaf, param in module._parameters.items():
                if param is not None:
                    self.owners.setdefault(id(param), []).append((module_name, module, leaf))
        self.order = {name: index for index, (name, _) in enumerate(model.named_modules())}
        self.grown = {f"llm.{name}" for name, param in model.llm.named_parameters()
                      if param is model.llm.get_input_embeddings().weight
                      or param is model.llm.get_output_embeddings().weight}
        self.largest_fill = 0  # bytes given storage by one `fill` call, the largest so far

    def _read_checkpoint(self, model: nn.Module, checkpoint: str) -> None:
        path = weights_path(checkpoint)
        self.readers = tensor_readers(path)
        self.required = ("",)
        names = {name for name, _ in model.named_parameters(remove_duplicate=False)}
        unexpected = sorted(set(self.readers) - names)
        if unexpected:
            raise ConfigError(f"{path} holds weights this model does not have:"
                              f" {unexpected[:4]}")

    def _read_pretrained(self, model: nn.Module) -> None:
        config = model.config
        clip = open_clip_file(config.visual.open_clip_model, config.visual.pretrained)
        if clip:
            if is_torchscript(clip) and not uses_quick_gelu(model.visual):
                raise ConfigError(f"model.visual.pretrained: {clip} holds OpenAI's CLIP "
                                  "weights, trained with QuickGELU: name the open_clip "
                                  "model's -quickgelu variant (e.g. ViT-L-14-quickgelu)")
            self.readers.update((key, read) for key, read in tensor_readers(clip).items()
                                if key.startswith("visual."))
            self.required += ("visual.",)
        if config.llm.pretrained:
            readers = {key: read for path in hugging_face_files(config.llm.pretrained)
                       for key, read in tensor_readers(path).items()}
            if qwen_v1_config(config.llm.pretrained):  # Qwen-7B, read into a Qwen2
                readers = qwen2_readers(readers, model.llm.config.hidden_size)
            self.readers.update((f"llm.{key}", read) for key, read in readers.items())
            self.required += ("llm.",)

    def _resize_position_embeddings(self, model: nn.Module) -> None:
        """A ViT trained at another resolution (224 -> 448) gets its position embeddings
        interpolated to this model's patch grid, as open_clip does."""
        key = "visual.positional_embedding"
        if key in self.readers:
            state = {key: self.readers[key]()}
            resize_pos_embed(state, model)
            self.readers[key] = lambda tensor=state[key]: tensor

    def fill(self, params: Iterable[nn.Parameter], device: torch.device) -> None:
        """Give `params` (still on the meta device) storage on `device` and their initial
        values, module by module, children before parents (as their constructors ran)."""
        params = list(params)
        modules: dict[str, nn.Module] = {}
        for param in params:
            name, module, _ = self.owners[id(param)][0]
            modules[name] = module
        self.largest_fill = max(self.largest_fill, sum(
            p.numel() * p.element_size() for p in params))
        for name in sorted(modules, key=lambda n: -self.order[n]):
            self._fill_module(name, modules[name], device)

    def _fill_module(self, name: str, module: nn.Module, device: torch.device) -> None:
        old = {leaf: param for leaf, param in module._parameters.items() if param is not None}
        values = {leaf: self._read(f"{name}.{leaf}" if name else leaf, param)
                  for leaf, param in old.items()} if self.values else {}
        for leaf, param in old.items():  # storage for the parameters; the buffers stay as they are
            module._parameters[leaf] = nn.Parameter(torch.empty_like(param, device=device),
                                                    requires_grad=param.requires_grad)
        if any(value is None for value in values.values()):
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(module_seed(self.seed, name))
                with torch.no_grad():
                    self._initialise(name, module)
        with torch.no_grad():
            for leaf, value in values.items():
                if value is not None:
                    module._parameters[leaf].copy_(value)
        for leaf, param in old.items():  # every module that shares a parameter gets the new one
            for _, owner, owner_leaf in self.owners[id(param)]:
                owner._parameters[owner_leaf] = module._parameters[leaf]

    def _read(self, name: str, param: nn.Parameter) -> torch.Tensor | None:
        names = [f"{module}.{leaf}" if module else leaf
                 for module, _, leaf in self.owners[id(param)]]
        reader = next((self.readers[n] for n in names if n in self.readers), None)
        if reader is None:
            if any(name.startswith(prefix) for prefix in self.required):
                raise ConfigError(f"{name}: not in the weights read for it")
            return None
        value = reader()
        if value.shape != param.shape:
            if name in self.grown and value.shape[1:] == param.shape[1:] \
                    and value.shape[0] < param.shape[0]:
                # rows for tokens the pretrained vocabulary lacks start at the mean of its rows
                # (the centre of the distribution Hugging Face's mean-resizing draws from)
                extra = value.float().mean(0, keepdim=True).to(value.dtype)
                value = torch.cat([value, extra.expand(param.shape[0] - value.shape[0], -1)])
            else:
                raise ConfigError(f"{name}: shape {tuple(value.shape)} in the weights read, "
                                  f"{tuple(param.shape)} in the model")
        return value

    def _initialise(self, name: str, module: nn.Module) -> None:
        """The module's own initialisation of its own parameters."""
        if name == "llm" or name.startswith("llm."):
            self.llm._init_weights(module)
        elif isinstance(module, nn.MultiheadAttention):
            module._reset_parameters()
        elif isinstance(module, VisionTransformer):
            init_vit_embeddings(module)
        elif hasattr(module, "reset_parameters"):
            module.reset_parameters()
        else:
            raise ConfigError(f"{name}: no initialisation known for {type(module).__name__}")


def init_vit_embeddings(visual: VisionTransformer) -> None:
    """The parameters open_clip's VisionTransformer holds itself, drawn as its constructor
    draws them (width^-0.5 times a standard normal)."""
    own = [name for name, param in visual._parameters.items() if param is not None]
    unknown = set(own) - {"class_embedding", "positional_embedding"}
    if unknown:
        raise ConfigError(f"visual: no initialisation known for {sorted(unknown)}")
    scale = visual.transformer.width ** -0.5
    for name in own:  # in the order the constructor drew them
        nn.init.normal_(getattr(visual, name), std=scale)


