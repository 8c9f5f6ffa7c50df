"""The demo's manifests: stage 1, 2 and 3 from whichever pipeline outputs the demo produced.

`corpus demo` runs each pipeline into `OUTPUT/<name>/`; this builds
`OUTPUT/manifests/stage{1,2,3}.yaml` from them with the default weights, validates each, and
skips a stage none of whose tasks were produced.
"""
from __future__ import annotations

import os

from corpus.report import REPORT_NAME
from manifests.build import SourceSpec, build_manifest, find_run_dirs, read_report
from manifests.manifest import STAGES, ManifestError, load_manifest, write_manifest
from manifests.validate import validate_manifest

# The task each demo pipeline feeds; None: the report says (a grounding run may hold the
# grounding task or one of its duality tasks).
PIPELINE_TASKS = {
    "pairs": "captioning",
    "vqa": "vqa",
    "grounding": None,
    "pdf": "ocr",
    "html": "ocr",
    "synthdog": "ocr",
    "text": "text",
    "sft": "sft",
}


def demo_sources(output_dir: str, pipeline_names, manifests_dir: str) -> list[SourceSpec]:
    """One source per run that kept something; locations relative to the manifests' folder."""
    sources = []
    for name in sorted(pipeline_names):
        location = os.path.join(output_dir, name)
        if name not in PIPELINE_TASKS or not os.path.isdir(location):
            continue
        for run_dir in find_run_dirs(location):
            report = read_report(os.path.join(run_dir, REPORT_NAME))
            if not report.get("kept"):
                continue
            task = PIPELINE_TASKS[name] or report.get("task")
            sources.append(SourceSpec(os.path.relpath(run_dir, manifests_dir), task))
    return sources


def build_demo_manifests(output_dir: str, pipeline_names) -> dict[int, str]:
    """Write and validate one manifest per stage that has data; returns {stage: path}."""
    manifests_dir = os.path.abspath(os.path.join(output_dir, "manifests"))
    sources = demo_sources(output_dir, pipeline_names, manifests_dir)
    written = {}
    for stage, settings in sorted(STAGES.items()):
        stage_sources = [s for s in sources if s.task in settings.tasks]
        if not stage_sources:
            continue
        manifest = build_manifest(stage, stage_sources, base_dir=manifests_dir)
        path = os.path.join(output_dir, "manifests", f"stage{stage}.yaml")
        write_manifest(manifest, path)
        problems = validate_manifest(load_manifest(path))
        if problems:
            raise ManifestError([f"{path}: {problem}" for problem in problems])
        written[stage] = path
    return written
