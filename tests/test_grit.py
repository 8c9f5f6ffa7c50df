"""GRIT recursive-box pruning: optimal against brute force, and the rules' exact reasons."""
import itertools
import random

import pytest

from corpus.formats import format_sample, parse_grounded_caption, render, to_thousandths
from filters.grit import GRIT_SPANS, GritScoreThreshold, GritSpansValid, PruneRecursiveBoxes, \
    best_span_set, group_spans
from conftest import make_image, make_sample


def _overlap(a, b) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def _brute_force_best(spans) -> int:
    """The largest total weight of pairwise non-overlapping spans, by trying every subset."""
    n = len(spans)
    clash = [sum(1 << j for j in range(n) if j != i and _overlap(spans[i], spans[j]))
             for i in range(n)]
    best = 0
    for subset in range(1 << n):
        if any(subset >> i & 1 and clash[i] & subset for i in range(n)):
            continue
        best = max(best, sum(spans[i][2] for i in range(n) if subset >> i & 1))
    return best


def _random_spans(rng: random.Random, n: int, length: int = 30):
    spans = set()
    while len(spans) < n:
        start = rng.randrange(length)
        end = rng.randrange(start + 1, length + 1)
        spans.add((start, end))
    return [(s, e, rng.randint(1, 4)) for s, e in sorted(spans)]


def test_weighted_interval_scheduling_matches_brute_force_on_thousands_of_sets():
    rng = random.Random(0)
    for trial in range(3000):
        spans = _random_spans(rng, rng.randint(0, 9), length=rng.choice([8, 15, 30]))
        chosen = best_span_set(spans)
        for a, b in itertools.combinations(chosen, 2):
            assert not _overlap(spans[a], spans[b]), (trial, spans, chosen)
        assert sum(spans[i][2] for i in chosen) == _brute_force_best(spans), (trial, spans)


def test_result_does_not_depend_on_input_order():
    rng = random.Random(1)
    for _ in range(300):
        spans = _random_spans(rng, rng.randint(1, 8), length=12)
        expected = {spans[i][:2] for i in best_span_set(spans)}
        shuffled = spans[:]
        rng.shuffle(shuffled)
        assert {shuffled[i][:2] for i in best_span_set(shuffled)} == expected


def test_greedy_by_earliest_end_is_not_optimal_for_boxes():
    # greedy by end takes [0,2) then [3,5): 2 boxes; the long span alone carries 5
    spans = [(0, 2, 1), (1, 6, 5), (3, 5, 1)]
    assert best_span_set(spans) == [1]


def test_ties_leave_the_later_ending_span_out():
    assert best_span_set([(0, 4, 1), (2, 6, 1)]) == [0]
    assert best_span_set([(0, 3, 1), (3, 6, 1)]) == [0, 1]  # touching spans do not overlap


def test_same_span_twice_is_one_span_with_two_boxes_and_repeats_collapse():
    entries = [[0, 4, 0.1, 0.1, 0.2, 0.2, 0.9], [0, 4, 0.5, 0.5, 0.6, 0.6, 0.8],
               [0, 4, 0.1, 0.1, 0.2, 0.2, 0.7]]
    (span,) = group_spans(entries)
    assert (span.start, span.end, len(span.boxes)) == (0, 4, 2)
    assert span.scores == (0.9, 0.8)


def _grit_sample(caption, entries, width=200, height=100):
    return make_sample(text=caption, task="grounding", images=[make_image(width, height)],
                       extra={GRIT_SPANS: entries})


@pytest.mark.parametrize("entries, reason", [
    ([[0, 99, 0.1, 0.1, 0.2, 0.2, 0.9]], "span_outside_caption"),
    ([[3, 3, 0.1, 0.1, 0.2, 0.2, 0.9]], "span_outside_caption"),
    ([[-1, 2, 0.1, 0.1, 0.2, 0.2, 0.9]], "span_outside_caption"),
    ([[0, 3, 0.1, 0.1, 1.2, 0.2, 0.9]], "box_outside_unit_range"),
    ([[0, 3, -0.1, 0.1, 0.2, 0.2, 0.9]], "box_outside_unit_range"),
    ([[0, 3, 0.5, 0.1, 0.2, 0.2, 0.9]], "box_inverted"),
    ([[0, 3, 0.1, 0.5, 0.2, 0.2, 0.9]], "box_inverted"),
    ([[0, 3, "a", 0.1, 0.2, 0.2]], "malformed_span"),
    ([[0, 3, 0.1]], "malformed_span"),
    (["0 3"], "malformed_span"),
])
def test_bad_entries_drop_the_record_with_their_reason(entries, reason):
    assert GritSpansValid()(_grit_sample("a dog in a park", entries)) == reason


def test_valid_entries_pass():
    entries = [[0, 5, 0.0, 0.0, 1.0, 1.0, 0.9], [10, 15, 0.2, 0.2, 0.2, 0.4, 0.5]]
    assert GritSpansValid()(_grit_sample("a dog in a park", entries)) is None


def test_score_threshold_removes_low_entries_and_keeps_unscored():
    sample = _grit_sample("a dog in a park", [[0, 5, 0.1, 0.1, 0.2, 0.2, 0.3],
                                              [10, 15, 0.1, 0.1, 0.2, 0.2, 0.8],
                                              [6, 8, 0.1, 0.1, 0.2, 0.2]])
    cleaned = GritScoreThreshold(0.5)(sample)
    assert [e[0] for e in cleaned.extra[GRIT_SPANS]] == [10, 6]
    assert GritScoreThreshold(0.1)(sample) is None


def test_a_score_that_is_not_a_number_counts_as_no_score():
    sample = _grit_sample("a dog in a park", [[0, 5, 0.1, 0.1, 0.2, 0.2, "high"],
                                              [10, 15, 0.1, 0.1, 0.2, 0.2, 0.3]])
    cleaned = GritScoreThreshold(0.5)(sample)
    assert [e[0] for e in cleaned.extra[GRIT_SPANS]] == [0]


def test_no_spans_left_is_a_reject():
    assert PruneRecursiveBoxes()(_grit_sample("a dog", [])) == "no_grounding_spans"


def test_pruned_sample_formats_and_parses_back_to_the_same_boxes():
    caption = "two dogs on a red couch next to a lamp"
    entries = [[0, 8, 0.05, 0.40, 0.30, 0.90, 0.9], [0, 8, 0.35, 0.45, 0.55, 0.90, 0.8],
               [0, 23, 0.05, 0.30, 0.80, 0.95, 0.7], [12, 23, 0.02, 0.30, 0.80, 0.95, 0.9],
               [32, 38, 0.85, 0.10, 0.95, 0.60, 0.6]]
    sample = PruneRecursiveBoxes()(_grit_sample(caption, entries, width=640, height=480))
    assert [(r.char_start, r.char_end) for r in sample.regions] == [(0, 8), (0, 8), (12, 23),
                                                                    (32, 38)]
    assert sample.extra["grit"] == {"spans_in": 4, "boxes_in": 5, "spans_kept": 3,
                                    "boxes_kept": 4}
    assert sample.regions[0].box == pytest.approx((32.0, 192.0, 192.0, 432.0))
    text = render(format_sample(sample))
    assert "<ref>two dogs</ref><box>(50,400),(300,900)</box><box>(350,450),(550,900)</box> on " \
           "<ref>a red couch</ref>" in text
    target = text.split("Generate the caption in English with grounding: ", 1)[1]
    plain, refs = parse_grounded_caption(target.replace("<|endoftext|>", ""))
    assert plain == caption
    expected = [(r.char_start, r.char_end,
                 (to_thousandths(r.box[0], 640), to_thousandths(r.box[1], 480),
                  to_thousandths(r.box[2], 640), to_thousandths(r.box[3], 480)))
                for r in sample.regions]
    assert refs == expected
