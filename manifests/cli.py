"""`corpus manifest build | validate | show`: write, check and read stage manifests."""
from __future__ import annotations

import argparse
import itertools
import sys

from manifests.build import SourceSpec, build_manifest, parse_source, parse_weight, \
    relative_to_manifest
from manifests.manifest import STAGES, Manifest, ManifestError, load_manifest, manifest_dir, \
    write_manifest
from manifests.validate import validate_manifest

TOKEN_SAMPLE_LIMIT = 64  # samples read per task to estimate tokens per sample


def add_arguments(parser):
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    # the actions' --help lists defaults as the command's does
    formatter = {"formatter_class": parser.formatter_class}
    build = sub.add_parser("build", help="build a stage manifest from run outputs or shard globs",
                           **formatter)
    build.add_argument("--stage", type=int, required=True, choices=sorted(STAGES),
                       help="the training stage (Table 8 column) the manifest feeds")
    build.add_argument("--source", action="append", required=True, metavar="[TASK=]DIR_OR_GLOB",
                       help="a run's output directory (its report.json is read), a folder of "
                            "run directories, or a glob of shards; local or any fsspec URI. "
                            "Without TASK= the task comes from the report. Repeatable.")
    build.add_argument("--weight", action="append", default=[], metavar="TASK=W",
                       help="mixture weight of a task; the other tasks share the rest in the "
                            "stage's proportions (stage 2: Table 3). Repeatable. (default: "
                            "none, the stage's weights)")
    build.add_argument("--seed", type=int, default=0,
                       help="seed the trainer uses for shard order and task mixing")
    build.add_argument("--tokenizer", help="tokenizer.json or Hugging Face tokenizer folder "
                                           "(default: the trainer's own)")
    build.add_argument("--image-size", type=int,
                       help="override Table 8's image resolution (default: the stage's, Table 8)")
    build.add_argument("--seq-len", type=int,
                       help="override Table 8's LLM sequence length (default: the stage's, "
                            "Table 8)")
    build.add_argument("--packing", action=argparse.BooleanOptionalAction, default=None,
                       help="override the stage's packing (default: the stage's: stage 2 packs, "
                            "Section 3.2)")
    build.add_argument("--output", required=True, metavar="M.yaml",
                       help="where to write the manifest (.yaml, or .json)")
    validate = sub.add_parser("validate", help="check shards, checksums, counts, tasks, weights",
                              **formatter)
    validate.add_argument("manifest")
    validate.add_argument("--deep", action="store_true",
                          help="also read every sample: counts and each sample's task")
    show = sub.add_parser("show", help="a table of tasks, shards, samples, weights, tokens",
                          **formatter)
    show.add_argument("manifest")
    show.add_argument("--token-samples", type=int, default=TOKEN_SAMPLE_LIMIT, metavar="N",
                      help="samples read per task for the token estimate (0: skip it)")


def main(args, extra_argv) -> int:
    if extra_argv:
        print(f"corpus manifest: unknown arguments {extra_argv}", file=sys.stderr)
        return 2
    try:
        return {"build": _build, "validate": _validate, "show": _show}[args.action](args)
    except ManifestError as error:
        _print_problems(f"corpus manifest {args.action}", error.problems)
        return 1


def _print_problems(what: str, problems: list[str]) -> None:
    print(f"{what}: {len(problems)} problem(s):", file=sys.stderr)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)


def _build(args) -> int:
    sources = [parse_source(text) for text in args.source]
    sources = [SourceSpec(relative_to_manifest(s.location, args.output), s.task) for s in sources]
    weights = dict(parse_weight(text) for text in args.weight)
    tokenizer = relative_to_manifest(args.tokenizer, args.output) if args.tokenizer else None
    manifest = build_manifest(args.stage, sources, weights=weights, seed=args.seed,
                              tokenizer=tokenizer, image_size=args.image_size,
                              seq_len=args.seq_len, packing=args.packing,
                              base_dir=manifest_dir(args.output))
    write_manifest(manifest, args.output)
    shards = sum(len(s.shards) for s in manifest.sources)
    print(f"wrote {args.output}: stage {manifest.stage}, {len(manifest.sources)} task(s), "
          f"{shards} shard(s), {manifest.total_samples} samples")
    for source in manifest.sources:
        print(f"  {source.task:<20} weight {source.weight:.4f}  {source.samples} samples in "
              f"{len(source.shards)} shard(s)")
    return 0


def _validate(args) -> int:
    manifest = load_manifest(args.manifest)
    problems = validate_manifest(manifest, deep=args.deep)
    if problems:
        _print_problems(args.manifest, problems)
        return 1
    shards = sum(len(s.shards) for s in manifest.sources)
    print(f"{args.manifest}: OK (stage {manifest.stage}, {len(manifest.sources)} task(s), "
          f"{shards} shard(s), {manifest.total_samples} samples"
          f"{', every sample read' if args.deep else ''})")
    return 0


# ---- show -----------------------------------------------------------------------------------

def _show(args) -> int:
    manifest = load_manifest(args.manifest)
    print(format_table(manifest, token_estimates(manifest, args.token_samples)))
    return 0


def token_estimates(manifest: Manifest, limit: int) -> dict[str, float | None]:
    """Mean tokens per sample and task (text tokens by `corpus.tokens`, plus 256 + 2 per
    image), over the first `limit` samples of the task's shards; None where unreadable."""
    if limit <= 0:
        return {source.task: None for source in manifest.sources}
    from corpus.formats import format_sample
    from corpus.shards import read_shard
    from corpus.tokens import TextTokenizer, count_span_tokens

    tokenizer = (TextTokenizer.load(manifest.tokenizer) if manifest.tokenizer
                 else TextTokenizer.default())
    estimates = {}
    for source in manifest.sources:
        samples = itertools.chain.from_iterable(
            read_shard(manifest.resolve(shard.path)) for shard in source.shards)
        try:
            counts = [count_span_tokens(format_sample(sample), tokenizer)
                      for sample in itertools.islice(samples, limit)]
        except (OSError, ValueError, KeyError):
            counts = []
        estimates[source.task] = sum(counts) / len(counts) if counts else None
    return estimates


def format_table(manifest: Manifest, tokens_per_sample: dict[str, float | None]) -> str:
    """Per task: weight, shards, samples, bytes, draws per epoch (weight x epoch), passes over
    the task's samples, tokens per sample and per epoch."""
    epoch = manifest.expected_samples_per_epoch
    lines = [f"stage {manifest.stage}: image {manifest.image_size}x{manifest.image_size}, "
             f"seq_len {manifest.seq_len}, packing {'on' if manifest.packing else 'off'}, "
             f"seed {manifest.seed}, tokenizer {manifest.tokenizer or 'trainer default'}",
             f"expected samples per epoch: {epoch}"]
    header = ("task", "weight", "shards", "samples", "bytes", "draws/epoch", "passes",
              "tokens/sample", "tokens/epoch")
    rows, total_tokens = [], 0.0
    for source in manifest.sources:
        draws = source.weight * epoch
        per_sample = tokens_per_sample.get(source.task)
        tokens = draws * per_sample if per_sample is not None else None
        total_tokens += tokens or 0.0
        rows.append((source.task, f"{source.weight:.4f}", str(len(source.shards)),
                     str(source.samples), _human_bytes(source.bytes), f"{draws:.0f}",
                     f"{draws / source.samples:.2f}" if source.samples else "-",
                     f"{per_sample:.0f}" if per_sample is not None else "-",
                     f"{tokens:.0f}" if tokens is not None else "-"))
    rows.append(("total", f"{sum(s.weight for s in manifest.sources):.4f}",
                 str(sum(len(s.shards) for s in manifest.sources)), str(manifest.total_samples),
                 _human_bytes(sum(s.bytes for s in manifest.sources)), str(epoch), "",
                 "", f"{total_tokens:.0f}"))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))))
    if manifest.packing and total_tokens:
        lines.append(f"packed into sequences of {manifest.seq_len}: at least "
                     f"{int(-(-total_tokens // manifest.seq_len))} sequences per epoch")
    return "\n".join(lines)


def _human_bytes(size: float) -> str:
    if size < 1024:
        return f"{size:.0f} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        size /= 1024
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}"
