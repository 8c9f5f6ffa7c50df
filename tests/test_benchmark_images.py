"""The benchmark-image guard: its index, its robustness on generated photos, its files, and
`--exclude-images` in every pipeline that reads images."""
import glob
import json
import os
import sys
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest

from corpus import cli
from corpus.config import ConfigError
from corpus.samples.pairs import Pair, write_img2dataset_tar
from filters import benchmark_images as guard
from filters.hash_index import HashIndex, nearest_by_scan
from pipelines.common import EXCLUDED_FINGERPRINTS, exclusion_guard

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
from bench_benchmark_images import cropped, edits, jpeg, natural_image, scaled  # noqa: E402

EXCLUDED = 200  # photos of the excluded set, seeds 0..199
DISTINCT_SEEDS = range(5_000, 5_200)  # photos of no excluded image


@pytest.fixture(scope="session")
def excluded(tmp_path_factory):
    """200 generated photos in a folder (one in a sub-folder), fingerprinted into a file."""
    folder = tmp_path_factory.mktemp("benchmark")
    paths = []
    for seed in range(EXCLUDED):
        path = folder / ("val" if seed == 7 else "") / f"{seed:03d}.jpg"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(jpeg(natural_image(seed)))
        paths.append(str(path))
    assert guard.image_paths(str(folder)) == sorted(paths)
    fingerprints, failures = guard.fingerprint_images(sorted(paths), processes=2)
    assert failures == [] and fingerprints.shape == (EXCLUDED, 16, 4)
    file = folder.parent / f"{folder.name}.npz"
    with open(file, "wb") as f:
        guard.save_fingerprints(f, fingerprints, sorted(paths))
    return SimpleNamespace(folder=str(folder), file=str(file),
                           path={seed: str(folder / ("val" if seed == 7 else "") /
                                           f"{seed:03d}.jpg") for seed in range(EXCLUDED)})


# ---- the index ------------------------------------------------------------------------------

@pytest.mark.parametrize("words,threshold,rows", [(4, 32, 20_000), (4, 0, 1000), (1, 10, 5000),
                                                  (2, 20, 3000), (4, 60, 2000)])
def test_the_index_answers_what_a_scan_answers(words, threshold, rows):
    rng = np.random.default_rng(threshold)
    stored = rng.integers(0, 2 ** 64 - 1, size=(rows, words), dtype=np.uint64, endpoint=True)
    stored[1] = stored[0]  # a tie: the lower row wins
    index = HashIndex(stored, threshold)
    assert index.radius <= 2 or index.bands == 8 * words
    queries = []
    for i in range(300):
        query = stored[rng.integers(rows)].copy()
        for bit in rng.choice(64 * words, size=int(rng.integers(0, threshold + 6)),
                              replace=False):
            query[bit // 64] ^= np.uint64(1) << np.uint64(bit % 64)
        queries.append(query)
    queries.append(stored[0].copy())
    answers = [index.nearest(q) for q in queries]
    assert answers == [nearest_by_scan(stored, q, threshold) for q in queries]
    assert answers[-1] == (0, 0)
    assert sum(a is not None for a in answers) > 40  # near and far queries both asked


# ---- robustness on generated photos ---------------------------------------------------------

@pytest.mark.slow
def test_edited_copies_match_their_original(excluded):
    screen = guard.BenchmarkImages(excluded.file)
    for seed in range(0, EXCLUDED, 4):
        # re-encoded at quality 50-95, 0.5x and 2x, crops of up to 5 % per side
        for name, data in edits(natural_image(seed), seed).items():
            found = screen.match(data)
            assert found is not None and found.path == excluded.path[seed], (seed, name)


@pytest.mark.slow
def test_distinct_photos_match_nothing(excluded):
    screen = guard.BenchmarkImages(excluded.file)
    matched = [seed for seed in DISTINCT_SEEDS if screen.match(jpeg(natural_image(seed), 80))]
    assert matched == []


# ---- the excluded set: folder, list, fingerprint file -----------------------------------------

def test_folder_and_list_give_their_images(tmp_path):
    (tmp_path / "set" / "sub").mkdir(parents=True)
    (tmp_path / "set" / ".hidden").mkdir()
    for name in ("set/b.JPG", "set/sub/a.png", "set/.hidden/c.jpg", "set/notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert guard.image_paths(str(tmp_path / "set")) == [str(tmp_path / "set/b.JPG"),
                                                        str(tmp_path / "set/sub/a.png")]
    listing = tmp_path / "set" / "list.txt"
    listing.write_text("# benchmark images\nsub/a.png\n\n/abs/x.jpg\n")
    assert guard.image_paths(str(listing)) == [str(tmp_path / "set/sub/a.png"), "/abs/x.jpg"]
    assert not guard.is_fingerprint_file(str(listing))
    assert not guard.is_fingerprint_file(str(tmp_path / "set"))
    with pytest.raises(FileNotFoundError):
        guard.is_fingerprint_file(str(tmp_path / "nowhere"))


def test_fingerprint_file_round_trip_and_scheme_check(tmp_path, excluded):
    stored = guard.load_fingerprints(excluded.file)
    assert len(stored.paths) == EXCLUDED and stored.paths[0].endswith("000.jpg")
    assert guard.is_fingerprint_file(excluded.file)
    other = tmp_path / "other.npz"
    np.savez(other, scheme=np.array("v0 something else"), fingerprints=stored.fingerprints,
             paths=np.array(stored.paths))
    with pytest.raises(ValueError, match="make it again"):
        guard.load_fingerprints(str(other))
    with pytest.raises(ConfigError, match="make it again"):
        exclusion_guard(str(other), str(tmp_path / "out"), [])


def test_an_unreadable_excluded_image_stops_the_command_in_one_line(tmp_path, capsys):
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "good.jpg").write_bytes(jpeg(natural_image(1)))
    (tmp_path / "set" / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(ConfigError, match=r"1 of 2 images could not be read, the first "
                                          r".*bad\.jpg: corrupt_image"):
        exclusion_guard(str(tmp_path / "set"), str(tmp_path / "out"), ["--workers=1"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no images"):
        exclusion_guard(str(tmp_path / "empty"), str(tmp_path / "out"), [])
    records = tmp_path / "q.jsonl"
    records.write_text(json.dumps({"question": "Q?", "answer": "A", "image": "x.jpg"}) + "\n")
    code = cli.main(["vqa", "--input", str(records), "--output", str(tmp_path / "out"),
                     "--dataset", "d", "--exclude-images", str(tmp_path / "set"),
                     "--runner=DirectRunner", "--direct_running_mode=in_memory"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in error and "bad.jpg" in error
    assert not os.path.exists(tmp_path / "out" / "report.json")


# ---- the pipelines ----------------------------------------------------------------------------

def rejects(output_dir):
    files = glob.glob(os.path.join(output_dir, "rejects", "*.parquet"))
    return {row["key"]: row for row in pq.read_table(files).to_pylist()} if files else {}


def copies():
    """Edited copies of excluded photos 3, 8, 11, 12 and four photos of no excluded image."""
    edited = {3: jpeg(natural_image(3), 70), 8: jpeg(scaled(natural_image(8), 0.5)),
              11: jpeg(cropped(natural_image(11), 0.03, 0.03, 0.03, 0.03)),
              12: jpeg(scaled(cropped(natural_image(12), 0.04, 0.0, 0.01, 0.05), 2), 50)}
    distinct = {seed: jpeg(natural_image(seed)) for seed in (7_001, 7_002, 7_003, 7_004)}
    return edited, distinct


def assert_benchmark_rejects(found, edited_keys, excluded_paths):
    for key, path in zip(edited_keys, excluded_paths):
        row = found[key]
        assert (row["reason"], row["status"]) == ("benchmark_image", "dropped")
        assert row["detail"].startswith("distance=") and row["detail"].endswith(path)


def test_pairs_drop_benchmark_images(tmp_path, beam_argv, excluded):
    from pipelines import pairs

    edited, distinct = copies()
    caption = "a colourful painting of shapes on a gradient background"
    write_img2dataset_tar(str(tmp_path / "a.tar"),
                          [Pair(f"e{seed}", data, caption, "") for seed, data in edited.items()])
    write_img2dataset_tar(str(tmp_path / "b.tar"),
                          [Pair(f"d{seed}", data, caption, "") for seed, data in distinct.items()]
                          + [Pair("cut", distinct[7_001][:4000], caption, "")])  # truncated
    inputs = [str(tmp_path / "a.tar"), str(tmp_path / "b.tar")]
    report = pairs.run(inputs, str(tmp_path / "out"), "web", beam_argv=beam_argv,
                       exclude_images=excluded.file)
    assert (report["input"], report["kept"]) == (9, 4)
    assert report["dropped"] == {"benchmark_image": 4}
    assert report["errored"] == {"corrupt_image": 1}
    assert report["config"]["exclude_images"]["images"] == EXCLUDED
    found = rejects(tmp_path / "out")
    assert_benchmark_rejects(found, [f"a.tar#e{s}" for s in edited],
                             [excluded.path[s] for s in edited])
    # a folder of images is fingerprinted before the run into OUTPUT/excluded_images.npz; two
    # forked workers (one per tar) share the index built before they start
    (tmp_path / "few").mkdir()
    for seed in (3, 8, 40):
        (tmp_path / "few" / f"{seed}.jpg").write_bytes(jpeg(natural_image(seed)))
    report = pairs.run(inputs, str(tmp_path / "again"), "web",
                       beam_argv=[*beam_argv, "--workers=2"],
                       exclude_images=str(tmp_path / "few"))
    assert report["dropped"] == {"benchmark_image": 2}
    assert os.path.exists(tmp_path / "again" / EXCLUDED_FINGERPRINTS)
    assert (report["input"], report["kept"]) == (9, 6)


def test_vqa_sft_and_grounding_drop_benchmark_images(tmp_path, beam_argv, excluded):
    from pipelines import grounding, sft, vqa

    edited, distinct = copies()
    images = tmp_path / "images"
    images.mkdir()
    for seed, data in {**edited, **distinct}.items():
        (images / f"{seed}.jpg").write_bytes(data)

    def write(name, records):
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        return [str(path)]

    # VQA: Visual Genome style, two questions sharing an edited copy; one distinct image
    questions = write("qa.jsonl", [
        {"image_id": 3, "qas": [{"question": "What is it?", "answer": "shapes", "qa_id": 1},
                                {"question": "Is it blue?", "answer": "no", "qa_id": 2}]},
        {"question": "How many shapes?", "answer": "9", "image": "7001.jpg"}])
    report = vqa.run(questions, str(tmp_path / "vqa"), "vqa", vqa.VqaConfig(), beam_argv,
                     images=str(images), exclude_images=excluded.file)
    assert (report["input"], report["kept"], report["dropped"]) == \
        (3, 1, {"benchmark_image": 2})
    assert vqa.REASON_ORDER[-1] == "benchmark_image"

    # SFT: a dialogue is dropped when any of its images matches; text-only ones pass
    dialogue = [{"from": "human", "value": "<image>\nDescribe it."},
                {"from": "gpt", "value": "Shapes on a gradient."}]
    text_only = [{"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Hi"}]
    dialogues = write("sft.jsonl", [
        {"id": "a", "image": "8.jpg", "conversations": dialogue},
        {"id": "b", "image": "7002.jpg", "conversations": dialogue},
        {"id": "c", "conversations": text_only}])
    report = sft.run(dialogues, str(tmp_path / "sft"), "sft", sft.SftConfig(), beam_argv,
                     images=str(images), exclude_images=excluded.file)
    assert (report["input"], report["kept"], report["dropped"]) == \
        (3, 2, {"benchmark_image": 1})
    assert_benchmark_rejects(rejects(tmp_path / "sft"), ["sft.jsonl#0"], [excluded.path[8]])

    # grounding: a region record feeds both duality tasks; each drops its sample
    regions = write("refs.jsonl", [
        {"image": "11.jpg", "sentences": ["the red shape"], "bbox": [10, 10, 50, 40]},
        {"image": "7003.jpg", "sentences": ["the blue shape"], "bbox": [10, 10, 50, 40]}])
    report = grounding.run(regions, str(tmp_path / "grounding"), "refs",
                           grounding.GroundingConfig(), beam_argv, images=str(images),
                           exclude_images=excluded.file)
    for task in ("ref_grounding", "grounded_captioning"):
        task_report = report["tasks"][task]
        assert (task_report["input"], task_report["kept"], task_report["dropped"]) == \
            (2, 1, {"benchmark_image": 1})
        assert task_report["config"]["exclude_images"]["sha256"]
