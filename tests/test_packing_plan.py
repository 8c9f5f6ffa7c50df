"""Packing plans: same-task sequences within the limit, image cost counted, plans on disk."""
from conftest import make_image, make_sample
from corpus.formats import format_sample
from corpus.shards import atomic_write, write_tar
from corpus.tokens import TextTokenizer, count_span_tokens
from pipelines.packing_plan import load_plan, plan_lengths, plan_samples, plan_shards, \
    sample_length, write_plan


def test_image_costs_img_tags_plus_256_tokens():
    tokenizer = TextTokenizer.default()
    with_image = make_sample(text="a red square")
    without = make_sample(text="a red square", images=[])
    assert sample_length(with_image, tokenizer) - sample_length(without, tokenizer) == 258
    assert sample_length(with_image, tokenizer, image_tokens=4) == \
        count_span_tokens(format_sample(with_image), tokenizer, 4)


def test_sequences_hold_one_task_and_fit_the_limit():
    items = [("vqa", f"v{i}", n, None) for i, n in enumerate([700, 600, 500, 400, 300])] + \
            [("captioning", f"c{i}", n, None) for i, n in enumerate([1000, 1000, 50])] + \
            [("vqa", "big", 3000, None)]
    plan = plan_lengths(items, max_len=1024)
    lengths = {item[1]: item[2] for item in items}
    seen = []
    task_of = {item[1]: item[0] for item in items}
    for sequence in plan.sequences:
        assert {task_of[i] for i in sequence.ids} == {sequence.task}
        assert sequence.tokens == sum(lengths[i] for i in sequence.ids)
        assert sequence.tokens <= 1024 or sequence.ids == ["big"]
        seen += sequence.ids
    assert sorted(seen) == sorted(lengths)
    assert plan.oversized == ["big"]


def test_plan_over_shards_round_trips_through_json(tmp_path):
    samples = [make_sample(key=f"k{i}", text="word " * (i * 40), images=[make_image()])
               for i in range(6)]
    shard = str(tmp_path / "captioning-00000-of-00001.tar")
    with atomic_write(shard) as f:
        write_tar(samples, f)
    plan = plan_shards([shard], max_len=1024)
    members = sorted(m for s in plan.sequences for m in s.members)
    assert members == [(shard, i) for i in range(6)]
    assert [s.ids for s in plan.sequences] == [s.ids for s in plan_samples(samples, 1024).sequences]
    path = str(tmp_path / "plan.json")
    write_plan(plan, path)
    assert load_plan(path) == plan
    assert 0 < plan.fill() <= 1
