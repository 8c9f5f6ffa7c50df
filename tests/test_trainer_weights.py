"""Where a model's initial weights come from (trainer/weights.py): a build on the meta device that
reads nothing, then parameters filled from pretrained files, a trainer checkpoint or a seeded
initialisation that does not depend on the order of filling."""
import json

import numpy as np
import pytest
import torch
from open_clip import create_model
from open_clip.model import resize_pos_embed
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM

from corpus.config import ConfigError
from corpus.tokens import TextTokenizer
from trainer.distributed import World, shard_plan, unit_parameters
from trainer.stages import stage_config
from trainer.train import build_model
from trainer.weights import InitialWeights, read_weights

CPU = torch.device("cpu")
TOKENIZER = TextTokenizer.default()


def config(**model):
    return stage_config(2, overrides={"model": {"adapter": {"queries": 16}, **model}}).model


def filled(model_config, image_size=56, seed=0, checkpoint=None):
    model = build_model(model_config, image_size, TOKENIZER)
    World().wrap(model, InitialWeights(model, seed, checkpoint), CPU)
    return model


def pretrained_files(tmp_path, tie=False, quick_gelu=False):
    """An open_clip folder (`local-dir:`) and a Hugging Face folder whose vocabulary is 10 tokens
    short of the tokenizer's."""
    clip_dir, llm_dir = tmp_path / "clip", tmp_path / "llm"
    clip_config = {"embed_dim": 32, "quick_gelu": quick_gelu, "vision_cfg": {"image_size": 56, "layers": 1, "width": 64,
                                                   "patch_size": 14, "head_width": 32},
                   "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 1,
                                "layers": 1}}
    clip_dir.mkdir()
    (clip_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": clip_config}))
    clip = create_model(f"local-dir:{clip_dir}", load_weights=False)
    torch.save(clip.state_dict(), clip_dir / "open_clip_pytorch_model.bin")
    llm = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=TOKENIZER.vocab_size - 10, hidden_size=64, intermediate_size=128,
        num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        tie_word_embeddings=tie))
    llm.save_pretrained(llm_dir)
    return clip, llm, config(visual={"open_clip_model": f"local-dir:{clip_dir}"},
                             llm={"pretrained": str(llm_dir)})


def test_the_meta_build_has_the_pretrained_architecture_and_reads_no_weights(tmp_path):
    clip, llm, model_config = pretrained_files(tmp_path)
    full = filled(model_config)
    for weights in [*(tmp_path / "clip").glob("*.bin"), *(tmp_path / "llm").glob("*.safetensors")]:
        weights.unlink()
    meta = build_model(model_config, 56, TOKENIZER)
    assert {p.device.type for p in meta.parameters()} == {"meta"}
    assert {b.device.type for b in meta.buffers()} == {"cpu"}  # computed, not read
    layout = {name: (t.shape, t.dtype) for name, t in full.state_dict().items()}
    assert {name: (t.shape, t.dtype) for name, t in meta.state_dict().items()} == layout
    assert meta.llm.get_input_embeddings().num_embeddings == TOKENIZER.vocab_size


def test_pretrained_files_fill_their_components_and_the_rest_is_initialised(tmp_path):
    clip, llm, model_config = pretrained_files(tmp_path)
    model = filled(model_config)
    theirs = clip.visual.state_dict()
    for name, value in model.visual.state_dict().items():
        assert torch.equal(value, theirs[name]), name
    llm_state = llm.state_dict()
    short = TOKENIZER.vocab_size - 10
    for name, value in model.llm.state_dict().items():
        if value.shape == llm_state[name].shape:
            assert torch.equal(value, llm_state[name]), name
        else:  # the tokens the pretrained vocabulary lacks start at the mean of its rows
            assert torch.equal(value[:short], llm_state[name])
            expected = llm_state[name].mean(0).expand(10, -1)
            torch.testing.assert_close(value[short:], expected)
    assert model.adapter.ln_q.weight.eq(1).all() and model.adapter.query.std() > 0.01


def test_tied_pretrained_embeddings_stay_one_parameter(tmp_path):
    _, llm, model_config = pretrained_files(tmp_path, tie=True)
    model = filled(model_config)
    embeddings = model.llm.get_input_embeddings().weight
    assert model.llm.get_output_embeddings().weight is embeddings
    short = TOKENIZER.vocab_size - 10
    assert torch.equal(embeddings[:short], llm.get_input_embeddings().weight)


def test_an_open_clip_file_at_another_resolution_is_interpolated(tmp_path):
    clip, _, _ = pretrained_files(tmp_path)
    model_config = config(visual={"open_clip_model": f"local-dir:{tmp_path / 'clip'}",
                                  "pretrained": str(tmp_path / "clip" /
                                                    "open_clip_pytorch_model.bin")})
    model = filled(model_config, image_size=112)  # 4 -> 8 patches a side
    expected = {"visual.positional_embedding": clip.visual.positional_embedding.detach()}
    resize_pos_embed(expected, model)
    assert model.visual.positional_embedding.shape == (8 * 8 + 1, 64)
    assert torch.equal(model.visual.positional_embedding, expected["visual.positional_embedding"])
    assert torch.equal(model.visual.conv1.weight, clip.visual.conv1.weight)


def test_an_openai_torchscript_checkpoint_fills_the_vit(tmp_path):
    clip, _, _ = pretrained_files(tmp_path, quick_gelu=True)

    class OpenAIClip(nn.Module):  # OpenAI's CLIP files: a traced model with fp16 weights
        def __init__(self):
            super().__init__()
            self.visual = clip.visual
            self.logit_scale = nn.Parameter(torch.ones([]))

        def forward(self, x):
            return self.visual(x)

    archive = tmp_path / "ViT-tiny.pt"
    with torch.no_grad():
        traced = torch.jit.trace(OpenAIClip().eval(), torch.randn(1, 3, 56, 56),
                                 check_trace=False)
    traced.half().save(str(archive))
    model_config = config(visual={"open_clip_model": f"local-dir:{tmp_path / 'clip'}",
                                  "pretrained": str(archive)})
    model = filled(model_config)
    theirs = clip.visual.state_dict()
    for name, value in model.visual.state_dict().items():
        assert value.dtype == torch.float32
        assert torch.equal(value, theirs[name].half().float()), name
    # the same weights in a ViT of plain GELU would compute something else, silently
    (tmp_path / "clip" / "open_clip_config.json").write_text(
        (tmp_path / "clip" / "open_clip_config.json").read_text().replace("true", "false"))
    with pytest.raises(ConfigError, match="QuickGELU"):
        filled(model_config)


def write_checkpoint_weights(folder, state, layout="distributed"):
    """`state` as a trainer checkpoint holds it: a torch.distributed.checkpoint folder, or the
    one file of the earlier layout."""
    if layout == "distributed":
        import torch.distributed.checkpoint as dcp

        dcp.save(state, checkpoint_id=folder / "model", no_dist=True)
    else:
        torch.save(state, folder / "model.pt")


def test_a_checkpoint_folder_s_index_is_read_once_for_all_its_tensors(tmp_path, monkeypatch):
    # its size grows with the tensors: read once per tensor, the reading grows with their square
    from torch.distributed.checkpoint import FileSystemReader

    state = {f"layer{i}.weight": torch.randn(4, 4) for i in range(6)}
    write_checkpoint_weights(tmp_path, state)
    reads = []
    plain = FileSystemReader.read_metadata
    monkeypatch.setattr(FileSystemReader, "read_metadata",
                        lambda self: reads.append(1) or plain(self))
    weights = read_weights(str(tmp_path))
    assert weights.keys() == state.keys()
    assert all(torch.equal(weights[name], state[name]) for name in state)
    assert len(reads) == 1


@pytest.mark.parametrize("layout", ["distributed", "full"])
def test_a_trainer_checkpoint_fills_every_parameter_and_must_match_the_model(tmp_path, layout):
    source = filled(config(), seed=5)
    write_checkpoint_weights(tmp_path, source.state_dict(), layout)
    copy = filled(config(), seed=0, checkpoint=str(tmp_path))
    for (name, a), b in zip(source.state_dict().items(), copy.state_dict().values()):
        assert torch.equal(a, b), name
    state = source.state_dict()
    broken = {
        "missing": {k: v for k, v in state.items() if k != "adapter.query"},
        "unexpected": dict(state, **{"adapter.extra": torch.zeros(1)}),
        "shape": dict(state, **{"adapter.query": torch.zeros(4, 64)}),
    }
    problems = {"missing": r"adapter\.query: not in the weights",
                "unexpected": r"does not have: \['adapter\.extra'\]",
                "shape": r"adapter\.query: shape \(4, 64\) in the weights read, \(16, 64\)"}
    for case, weights in broken.items():
        folder = tmp_path / case
        folder.mkdir()
        write_checkpoint_weights(folder, weights, layout)
        with pytest.raises(ConfigError, match=problems[case]):
            filled(config(), checkpoint=str(folder))


def test_the_seeded_initialisation_does_not_depend_on_the_order_of_filling():
    whole = filled(config())
    model = build_model(config(), 56, TOKENIZER)
    weights = InitialWeights(model, 0)
    for own in reversed(unit_parameters(shard_plan(model))):  # outermost unit first
        weights.fill([param for _, param in own], CPU)
    for (name, a), b in zip(whole.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    other_seed = filled(config(), seed=1)
    assert not torch.equal(other_seed.adapter.query, whole.adapter.query)


def test_each_module_draws_as_its_own_initialisation_does():
    model = filled(config(llm={"hidden_size": 128, "intermediate_size": 256}))
    llm_std = model.llm.config.initializer_range
    up = model.llm.model.layers[0].mlp.up_proj.weight
    assert up.std().item() == pytest.approx(llm_std, rel=0.1)
    assert model.llm.model.layers[0].self_attn.q_proj.bias.eq(0).all()  # Hugging Face's zeros
    assert model.llm.model.norm.weight.eq(1).all()
    vit = model.visual
    assert vit.positional_embedding.std().item() == pytest.approx(64 ** -0.5, rel=0.15)
    attention = vit.transformer.resblocks[0].attn  # xavier, zero biases (PyTorch's own)
    assert attention.in_proj_bias.eq(0).all() and attention.out_proj.bias.eq(0).all()
    xavier = (2 / (64 + 3 * 64)) ** 0.5
    assert attention.in_proj_weight.std().item() == pytest.approx(xavier, rel=0.1)


def test_a_module_without_a_known_initialisation_is_named():
    class Scale(nn.Module):  # holds a parameter with no initialisation to call
        def __init__(self):
            super().__init__()
            self.factor = nn.Parameter(torch.ones(()))

    model = build_model(config(), 56, TOKENIZER)
    with torch.device("meta"):
        model.adapter.scale = Scale()
    with pytest.raises(ConfigError, match="adapter.scale: no initialisation known for Scale"):
        World().wrap(model, InitialWeights(model, 0), CPU)


def test_a_checkpoint_the_trainer_cannot_read_is_named(tmp_path):
    clip, _, _ = pretrained_files(tmp_path)
    npz = tmp_path / "big_vision.npz"
    np.savez(npz, weight=np.zeros(3))
    model_config = config(visual={"open_clip_model": f"local-dir:{tmp_path / 'clip'}",
                                  "pretrained": str(npz)})
    with pytest.raises(ConfigError, match=r"big_vision\.npz: not a torch, TorchScript or safetensors"):
        filled(model_config)
