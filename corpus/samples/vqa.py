"""Sample VQA inputs: VQAv2 split files (questions + annotations with `answer_confidence`,
joined on `question_id`), GQA-style questions keyed by id, OCR-VQA's per-image lists and a
DocVQA-style file, with images in one folder. Bad records exercise every rule."""
from __future__ import annotations

import json
import os

from corpus.samples.grounding import draw_scene


def _answers(*pairs: tuple[str, str]) -> list[dict]:
    return [{"answer": a, "answer_confidence": c, "answer_id": i + 1}
            for i, (a, c) in enumerate(pairs)]


def write_vqa_sample(folder: str) -> tuple[list[str], str]:
    """Returns (input files, image folder)."""
    images = os.path.join(folder, "images")
    os.makedirs(images, exist_ok=True)
    for name, colour in (("COCO_train2014_000000000001.jpg", (200, 60, 60)),
                         ("COCO_train2014_000000000002.jpg", (60, 60, 200)),
                         ("n100.jpg", (60, 160, 60)), ("0439023521.jpg", (120, 60, 160)),
                         ("doc_1.png", (240, 240, 240))):
        with open(os.path.join(images, name), "wb") as f:
            f.write(draw_scene(96, 64, [((10, 10, 60, 50), colour)]))
    questions = {"data_subtype": "train2014", "questions": [
        {"image_id": 1, "question": "What colour is the square?", "question_id": 10},
        {"image_id": 1, "question": "Is it raining?", "question_id": 11},
        {"image_id": 2, "question": "How many squares are there?", "question_id": 20},
        {"image_id": 2, "question": "   ", "question_id": 21},
        {"image_id": 3, "question": "Where is the picture?", "question_id": 30},
        {"image_id": 2, "question": "What is in the test split?", "question_id": 22},
    ]}
    annotations = {"data_subtype": "train2014", "annotations": [
        # "red" has 4 yes; "dark red" has 5 votes but only 3 yes: "red" wins
        {"question_id": 10, "image_id": 1, "multiple_choice_answer": "dark red",
         "answers": _answers(("red", "yes"), ("red", "yes"), ("red", "yes"), ("red", "yes"),
                             ("dark red", "yes"), ("dark red", "yes"), ("dark red", "yes"),
                             ("dark red", "maybe"), ("dark red", "maybe"), ("pink", "no"))},
        # "no" and "yes" tie on every count: the consensus answer decides
        {"question_id": 11, "image_id": 1, "multiple_choice_answer": "yes",
         "answers": _answers(("no", "maybe"), ("yes", "maybe"), ("no", "no"), ("yes", "no"))},
        {"question_id": 20, "image_id": 2, "multiple_choice_answer": "1",
         "answers": _answers(("1", "yes"), ("one", "yes"), ("1", "maybe"))},
        {"question_id": 21, "image_id": 2, "answers": _answers(("yes", "yes"))},
        {"question_id": 30, "image_id": 3, "answers": _answers(("kitchen", "yes"))},
        {"question_id": 99, "image_id": 2, "answers": _answers(("orphan", "yes"))},
    ]}
    gqa = {"n100q1": {"imageId": "n100", "question": "Is the square green?", "answer": "yes",
                      "fullAnswer": "Yes, the square is green."},
           "n100q2": {"imageId": "n100", "question": "What shape is it?", "answer": "   "}}
    ocr_vqa = {"0439023521": {"imageURL": "http://example.invalid/0439023521.jpg",
                              "title": "A Book", "questions": ["What is the title of this book?",
                                                                "Is this a comic book?"],
                              "answers": ["A Book", "No"]}}
    docvqa = {"dataset_name": "docvqa", "data": [
        {"questionId": 1, "question": "What is the date?", "image": "doc_1.png",
         "answers": ["1 May 2001", "May 1, 2001"]},
        {"questionId": 2, "question": "Who signed?", "image": "doc_1.png", "answers": []}]}
    files = {"v2_OpenEnded_mscoco_train2014_questions.json": questions,
             "v2_mscoco_train2014_annotations.json": annotations,
             "gqa_questions.json": gqa, "ocr_vqa_dataset.json": ocr_vqa, "docvqa.json": docvqa}
    paths = []
    for name, document in files.items():
        path = os.path.join(folder, name)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(document, f)
        paths.append(path)
    return paths, images
