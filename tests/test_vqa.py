"""VQA: the VQAv2 answer choice (ordering and ties), the rules' reasons, the VQAv2 join and its
tasks, and `corpus vqa`."""
import glob
import itertools
import json
import os
import subprocess
import sys

import pytest

from conftest import make_sample
from corpus.formats import format_sample, render
from corpus.samples.vqa import write_vqa_sample
from corpus.shards import read_shard
from filters.vqa import ANSWERS, ChooseAnswer, MinAnswerConfidence, choose_answer, \
    empty_question
from corpus.ids import sample_id
from corpus.inputs import expand_inputs
from filters.base import Reject
from pipelines.annotations import RECORD_EXTENSIONS
from pipelines.vqa import CleanVqa, JoinHalf, VqaConfig, _question_halves, join_bucket, \
    join_task_count, run


def _answers(*pairs):
    return [{"answer": a, "answer_confidence": c} for a, c in pairs]


def test_any_yes_beats_more_votes_at_lower_confidence():
    answers = _answers(("red", "yes"), ("pink", "maybe"), ("pink", "maybe"), ("pink", "maybe"))
    assert choose_answer(answers) == ("red", "yes")


def test_more_yes_votes_win_then_maybe_then_all_votes():
    assert choose_answer(_answers(("a", "yes"), ("b", "yes"), ("b", "yes")))[0] == "b"
    assert choose_answer(_answers(("a", "yes"), ("b", "yes"), ("b", "maybe")))[0] == "b"
    assert choose_answer(_answers(("a", "yes"), ("a", "no"), ("b", "yes")))[0] == "a"


def test_full_ties_go_to_the_consensus_answer_then_the_first_given():
    tied = _answers(("no", "maybe"), ("yes", "maybe"))
    assert choose_answer(tied, preferred="yes") == ("yes", "maybe")
    assert choose_answer(tied) == ("no", "maybe")
    assert choose_answer(list(reversed(tied))) == ("yes", "maybe")


def test_answers_group_after_space_normalisation_and_unknown_confidence_counts_as_yes():
    answers = _answers(("two  dogs ", "maybe"), ("two dogs", "maybe"), ("cats", "maybe"))
    assert choose_answer(answers) == ("two dogs", "maybe")
    assert choose_answer([{"answer": "x", "answer_confidence": "perhaps"}]) == ("x", "yes")


def test_plain_answer_lists_take_the_most_frequent():
    assert choose_answer(["May 1", "1 May", "1 May"]) == ("1 May", "yes")
    assert choose_answer([]) is None
    assert choose_answer([{"answer": "   "}, 3]) is None


def test_choose_answer_rule_sets_the_answer_and_passes_single_answers_through():
    sample = make_sample(task="vqa", question="What?", extra={
        ANSWERS: _answers(("a", "maybe"), ("b", "yes")), "multiple_choice_answer": "a"})
    chosen = ChooseAnswer()(sample)
    assert (chosen.answer, chosen.extra["answer_confidence"]) == ("b", "yes")
    assert ANSWERS not in chosen.extra
    assert ChooseAnswer()(make_sample(task="vqa", question="Q?", answer="yes")) is None
    assert ChooseAnswer()(make_sample(task="vqa", question="Q?", answer=" ")) == "no_answer"
    assert ChooseAnswer()(make_sample(task="vqa", question="Q?", extra={ANSWERS: []})) == \
        "no_answer"


def test_min_confidence_and_empty_question_reasons():
    sample = make_sample(task="vqa", question="Q?", extra={"answer_confidence": "maybe"})
    assert MinAnswerConfidence("yes")(sample) == "answer_confidence_too_low"
    assert MinAnswerConfidence("maybe")(sample) is None
    with pytest.raises(ValueError):
        MinAnswerConfidence("sure")
    assert empty_question(make_sample(task="vqa", question="  ")) == "empty_question"


def test_vqa_run_joins_vqav2_files_and_passes_other_sets_through(tmp_path, beam_argv):
    inputs, images = write_vqa_sample(str(tmp_path / "in"))
    report = run(inputs, str(tmp_path / "out"), "vqa", VqaConfig(), beam_argv, images=images)
    # VQAv2: 6 questions + 1 annotation without its question; GQA 2; OCR-VQA 2; DocVQA 2
    assert (report["input"], report["kept"]) == (13, 7)
    assert report["dropped"] == {"unmatched_annotation": 1, "empty_question": 1,
                                 "no_answer": 3}
    assert report["errored"] == {"missing_image": 1}
    assert report["stats"] == {"answer_confidence": {"maybe": 1, "single_answer": 3, "yes": 3}}
    samples = [s for p in glob.glob(os.path.join(tmp_path, "out", "shards", "*.tar"))
               for s in read_shard(p)]
    texts = {render(format_sample(s)).split("</img>", 1)[1] for s in samples}
    assert texts == {
        "What colour is the square? Answer: red<|endoftext|>",
        "Is it raining? Answer: yes<|endoftext|>",
        "How many squares are there? Answer: 1<|endoftext|>",
        "Is the square green? Answer: yes<|endoftext|>",
        "What is the title of this book? Answer: A Book<|endoftext|>",
        "Is this a comic book? Answer: No<|endoftext|>",
        "What is the date? Answer: 1 May 2001<|endoftext|>",
    }
    assert all(s.images and s.task == "vqa" for s in samples)


def _kept(output_dir):
    return {s.id: s for p in glob.glob(os.path.join(output_dir, "shards", "*.tar"))
            for s in read_shard(p)}


def test_vqav2_questions_join_the_same_over_many_join_tasks(tmp_path, beam_argv):
    inputs, images = write_vqa_sample(str(tmp_path / "in"))
    files = expand_inputs(inputs, RECORD_EXTENSIONS)
    assert join_task_count(files, 1000) == 1
    assert join_task_count(files, 1) > 2  # a join task per kilobyte of input
    one = run(inputs, str(tmp_path / "one"), "vqa", VqaConfig(), beam_argv, images=images)
    many = run(inputs, str(tmp_path / "many"), "vqa", VqaConfig(), beam_argv, images=images,
               samples_per_shard=1)
    for key in ("input", "kept", "dropped", "errored", "stats"):
        assert one[key] == many[key]
    kept = _kept(tmp_path / "many")
    assert {s.id: s.answer for s in kept.values()} == \
        {s.id: s.answer for s in _kept(tmp_path / "one").values()}
    # the joined questions lie in the join tasks, numbered after the file tasks
    joined = {s.extra["question_id"] for p in glob.glob(str(tmp_path / "many" / "shards" / "*"))
              if int(os.path.basename(p).split("-")[1]) >= len(files) for s in read_shard(p)}
    assert joined == {10, 11, 20}


def test_the_join_keeps_the_question_of_smallest_id_whatever_order_the_halves_come_in():
    work = CleanVqa("vqa", VqaConfig(), None)
    questions = [JoinHalf("question", "q.json", f"q.json#{i}",
                          {"question_id": 7, "question": "Is it red?"}, ("nowhere.jpg",))
                 for i in (0, 5)]
    annotation = JoinHalf("annotation", "a.json", "a.json#3",
                          {"question_id": 7, "answers": ["yes", "yes", "no"]})
    kept_key = min((q.key for q in questions), key=lambda key: sample_id("vqa", key))
    outcomes = set()
    for order in itertools.permutations(questions + [annotation]):
        items = list(work(_question_halves("7", order)))
        outcomes.add(tuple((type(i).__name__, i.reason if isinstance(i, Reject) else i.id)
                           for i in items))
    other_key = next(q.key for q in questions if q.key != kept_key)
    # one outcome: the other question a duplicate, the kept one dropped for its missing image
    assert outcomes == {(("Reject", "duplicate_question"), ("Reject", "missing_image"))}
    items = list(work(_question_halves("7", questions + [annotation])))
    assert [i.key for i in items] == [other_key, kept_key]


def test_join_buckets_are_stable_and_spread():
    assert join_bucket("458752000", 10) == join_bucket("458752000", 10)
    assert len({join_bucket(str(i), 10) for i in range(200)}) == 10


def test_example_config_loads_under_the_profile(capsys):
    from pipelines.common import load_pipeline_config

    config = load_pipeline_config(VqaConfig, "vqa", "pipelines/configs/vqa.yaml", "gqa")
    assert config.image_template == "{imageId}.jpg"
    assert "dataset profile 'gqa': vqa (Table 3: VQA (GQA))" in capsys.readouterr().out


def test_records_that_cannot_fill_the_image_template_are_counted_rejects(tmp_path):
    """Only the GQA records have `imageId`: every other question, joined VQAv2 ones included,
    drops with the reason instead of being read without the template."""
    inputs, images = write_vqa_sample(str(tmp_path / "in"))
    config = tmp_path / "vqa.yaml"
    config.write_text('image_template: "{imageId}.jpg"\n')
    result = subprocess.run([sys.executable, "-m", "corpus.cli", "vqa", "--input", *inputs,
                             "--images", images, "--dataset", "mixed", "--output",
                             str(tmp_path / "out"), "--config", str(config), "--workers", "1"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert (report["input"], report["kept"]) == (13, 1)  # the green square of GQA
    # VQAv2 5 (the question without an annotation is no_answer before any image is sought),
    # OCR-VQA 2, DocVQA 2
    assert report["dropped"] == {"unmatched_annotation": 1, "no_answer": 2}
    assert report["errored"] == {"image_template_unfilled": 9}
