"""The trainer's data: loss masks token by token, packing boundaries, mixing, exact positions."""
import collections
import threading
import time

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AttentionInterface

from conftest import make_image, make_sample
from corpus.config import ConfigError
from corpus.formats import EOS, IM_END, IM_START, IMG_END, IMG_START
from corpus.schema import Turn, from_json_record
from corpus.shards import scan_shard
from corpus.tokens import IMAGE_PAD, TextTokenizer
from test_trainer import caption_samples, sft_samples, text_samples, write_manifest, write_shard
from trainer.data import (IGNORE, PackedLayout, PackJob, PackStream, SampleEncoder, assemble,
                          build_loader, read_manifest, sample_shares, shared_shards_note,
                          task_samples, trimmed_width)
from trainer.model import QwenVL, checkpoint_activations
from trainer.stages import stage_config

QUERIES = 4


@pytest.fixture(scope="module")
def tokenizer():
    return TextTokenizer.default()


@pytest.fixture
def encoder(tokenizer):
    return SampleEncoder(tokenizer, image_tokens=QUERIES, seq_len=512)


def expected_row(tokenizer, pieces):
    """(ids, targets) from hand-written (text, supervised) pieces; None text = an image slot."""
    ids, flags = [], []
    for text, supervised in pieces:
        piece = ([tokenizer.token_id(IMG_START)] + [tokenizer.token_id(IMAGE_PAD)] * QUERIES
                 + [tokenizer.token_id(IMG_END)]) if text is None else tokenizer.encode(text)
        ids += piece
        flags += [supervised] * len(piece)
    targets = [ids[t + 1] if flags[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]
    return ids, targets


def test_captioning_loss_mask_token_by_token(tokenizer, encoder):
    sample = make_sample("c", text="a red square")
    encoded = encoder(sample)
    ids, targets = expected_row(tokenizer, [
        (None, False), ("Generate the caption in English:", False), (" a red square" + EOS, True)])
    assert encoded.ids == ids
    assert encoded.targets == targets
    learned = [t for t in encoded.targets if t != IGNORE]
    assert tokenizer.decode(learned) == " a red square" + EOS
    assert encoded.images == [sample.images[0].data]


def test_chatml_loss_mask_token_by_token(tokenizer, encoder):
    sample = make_sample("s", task="sft", text="", turns=[
        Turn("user", "<image>What is it?"), Turn("assistant", "A square.")])
    encoded = encoder(sample)
    ids, targets = expected_row(tokenizer, [
        (IM_START, True), ("system\n", False), ("You are a helpful assistant.", False),
        (IM_END, True), ("\n", True),
        (IM_START, True), ("user\n", False), ("Picture 1: ", False), (None, False),
        ("What is it?", False), (IM_END, True), ("\n", True),
        (IM_START, True), ("assistant\n", False), ("A square.", True), (IM_END, True),
        ("\n", True)])
    assert encoded.ids == ids
    assert encoded.targets == targets
    # what is learned: the special tokens and the answer, never role names or the question
    runs, run = [], []
    for target in encoded.targets + [IGNORE]:
        if target == IGNORE and run:
            runs.append(tokenizer.decode(run))
            run = []
        elif target != IGNORE:
            run.append(target)
    assert runs == [f"{IM_END}\n{IM_START}", f"{IM_END}\n{IM_START}", f"A square.{IM_END}\n"]


def test_too_long_samples_are_cut_or_skipped(tokenizer):
    assert SampleEncoder(tokenizer, QUERIES, seq_len=4)(make_sample("c")) is None  # cuts an image
    assert SampleEncoder(tokenizer, QUERIES, seq_len=8)(make_sample("c")) is None  # no target left
    short = SampleEncoder(tokenizer, QUERIES, seq_len=8)
    text = short(make_sample("t", task="text", text="word " * 50, images=[]))
    assert len(text.ids) == len(text.targets) == 8 and text.targets[-1] == IGNORE


def test_packed_samples_do_not_attend_to_each_other(tokenizer, encoder):
    config = stage_config(2, overrides={"model": {"adapter": {"queries": QUERIES}}})
    torch.manual_seed(0)
    model = QwenVL(config.model, 56, tokenizer.vocab_size, tokenizer.token_id(IMAGE_PAD)).eval()
    first = encoder(make_sample("a", text="a red square", images=[make_image(color=(250, 0, 0))]))
    second = encoder(make_sample("b", text="a much bluer square than the first one",
                                 images=[make_image(color=(0, 0, 250))]))
    pad = encoder.pad

    def run(samples, seq_len):
        row = assemble(PackJob("captioning", samples), seq_len, pad, 56)
        args = (torch.from_numpy(row["ids"])[None], torch.from_numpy(row["positions"])[None])
        pixels = torch.from_numpy(row["pixels"])
        with torch.no_grad():
            hidden = model.hidden_states(*args, pixels)[0]
            loss = model(*args, torch.from_numpy(row["targets"])[None], pixels)
        return hidden, float(loss)

    n1, n2 = len(first.ids), len(second.ids)
    packed, packed_loss = run([first, second], n1 + n2 + 5)
    alone_1, loss_1 = run([first], n1)
    alone_2, loss_2 = run([second], n2)
    torch.testing.assert_close(packed[:n1], alone_1, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed[n1:n1 + n2], alone_2, atol=1e-5, rtol=1e-4)
    assert packed_loss == pytest.approx(loss_1 + loss_2, rel=1e-5)
    # the check has teeth: without restarting positions the second sample sees the first
    row = assemble(PackJob("captioning", [first, second]), n1 + n2, pad, 56)
    with torch.no_grad():
        leaky = model.hidden_states(torch.from_numpy(row["ids"])[None],
                                    torch.arange(n1 + n2)[None], torch.from_numpy(row["pixels"]))[0]
    assert not torch.allclose(leaky[n1:], alone_2, atol=1e-3)


@pytest.fixture
def manifest(tmp_path):
    caps = write_shard(str(tmp_path / "cap.tar"), caption_samples(6))
    text = write_shard(str(tmp_path / "text.tar"), text_samples(4))
    path = write_manifest(tmp_path / "m.yaml", 2, {"captioning": [(caps, 6)], "text": [(text, 4)]},
                          weights={"captioning": 0.25, "text": 0.75})
    return read_manifest(path)


def test_mixture_weights_are_shares_of_samples_not_rows(tmp_path, tokenizer):
    # long documents fill a row each; captions and questions pack a dozen or more to a row
    long_text = [make_sample(f"t{i}", task="text", text="plain text document " * (20 + 3 * i),
                             images=[]) for i in range(8)]
    captions = [make_sample(f"c{i}", text=f"a red square {i}") for i in range(16)]
    questions = [make_sample(f"q{i}", task="vqa", text=f"q{i}") for i in range(16)]
    weights = {"text": 0.5, "captioning": 0.3, "vqa": 0.2}
    path = write_manifest(tmp_path / "mix.yaml", 2, {
        "text": [(write_shard(str(tmp_path / "text.tar"), long_text), 8)],
        "captioning": [(write_shard(str(tmp_path / "cap.tar"), captions), 16)],
        "vqa": [(write_shard(str(tmp_path / "vqa.tar"), questions), 16)]}, weights=weights)
    stream = PackStream(read_manifest(path), SampleEncoder(tokenizer, QUERIES, 128), seed=0,
                        window=32)
    samples, rows = collections.Counter(), collections.Counter()
    for _ in range(2000):
        job = stream.next_pack()
        samples[job.task] += len(job.samples)
        rows[job.task] += 1
    total = sum(samples.values())
    shares = {task: samples[task] / total for task in weights}
    assert shares == pytest.approx(weights, abs=0.02)
    assert sample_shares(task_samples(stream.state())) == pytest.approx(shares)
    assert rows["text"] / 2000 > 0.8  # by rows, the long documents dominate


def test_mixture_follows_the_seed(manifest, encoder):
    def tasks(seed):
        stream = PackStream(manifest, encoder, seed=seed, window=4)
        return [stream.next_pack().task for _ in range(50)]

    assert tasks(3) == tasks(3) != tasks(4)


def test_packs_stay_within_one_task_and_seq_len(manifest, encoder):
    stream = PackStream(manifest, encoder, seed=0, window=4)
    for _ in range(12):  # more than an epoch of both tasks
        job = stream.next_pack()
        assert sum(len(s.ids) for s in job.samples) <= encoder.seq_len
        kinds = {bool(s.images) for s in job.samples}
        assert kinds == ({True} if job.task == "captioning" else {False})


def test_stream_position_restores_mid_window(manifest, encoder):
    stream = PackStream(manifest, encoder, seed=0, window=3)
    for _ in range(5):
        stream.next_pack()
    state = stream.state()
    expected = [[s.ids for s in stream.next_pack().samples] for _ in range(6)]
    restored = PackStream(manifest, encoder, seed=0, window=3)
    restored.restore(state)
    assert [[s.ids for s in restored.next_pack().samples] for _ in range(6)] == expected


def first_batches(manifest, tokenizer, workers=0, ahead=0, count=3, micro_batch_size=2,
                  **loader_options):
    loader = build_loader(manifest, tokenizer, QUERIES, 512, 56, seed=0,
                          micro_batch_size=micro_batch_size, num_workers=workers, prefetch=2,
                          window=4, batches_ahead=ahead, **loader_options)
    batches = iter(loader)
    try:
        return [next(batches) for _ in range(count)]
    finally:
        loader.close()


def assert_same_batches(expected, got):
    assert len(expected) == len(got)
    for a, b in zip(expected, got):
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.pixels, b.pixels)
        assert torch.equal(a.targets, b.targets) and a.state == b.state


def test_worker_processes_give_the_same_batches(manifest, tokenizer):
    inline = first_batches(manifest, tokenizer)
    assert_same_batches(inline, first_batches(manifest, tokenizer, workers=1))
    assert inline[0].pixels.dtype == torch.uint8 and inline[0].pixels.shape[1:] == (56, 56, 3)


@pytest.mark.parametrize("workers", [0, 1])
def test_batches_made_ahead_in_a_thread_are_the_loop_s_batches(manifest, tokenizer, workers):
    # the data position each batch carries is the one after it, not the thread's
    assert_same_batches(first_batches(manifest, tokenizer, count=6),
                        first_batches(manifest, tokenizer, workers, ahead=2, count=6))


def test_the_batch_thread_hands_its_error_to_the_loop_and_stops_on_close(manifest, tokenizer):
    loader = build_loader(manifest, tokenizer, QUERIES, 512, 56, seed=0, micro_batch_size=1,
                          window=4, batches_ahead=2)
    calls = iter(range(3))

    def next_pack():
        if next(calls, None) is None:
            raise ValueError("shard unreadable")
        return PackJob("captioning", [])

    loader.streams[0].next_pack = next_pack
    batches = iter(loader)
    assert [next(batches).samples for _ in range(3)] == [0, 0, 0]
    with pytest.raises(ValueError, match="shard unreadable"):
        next(batches)

    loader = build_loader(manifest, tokenizer, QUERIES, 512, 56, seed=0, micro_batch_size=1,
                          window=4, batches_ahead=1)
    next(iter(loader))
    loader.close()  # the thread, blocked on a full queue, ends
    for _ in range(50):
        if not any(t.name == "training-batches" for t in threading.enumerate()):
            break
        time.sleep(0.1)
    assert not any(t.name == "training-batches" for t in threading.enumerate())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_batches_are_pinned_for_the_gpu(manifest, tokenizer):
    loader = build_loader(manifest, tokenizer, QUERIES, 512, 56, seed=0, micro_batch_size=2,
                          window=4, batches_ahead=2, pin_memory=True)
    batch = next(iter(loader))
    loader.close()
    assert batch.input_ids.is_pinned() and batch.pixels.is_pinned()


def test_sft_and_text_shards_round_trip_through_the_loader(tmp_path, tokenizer):
    sft = write_shard(str(tmp_path / "sft.tar"), sft_samples(3))
    path = write_manifest(tmp_path / "m3.yaml", 3, {"sft": [(sft, 3)]})
    loader = build_loader(read_manifest(path), tokenizer, QUERIES, 512, 56, seed=0,
                          micro_batch_size=1)
    batch = next(iter(loader))
    assert batch.samples == 1 and batch.pixels.shape[0] == 1  # stage 3: one dialogue per row
    assert int((batch.input_ids == tokenizer.token_id(IMAGE_PAD)).sum()) == QUERIES


def test_a_micro_batch_keeps_the_columns_its_longest_row_fills():
    assert [trimmed_width(n, 512) for n in (0, 1, 8, 9, 300, 509, 512)] == [
        8, 8, 8, 16, 304, 512, 512]


@pytest.mark.parametrize("stage", [1, 3])
def test_trimmed_micro_batches_give_the_losses_and_gradients_of_rows_padded_to_seq_len(
        tmp_path, tokenizer, stage):
    # one sample a row: a caption (stage 1) or a dialogue (stage 3) fills a small part of 512
    samples = caption_samples(4) if stage == 1 else sft_samples(4)
    task = "captioning" if stage == 1 else "sft"
    shard = write_shard(str(tmp_path / "s.tar"), samples)
    manifest = read_manifest(write_manifest(tmp_path / "m.yaml", stage, {task: [(shard, 4)]}))
    trimmed = first_batches(manifest, tokenizer, count=2)
    padded = first_batches(manifest, tokenizer, count=2, trim=False)
    config = stage_config(stage, overrides={"model": {"adapter": {"queries": QUERIES}}})
    torch.manual_seed(0)
    model = QwenVL(config.model, 56, tokenizer.vocab_size, tokenizer.token_id(IMAGE_PAD))
    for short, whole in zip(trimmed, padded):
        width = short.input_ids.shape[1]
        assert whole.input_ids.shape[1] == 512 and width <= 512 / 2  # most of a row: padding
        assert torch.equal(short.input_ids, whole.input_ids[:, :width])
        assert not (whole.targets[:, width:] != IGNORE).any()
        results = []
        for batch in (short, whole):
            model.zero_grad(set_to_none=True)
            loss = model(batch.input_ids, batch.position_ids, batch.targets, batch.pixels,
                         batch.layout)
            loss.backward()
            results.append((loss.item(), {name: param.grad.clone()
                                          for name, param in model.named_parameters()
                                          if param.grad is not None}))
        (loss, grads), (expected_loss, expected_grads) = results
        assert loss == pytest.approx(expected_loss, rel=1e-6)
        assert grads.keys() == expected_grads.keys()
        for name, grad in grads.items():  # the sums over tokens run in another order
            torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-6)


def test_varlen_bounds_from_restarting_positions():
    from trainer.data import sequence_bounds

    bounds, longest = sequence_bounds(torch.tensor([[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]))
    assert bounds.tolist() == [0, 3, 5, 7, 10] and bounds.dtype == torch.int32 and longest == 3


def test_varlen_is_a_registered_attention_implementation(tokenizer):
    config = stage_config(2, overrides={"model": {"adapter": {"queries": QUERIES},
                                                  "llm": {"attn_implementation": "varlen"}}})
    model = QwenVL(config.model, 56, tokenizer.vocab_size, tokenizer.token_id(IMAGE_PAD))
    assert model.llm.config._attn_implementation == "varlen"


def first_varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False,
                      return_aux=None):
    """The signature of PyTorch's first varlen_attn."""


def later_varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None,
                      scale=None, window_size=(-1, -1), enable_gqa=False):
    """The signature of later ones."""


def test_varlen_is_told_causal_masking_and_the_scale_as_each_pytorch_spells_them(monkeypatch):
    from trainer import attention

    assert attention.causal_options(first_varlen_attn) == {"is_causal": True}
    assert attention.causal_options(later_varlen_attn) == {
        "window_size": (-1, 0), "enable_gqa": True, "scale": None}
    seen = {}

    def kernel(query, key, value, *bounds, **options):
        seen.update(options, key_heads=key.shape[1])
        return query

    query, key = torch.ones(1, 4, 3, 16), torch.ones(1, 2, 3, 16)
    bounds = dict(cu_seq_lens_q=torch.tensor([0, 3], dtype=torch.int32), max_length_q=3)
    monkeypatch.setattr(attention, "varlen_attn", kernel)
    for signature, scale, expected in ((later_varlen_attn, 0.5, {"scale": 0.5, "key_heads": 2}),
                                       (first_varlen_attn, 0.25, {"key_heads": 4})):
        seen.clear()
        monkeypatch.setattr(attention, "CAUSAL_OPTIONS", attention.causal_options(signature))
        out, _ = attention.varlen_attention(None, query, key, key, None, scaling=scale, **bounds)
        assert out.shape == (1, 3, 4, 16)
        assert {name: seen[name] for name in expected} == expected
        assert "scale" not in seen or signature is later_varlen_attn
    # a kernel without a scale cannot take another than its own 1/sqrt(head dim)
    with pytest.raises(RuntimeError, match="takes no scale"):
        attention.varlen_attention(None, query, key, key, None, scaling=0.5, **bounds)


def test_a_record_without_a_text_format_is_skipped(encoder):
    broken = make_sample("g", task="ref_grounding", text="the dog")  # no region, so no box
    assert encoder(broken) is None


# reading a value back from the device waits for all queued work: the CPU stops queueing ahead
HOST_READS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select",
              "aten::is_nonzero", "aten::equal"}


class RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names[func._schema.name] += 1
        return func(*args, **(kwargs or {}))


def causal_attention_stand_in(module, query, key, value, attention_mask, scaling=None,
                              dropout=0.0, **kwargs):
    """A mask-free kernel like varlen (which needs CUDA) in the op record's eyes; it ignores
    the sample bounds, which this test does not look at."""
    key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
    value = value.repeat_interleave(query.shape[1] // value.shape[1], dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(query, key, value, is_causal=True,
                                                           scale=scaling)
    return out.transpose(1, 2), None


@pytest.mark.parametrize("attention", ["sdpa", "causal-stand-in"])
def test_a_forward_and_backward_pass_read_nothing_back_from_the_device(manifest, tokenizer,
                                                                       attention):
    AttentionInterface.register("causal-stand-in", causal_attention_stand_in)
    config = stage_config(2, overrides={"model": {
        "adapter": {"queries": QUERIES}, "llm": {"attn_implementation": attention}}})
    model = QwenVL(config.model, 56, tokenizer.vocab_size, tokenizer.token_id(IMAGE_PAD))
    batch = first_batches(manifest, tokenizer, count=1)[0]
    assert batch.pixels.shape[0] > 0  # images are spliced in
    with RecordOps() as record:
        loss = model(batch.input_ids, batch.position_ids, batch.targets, batch.pixels,
                     batch.layout)
        loss.backward()
    assert not HOST_READS & set(record.names), record.names
    # the same pass with the layout found on the device reads values back (the record sees
    # it), to the same loss
    with torch.no_grad(), RecordOps() as record:
        found = model(batch.input_ids, batch.position_ids, batch.targets, batch.pixels)
    assert HOST_READS & set(record.names)
    assert found.item() == pytest.approx(loss.item(), rel=1e-6)


def lane_rows(manifest, tokenizer, count, rank=0, world=1, lanes=None, state=None):
    """The next `count` rows (their token ids) rank `rank` of `world` draws, and the data
    position after them."""
    rows = first_batches(manifest, tokenizer, count=count, micro_batch_size=1, state=state,
                         rank=rank, world=world, lanes=lanes)
    return [row.input_ids[0].tolist() for row in rows], rows[-1].state


def sharded_manifest(tmp_path, shards=4, per_shard=3):
    """Captions in `shards` shards, and text documents in one."""
    captions = caption_samples(shards * per_shard)
    sources = {"captioning": [(write_shard(str(tmp_path / f"cap{i}.tar"),
                                           captions[i * per_shard:(i + 1) * per_shard]), per_shard)
                              for i in range(shards)],
               "text": [(write_shard(str(tmp_path / "text.tar"), text_samples(4)), 4)]}
    return read_manifest(write_manifest(tmp_path / "m.yaml", 2, sources))


def test_ranks_draw_the_rows_of_one_process_with_as_many_lanes(tmp_path, tokenizer):
    manifest = sharded_manifest(tmp_path)
    one, _ = lane_rows(manifest, tokenizer, 8, lanes=2)
    ranks = [lane_rows(manifest, tokenizer, 4, rank, 2)[0] for rank in range(2)]
    assert ranks[0] == one[0::2] and ranks[1] == one[1::2]
    assert one != lane_rows(manifest, tokenizer, 8)[0]  # one lane reads in another order


def test_each_lane_reads_its_own_shards_or_its_own_samples(tmp_path, monkeypatch):
    from trainer import data

    manifest = sharded_manifest(tmp_path)
    captions, text = (source for source in manifest.sources)
    opened = {0: [], 1: []}
    for lane in (0, 1):  # 4 caption shards: two whole shards an epoch per lane
        reader = data.ShardReader("captioning", [s.path for s in captions.shards], 0, lane, 2)
        monkeypatch.setattr(data, "scan_shard",
                            lambda path, wanted, lane=lane: (opened[lane].append(path),
                                                             scan_shard(path, wanted))[1])
        samples, _ = reader.read(data.Position(), 6)
        assert len(samples) == 6 and len({s.id for s in samples}) == 6
    assert sorted(opened[0] + opened[1]) == sorted(s.path for s in captions.shards)
    # one text shard: each lane reads it, keeping every other sample of the epoch
    everything, _ = data.ShardReader("text", [text.shards[0].path], 0).read(data.Position(), 4)
    for lane in (0, 1):
        reader = data.ShardReader("text", [text.shards[0].path], 0, lane, 2)
        mine, _ = reader.read(data.Position(), 4)  # two epochs
        assert [s.id for s in mine] == [s.id for s in everything[lane::2]] * 2


def test_a_lane_parses_only_its_own_samples_and_a_resume_none_before_its_position(
        tmp_path, monkeypatch):
    from corpus import shards
    from trainer import data

    manifest = sharded_manifest(tmp_path, shards=1, per_shard=8)
    path = manifest.sources[0].shards[0].path
    parsed = []
    monkeypatch.setattr(shards, "from_json_record",
                        lambda record, members: parsed.append(record["id"])
                        or from_json_record(record, members))
    everything, _ = data.ShardReader("captioning", [path], 0).read(data.Position(), 8)
    parsed.clear()
    mine, _ = data.ShardReader("captioning", [path], 0, 1, 2).read(data.Position(), 4)
    assert parsed == [s.id for s in mine] == [s.id for s in everything[1::2]]
    parsed.clear()
    resumed, _ = data.ShardReader("captioning", [path], 0).read(data.Position(sample=5), 3)
    assert parsed == [s.id for s in resumed] == [s.id for s in everything[5:]]


def test_a_run_resumes_on_any_number_of_processes_that_divides_its_lanes(tmp_path, tokenizer):
    from trainer.data import merge_states

    manifest = sharded_manifest(tmp_path)
    whole, _ = lane_rows(manifest, tokenizer, 10, lanes=2)
    # two ranks draw 3 rows each, then one process continues
    states = [lane_rows(manifest, tokenizer, 3, rank, 2)[1] for rank in range(2)]
    merged = merge_states(states)
    assert merged["rows"] == 6 and sorted(merged["lanes"]) == ["0", "1"]
    assert lane_rows(manifest, tokenizer, 4, state=merged)[0] == whole[6:]
    # one process draws 6, then two ranks continue
    _, state = lane_rows(manifest, tokenizer, 6, lanes=2)
    continued = [lane_rows(manifest, tokenizer, 2, rank, 2, state=state)[0] for rank in range(2)]
    assert continued[0] == whole[6::2] and continued[1] == whole[7::2]
    with pytest.raises(ConfigError, match="cannot be shared by 3 processes"):
        lane_rows(manifest, tokenizer, 1, 0, 3, state=state)


def test_a_data_position_written_before_lanes_resumes_as_one_lane(tmp_path, tokenizer):
    manifest = sharded_manifest(tmp_path)
    whole, _ = lane_rows(manifest, tokenizer, 6)
    _, state = lane_rows(manifest, tokenizer, 3)
    older = state["lanes"]["0"]  # what checkpoints held: the one stream's position
    assert older["drawn"] == 3
    assert lane_rows(manifest, tokenizer, 3, state=older)[0] == whole[3:]


def test_tasks_whose_lanes_all_read_every_shard_are_named(tmp_path):
    manifest = sharded_manifest(tmp_path, shards=4)  # captions in 4 shards, text in 1
    assert shared_shards_note(manifest, 1) is None
    note = shared_shards_note(manifest, 2)
    assert "text (1)" in note and "captioning" not in note and "2 shards or more" in note
    assert "captioning (4), text (1)" in shared_shards_note(manifest, 8)


def test_a_task_with_fewer_samples_than_lanes_is_refused(tmp_path, tokenizer):
    manifest = sharded_manifest(tmp_path)  # 4 text documents in one shard
    with pytest.raises(ConfigError, match="task text: 4 sample.s. for 8 data lanes"):
        lane_rows(manifest, tokenizer, 1, lanes=8)


def test_the_indexed_loss_is_the_masked_loss_it_replaced(manifest, tokenizer):
    # images spliced in and targets picked by precomputed indices give the loss and gradients
    # of the boolean-mask formulation (masked_scatter, hidden[mask]) they replaced
    config = stage_config(2, overrides={"model": {"adapter": {"queries": QUERIES}}})
    torch.manual_seed(0)
    model = QwenVL(config.model, 56, tokenizer.vocab_size, tokenizer.token_id(IMAGE_PAD))
    batch = first_batches(manifest, tokenizer, count=1)[0]
    ids, positions, targets = batch.input_ids, batch.position_ids, batch.targets

    embeds = model.llm.get_input_embeddings()(ids)
    visual = model.encode_images(batch.pixels)
    embeds = embeds.masked_scatter((ids == model.image_pad_id).unsqueeze(-1), visual)
    hidden = model.llm.base_model(inputs_embeds=embeds, position_ids=positions,
                                  use_cache=False).last_hidden_state
    supervised = targets != IGNORE
    logits = model.llm.get_output_embeddings()(hidden[supervised])
    masked = torch.nn.functional.cross_entropy(logits, targets[supervised], reduction="sum")
    masked.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    indexed = model(ids, positions, targets, batch.pixels, batch.layout)
    indexed.backward()
    assert indexed.item() == pytest.approx(masked.item(), rel=1e-6)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, expected[name], rtol=1e-5, atol=1e-7)


def test_the_packed_causal_mask_keeps_each_token_within_its_sample():
    from trainer.attention import packed_causal_mask

    mask = packed_causal_mask(torch.tensor([[0, 1, 0, 1, 2]]))
    assert mask.shape == (1, 1, 5, 5)
    assert mask[0, 0].int().tolist() == [[1, 0, 0, 0, 0],
                                         [1, 1, 0, 0, 0],
                                         [0, 0, 1, 0, 0],
                                         [0, 0, 1, 1, 0],
                                         [0, 0, 1, 1, 1]]


@pytest.mark.parametrize("positions", [[[0, 1, 2, 0, 1, 2, 3, 0]] * 2, [list(range(8))] * 2],
                         ids=["packed", "one sample a row"])
def test_sdpa_sees_the_samples_hugging_face_would_find(tokenizer, positions):
    from trainer.attention import packed_attention_arguments

    config = stage_config(2, overrides={"model": {"adapter": {"queries": QUERIES}}})
    torch.manual_seed(0)
    model = QwenVL(config.model, 56, tokenizer.vocab_size, tokenizer.token_id(IMAGE_PAD))
    positions = torch.tensor(positions)
    ids = torch.randint(64, 1000, positions.shape)
    layout = PackedLayout.of(ids, positions, model.image_pad_id)
    arguments = packed_attention_arguments(model.llm.config, positions, layout.sample_bounds,
                                           layout.longest)
    mask = arguments["attention_mask"]["full_attention"]
    assert (mask is None) == (positions[0, -1] == 7)  # unpacked rows leave sdpa its is_causal
    with torch.no_grad():
        ours = model.hidden_states(ids, positions, layout=layout)
        found = model.llm.base_model(input_ids=ids, position_ids=positions,
                                     use_cache=False).last_hidden_state
    torch.testing.assert_close(ours, found, rtol=1e-5, atol=1e-6)


def saved_activation_bytes(model, batch):
    """The loss and gradients of a forward and backward pass, and the bytes autograd kept for
    the backward pass (parameters, which it keeps by reference, left out)."""
    params = {p.data_ptr() for p in model.parameters()}
    kept = []

    def pack(tensor):
        if tensor.data_ptr() not in params:
            kept.append(tensor.numel() * tensor.element_size())
        return tensor

    model.zero_grad()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = model(batch.input_ids, batch.position_ids, batch.targets, batch.pixels,
                     batch.layout)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}, sum(kept)


def test_recomputed_blocks_keep_fewer_activations_for_the_same_gradients(manifest, tokenizer):
    config = stage_config(2, overrides={"model": {
        "adapter": {"queries": QUERIES}, "visual": {"layers": 4}, "llm": {"layers": 4}}})
    torch.manual_seed(0)
    model = QwenVL(config.model, 56, tokenizer.vocab_size, tokenizer.token_id(IMAGE_PAD)).train()
    batch = first_batches(manifest, tokenizer, count=1)[0]
    assert batch.pixels.shape[0] > 0
    loss, gradients, kept = saved_activation_bytes(model, batch)
    checkpoint_activations(model, ["visual", "llm"])
    recomputed_loss, recomputed_gradients, recomputed_kept = saved_activation_bytes(model, batch)
    assert recomputed_loss == loss
    for name, gradient in gradients.items():
        torch.testing.assert_close(recomputed_gradients[name], gradient, rtol=1e-6, atol=0)
    # each block keeps its input alone instead of every intermediate tensor
    assert recomputed_kept < kept / 3, (recomputed_kept, kept)


def test_activation_checkpointing_names_components_that_have_blocks():
    assert stage_config(2, overrides={"activation_checkpointing": ["llm"]})
    with pytest.raises(ConfigError, match="activation_checkpointing"):
        stage_config(2, overrides={"activation_checkpointing": ["adapter"]})
