"""The training data: a stage manifest -> packed, loss-masked token sequences with their images.

Flow, all deterministic from the seed:
  manifest sources ─> one `TaskStream` per task: its shards in a seeded order per epoch, read
  `pack_window` samples at a time, formatted (`corpus.formats.format_sample`), tokenized, packed
  (`corpus.packing.plan_packs`, same task only) ─> `PackStream` gives each pack to the task
  whose share of the samples drawn so far is furthest below its weight (`SampleMixer`) ─>
  `Loader` decodes the images of each pack in worker processes, in order, and stacks packs into
  micro-batches, each trimmed to the columns its longest row fills (`trimmed_width`).

Lanes: the stream is `data_lanes` such flows side by side, each over its own part of every
task's shards (whole shards, or every lanes-th sample of a task with fewer shards than lanes), and
row k of a run comes from lane k mod lanes. With several processes, each draws from its own lanes
only: no process reads, tokenizes or packs what another trains on, so a process's data work is
that of its own rows however many there are, and the rows stay those of one process with the
same lanes.

Mixture: the manifest's weights are shares of samples (Table 3 counts samples), not of packed
rows. A row of a task with short samples holds many of them, so drawing a task per row would
over-represent short tasks; choosing by deficit keeps every task's sample share within about one
row of its weight, deterministically (ties go by hash(seed, k)).

Loss mask: a token is a target when its span is supervised (`Span.supervised`: answers, targets
and the ChatML special tokens, never prompts, role names or images). Targets are computed per
sample before packing, so the last token of one sample never learns the first of the next.

Position: the data position is, per lane and task, the start of its current window plus the
packs already taken from it; per lane the packs drawn and the samples drawn per task; and the
run's rows. Restoring it re-reads that one window, re-plans it and skips the packs already
taken: an exact mid-epoch resume that decodes no skipped image.
"""
from __future__ import annotations

import dataclasses
import io
import itertools
import multiprocessing
import queue
import random
import threading
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image as PILImage

from corpus.config import ConfigError
from corpus.formats import IMG_END, IMG_START, format_sample
from corpus.packing import plan_packs
from corpus.schema import Sample
from corpus.shards import read_shard, scan_shard
from corpus.tokens import IMAGE_PAD, PAD, TextTokenizer
from manifests.manifest import Manifest, ManifestError, ManifestSource, load_manifest

IGNORE = -100


# ---- manifest --------------------------------------------------------------------------------

def read_manifest(path: str) -> Manifest:
    """A stage manifest (manifests/manifest.py reads and checks it, shard paths resolved), less
    the sources the trainer cannot draw from: no shards, or no positive weight."""
    try:
        manifest = load_manifest(path)
    except ManifestError as error:
        raise ConfigError(str(error)) from None
    sources = [source for source in manifest.sources if source.weight > 0 and source.shards]
    if not sources:
        raise ValueError(f"{path}: no source with shards and a positive weight")
    return dataclasses.replace(manifest, sources=sources)


# ---- one sample -> tokens ---------------------------------------------------------------------

@dataclass
class Encoded:
    ids: list[int]
    targets: list[int]  # targets[t] = ids[t + 1] where that token is supervised, else IGNORE
    images: list[bytes]  # in slot order


class SampleEncoder:
    def __init__(self, tokenizer: TextTokenizer, image_tokens: int, seq_len: int):
        self.tokenizer = tokenizer
        self.image_tokens = image_tokens
        self.seq_len = seq_len
        self.img_start = tokenizer.token_id(IMG_START)
        self.img_end = tokenizer.token_id(IMG_END)
        self.image_pad = tokenizer.token_id(IMAGE_PAD)
        self.pad = tokenizer.token_id(PAD)

    def __call__(self, sample: Sample) -> Encoded | None:
        """Tokens and targets of a sample; None when it has no text format (a record the
        formatter rejects), or cutting it to seq_len would split an image or leave nothing to
        learn."""
        try:
            spans = format_sample(sample)
        except (ValueError, IndexError, TypeError):  # e.g. a grounding record without its box
            return None
        ids: list[int] = []
        supervised: list[bool] = []
        images = []
        for span in spans:
            if span.image is not None:
                piece = [self.img_start] + [self.image_pad] * self.image_tokens + [self.img_end]
                images.append(sample.images[span.image].data)
            else:
                piece = self.tokenizer.encode(span.text)
            ids += piece
            supervised += [span.supervised] * len(piece)
        if len(ids) > self.seq_len:
            ids, supervised = ids[:self.seq_len], supervised[:self.seq_len]
            if ids.count(self.img_start) != ids.count(self.img_end):
                return None
            images = images[:ids.count(self.img_end)]
        targets = [ids[t + 1] if supervised[t + 1] else IGNORE for t in range(len(ids) - 1)]
        if not any(supervised[1:]):
            return None
        return Encoded(ids, targets + [IGNORE], images)


# ---- per-task streams of packs ----------------------------------------------------------------

@dataclass(frozen=True)
class Position:
    epoch: int = 0
    shard: int = 0  # index into the epoch's shard order
    sample: int = 0  # samples already read from that shard
    # samples in the epoch's shards before that one; out of the repr, which seeds a window's
    # packing shuffle (TaskStream), so that the shuffles are those of the runs before lanes
    before: int = dataclasses.field(default=0, repr=False)


END_OF_SHARD = object()


class ShardReader:
    """Reads one task's samples from a position on, across shards and epochs; keeps the open shard
    while reads continue where the last one stopped.

    Data lane `lane` of `lanes` reads its own part of the task: every `lanes`-th shard of each
    epoch's order when the task has that many shards, else every `lanes`-th sample of the epoch
    (each lane then reads all the shards, and passes over the others' samples unparsed)."""

    def __init__(self, task: str, shards: list[str], seed: int, lane: int = 0, lanes: int = 1):
        self.task, self.shards, self.seed = task, shards, seed
        self.lane, self.lanes = lane, lanes
        self.by_shard = len(shards) >= lanes
        self._iterator: Iterator[Sample | None] | None = None
        self._at: Position | None = None

    def order(self, epoch: int) -> list[str]:
        """This lane's shards of `epoch`, in reading order."""
        shards = list(self.shards)
        random.Random(f"{self.seed}/{self.task}/{epoch}").shuffle(shards)
        return shards[self.lane::self.lanes] if self.by_shard else shards

    def read(self, start: Position, count: int) -> tuple[list[Sample], Position]:
        if self._at != start:
            self._iterator = self._open(start)
        position, samples, misses = start, [], 0
        while len(samples) < count:
            sample = next(self._iterator, END_OF_SHARD)
            if sample is END_OF_SHARD:  # the next shard, or the next epoch
                misses += 1
                if misses > len(self.shards) + 1:
                    lane = f" for data lane {self.lane} of {self.lanes}" if self.lanes > 1 else ""
                    raise ValueError(f"task {self.task}: its shards hold no sample{lane}")
                position = (Position(position.epoch, position.shard + 1,
                                     before=position.before + position.sample)
                            if position.shard + 1 < len(self.order(position.epoch))
                            else Position(position.epoch + 1))
                self._iterator = self._open(position)
                continue
            if sample is not None:  # None: another lane's
                misses = 0
                samples.append(sample)
            position = dataclasses.replace(position, sample=position.sample + 1)
        self._at = position
        return samples, position

    def _open(self, position: Position) -> Iterator[Sample | None]:
        """The shard's samples from `position` on, None for each of another lane's; neither
        those nor the samples before `position` are parsed."""
        def wanted(index: int) -> bool:
            return index >= position.sample and (
                self.by_shard or (position.before + index) % self.lanes == self.lane)

        iterator = scan_shard(self.order(position.epoch)[position.shard], wanted)
        return itertools.islice(iterator, position.sample, None)


@dataclass
class PackJob:
    """What a worker turns into arrays: the samples of one packed sequence."""

    task: str
    samples: list[Encoded]


class TaskStream:
    def __init__(self, source: ManifestSource, encoder: SampleEncoder, seed: int, packing: bool,
                 window: int, lane: int = 0, lanes: int = 1):
        self.task = source.task
        self.encoder, self.seed, self.packing, self.window = encoder, seed, packing, window
        self.reader = ShardReader(source.task, [shard.path for shard in source.shards], seed,
                                  lane, lanes)
        self.window_start = self.next_start = Position()
        self.taken = 0
        self.skipped = 0  # samples without a text format, cut through an image, or nothing to learn
        self._pending: deque[PackJob] = deque()

    def next_pack(self) -> PackJob:
        while not self._pending:
            self._plan_window()
        self.taken += 1
        return self._pending.popleft()

    def _plan_window(self) -> None:
        samples, end = self.reader.read(self.next_start, self.window)
        encoded = [e for e in map(self.encoder, samples) if e is not None]
        self.skipped += len(samples) - len(encoded)
        if self.packing:
            packs = plan_packs([len(e.ids) for e in encoded], self.encoder.seq_len)
        else:
            packs = [[i] for i in range(len(encoded))]
        # plan_packs orders by length; shuffle so long and short sequences interleave
        random.Random(f"{self.seed}/{self.task}/{self.next_start}").shuffle(packs)
        self._pending = deque(PackJob(self.task, [encoded[i] for i in pack]) for pack in packs)
        self.window_start, self.next_start, self.taken = self.next_start, end, 0

    def state(self) -> dict[str, Any]:
        return {"window_start": dataclasses.asdict(self.window_start), "taken": self.taken}

    def restore(self, state: dict[str, Any]) -> None:
        self.next_start = Position(**state["window_start"])
        self._plan_window()
        for _ in range(state["taken"]):
            self.next_pack()


class SampleMixer:
    """The task of each row: the one whose share of the samples drawn so far is furthest below
    its weight; ties (at the start, say) go by hash(seed, k) for the k-th row."""

    def __init__(self, weights: dict[str, float], seed: int):
        total = sum(weights.values())
        self.weights = {task: weight / total for task, weight in weights.items()}
        self.seed = seed
        self.rows = 0
        self.samples = dict.fromkeys(self.weights, 0)

    def next_task(self) -> str:
        drawn = sum(self.samples.values())
        tasks = list(self.weights)
        random.Random(f"{self.seed}/mix/{self.rows}").shuffle(tasks)  # max keeps the first tie
        return max(tasks, key=lambda task: self.weights[task] * drawn - self.samples[task])

    def record(self, task: str, samples: int) -> None:
        self.samples[task] += samples
        self.rows += 1

    def state(self) -> dict[str, Any]:
        return {"drawn": self.rows, "samples": dict(self.samples)}

    def restore(self, state: dict[str, Any]) -> None:
        self.rows = state["drawn"]
        self.samples.update(state["samples"])


def sample_shares(samples: dict[str, int]) -> dict[str, float]:
    """Each task's share of `samples` (drawn per task)."""
    total = sum(samples.values()) or 1
    return {task: count / total for task, count in samples.items()}


def task_samples(state: dict[str, Any]) -> dict[str, int]:
    """Samples drawn per task up to a data position (`Loader.state()`, or a
    `PackStream.state()`), over the lanes it holds."""
    totals: Counter = Counter()
    for lane in lanes_state(state)["lanes"].values():
        totals.update(lane["samples"])
    return {task: totals[task] for task in sorted(totals)}


class PackStream:
    """Packs of all tasks, mixed by `SampleMixer` so that the weights hold for samples; from data
    lane `lane` of `lanes` (see `ShardReader`)."""

    def __init__(self, manifest: Manifest, encoder: SampleEncoder, seed: int, window: int,
                 lane: int = 0, lanes: int = 1):
        self.streams = {s.task: TaskStream(s, encoder, seed, manifest.packing, window, lane, lanes)
                        for s in manifest.sources}
        self.mixer = SampleMixer({s.task: s.weight for s in manifest.sources}, seed)

    def next_pack(self) -> PackJob:
        task = self.mixer.next_task()
        job = self.streams[task].next_pack()
        self.mixer.record(task, len(job.samples))
        return job

    def state(self) -> dict[str, Any]:
        return dict(self.mixer.state(),
                    tasks={task: stream.state() for task, stream in self.streams.items()})

    def restore(self, state: dict[str, Any]) -> None:
        self.mixer.restore(state)
        for task, task_state in state["tasks"].items():
            self.streams[task].restore(task_state)

    @property
    def skipped(self) -> int:
        return sum(stream.skipped for stream in self.streams.values())


# ---- packs -> arrays (in worker processes) ----------------------------------------------------

def assemble(job: PackJob, seq_len: int, pad_id: int, image_size: int) -> dict[str, Any]:
    """One packed row: ids, targets and per-sample position ids (restarting at 0), padded to
    seq_len with a segment of its own; the images decoded to uint8 [n, S, S, 3]."""
    ids, targets, positions = [], [], []
    for sample in job.samples:
        ids += sample.ids
        targets += sample.targets
        positions += range(len(sample.ids))
    padding = seq_len - len(ids)
    ids += [pad_id] * padding
    targets += [IGNORE] * padding
    positions += range(padding)
    images = [decode_image(data, image_size) for sample in job.samples for data in sample.images]
    pixels = (np.stack(images) if images
              else np.zeros((0, image_size, image_size, 3), dtype=np.uint8))
    return {"task": job.task, "samples": len(job.samples),
            "tokens": seq_len - padding, "ids": np.asarray(ids, dtype=np.int64),
            "targets": np.asarray(targets, dtype=np.int64),
            "positions": np.asarray(positions, dtype=np.int64), "pixels": pixels}


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Square resize, as Qwen-VL feeds its ViT; JPEG draft mode decodes at reduced scale first."""
    with PILImage.open(io.BytesIO(data)) as image:
        image.draft("RGB", (size, size))
        image = image.convert("RGB").resize((size, size), PILImage.Resampling.BICUBIC)
        return np.asarray(image, dtype=np.uint8)


# ---- micro-batches --------------------------------------------------------------------------

def sequence_bounds(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Cumulative start offsets (int32, with the total at the end) of the samples of a packed
    batch, flattened row by row, and the longest sample: a sample starts where its position is 0."""
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).flatten()
    bounds = torch.cat([starts, starts.new_tensor([flat.numel()])]).to(torch.int32)
    return bounds, int((bounds[1:] - bounds[:-1]).max())


def with_tensors(value, convert):
    """A copy of the dataclass `value` with `convert` applied to each of its tensors, those of
    the dataclasses it holds included."""
    changes = {}
    for field in dataclasses.fields(value):
        item = getattr(value, field.name)
        if isinstance(item, torch.Tensor):
            changes[field.name] = convert(item)
        elif dataclasses.is_dataclass(item):
            changes[field.name] = with_tensors(item, convert)
    return dataclasses.replace(value, **changes)


@dataclass
class PackedLayout:
    """Where things are in a packed micro-batch, as indices into its tokens flattened row by row:
    the image slots in reading order, the supervised targets, and each sample's bounds (for the
    varlen kernel). The loader computes it on the CPU, so that the forward pass reads no value
    back from the GPU: each such read waits for all queued work and stops the CPU from queueing
    ahead of the GPU."""

    image_slots: torch.Tensor  # int64 [images x queries]
    supervised: torch.Tensor  # int64 [supervised targets]
    sample_bounds: torch.Tensor  # int32 [samples + 1]
    longest: int  # tokens of the longest sample

    @classmethod
    def of(cls, input_ids: torch.Tensor, position_ids: torch.Tensor, image_pad_id: int,
           targets: torch.Tensor | None = None) -> "PackedLayout":
        bounds, longest = sequence_bounds(position_ids)
        supervised = (targets.reshape(-1) != IGNORE if targets is not None
                      else input_ids.new_zeros(0, dtype=torch.bool))
        return cls(torch.nonzero(input_ids.reshape(-1) == image_pad_id).flatten(),
                   torch.nonzero(supervised).flatten(), bounds, longest)

    def to(self, device: torch.device) -> "PackedLayout":
        return with_tensors(self, lambda tensor: tensor.to(device, non_blocking=True))


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, seq_len]
    targets: torch.Tensor  # [B, seq_len], IGNORE where no loss
    position_ids: torch.Tensor  # [B, seq_len], restarting at every packed sample
    pixels: torch.Tensor  # uint8 [images, S, S, 3], in slot order
    layout: PackedLayout
    samples: int
    tokens: int  # non-padding tokens
    tasks: list[str]
    state: dict[str, Any]  # the data position of this process's lanes after this batch

    @property
    def supervised(self) -> int:
        return self.layout.supervised.numel()

    def pinned(self) -> "Batch":
        """In page-locked memory: a copy to the GPU from it is asynchronous."""
        return with_tensors(self, torch.Tensor.pin_memory)

    def to(self, device: torch.device) -> "Batch":
        return with_tensors(self, lambda tensor: tensor.to(device, non_blocking=True))


Row = tuple[dict[str, Any], dict[str, Any]]  # assembled row, data position after it


class Loader:
    """Endless micro-batches of this process's rows; images decode in `num_workers` processes, in
    order, `prefetch` packs ahead per worker.

    Row k of a run comes from data lane k mod `lanes` (`streams`: lane -> its `PackStream`), and
    with `world` processes belongs to rank k mod world: a rank draws from the lanes
    l = rank (mod world) alone, so the ranks read, tokenize and pack disjoint parts of the corpus,
    and the rows are the same for any number of processes that divides `lanes`.

    With `batches_ahead`, a background thread reads, tokenizes and packs the stream, collects the
    decoded rows and stacks them (in pinned memory with `pin_memory`, for asynchronous copies to
    the GPU) while the training loop runs: the loop finds the next step's micro-batches ready
    instead of preparing them while the GPU waits for it."""

    def __init__(self, streams: dict[int, PackStream], lanes: int, micro_batch_size: int,
                 seq_len: int, image_size: int, pad_id: int, image_pad_id: int,
                 num_workers: int = 0, prefetch: int = 8, rank: int = 0, world: int = 1,
                 rows: int = 0, batches_ahead: int = 0, pin_memory: bool = False,
                 trim: bool = True):
        self.streams, self.lanes = streams, lanes
        self.rows = rows  # rows this rank has drawn
        self.micro_batch_size = micro_batch_size
        self.seq_len, self.image_size, self.pad_id = seq_len, image_size, pad_id
        self.image_pad_id = image_pad_id
        self.num_workers, self.prefetch = num_workers, prefetch
        self.rank, self.world = rank, world
        self.batches_ahead, self.pin_memory = batches_ahead, pin_memory
        self.trim = trim  # False: rows of seq_len columns, padding and all (for comparisons)
        self._pool: ProcessPoolExecutor | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _next_job(self) -> tuple[PackJob, dict[str, Any]]:
        job = self.streams[(self.rows * self.world + self.rank) % self.lanes].next_pack()
        self.rows += 1
        return job, self.state()

    def state(self) -> dict[str, Any]:
        """The data position of this rank's lanes: `merge_states` of every rank's is the run's."""
        return {"rows": self.rows * self.world,
                "lanes": {str(lane): stream.state() for lane, stream in self.streams.items()}}

    @property
    def weights(self) -> dict[str, float]:
        return next(iter(self.streams.values())).mixer.weights

    @property
    def skipped(self) -> int:
        return sum(stream.skipped for stream in self.streams.values())

    def __iter__(self) -> Iterator[Batch]:
        if self.batches_ahead < 1:
            return self._batches()
        return self._background(self._batches())

    def _background(self, batches: Iterator[Batch]) -> Iterator[Batch]:
        """`batches`, made by a thread up to `batches_ahead` ahead, in order; an error in the
        thread is raised here. The loop's waits on the GPU release the GIL: the thread works
        then."""
        ready: queue.Queue = queue.Queue(self.batches_ahead)

        def hand_over(item) -> bool:
            while not self._stop.is_set():
                try:
                    ready.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for batch in batches:
                    if not hand_over(batch):
                        return
            except BaseException as error:  # noqa: BLE001 (handed to the consumer, raised there)
                hand_over(error)
            finally:
                batches.close()  # its workers stop here, in this thread

        self._thread = threading.Thread(target=produce, name="training-batches", daemon=True)
        self._thread.start()
        while True:
            item = ready.get()
            if isinstance(item, BaseException):
                raise item
            yield item

    def _batches(self) -> Iterator[Batch]:
        rows: list[Row] = []
        for row in self._rows():
            rows.append(row)
            if len(rows) == self.micro_batch_size:
                yield self._stack(rows)
                rows = []

    def _rows(self) -> Iterator[Row]:
        args = (self.seq_len, self.pad_id, self.image_size)
        if self.num_workers == 0:
            while True:
                job, state = self._next_job()
                yield assemble(job, *args), state
        # spawn: workers must not inherit the training process's threads and CUDA state
        self._pool = ProcessPoolExecutor(self.num_workers,
                                         mp_context=multiprocessing.get_context("spawn"))
        pending: deque = deque()
        try:
            while True:
                while len(pending) < self.num_workers * self.prefetch:
                    job, state = self._next_job()
                    pending.append((self._pool.submit(assemble, job, *args), state))
                future, state = pending.popleft()
                yield future.result(), state
        finally:
            self.close()

    def close(self) -> None:
        """Stop the workers and the batch thread. The thread ends with the batch it is making:
        one still running when the process exits can abort it from inside PyTorch (a worker
        that never answers is given up after a minute)."""
        self._stop.set()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=60)
            self._thread = None

    def _stack(self, rows: list[Row]) -> Batch:
        arrays = [row for row, _ in rows]
        width = (trimmed_width(max(a["tokens"] for a in arrays), self.seq_len) if self.trim
                 else self.seq_len)
        input_ids = torch.from_numpy(np.stack([a["ids"][:width] for a in arrays]))
        targets = torch.from_numpy(np.stack([a["targets"][:width] for a in arrays]))
        position_ids = torch.from_numpy(np.stack([a["positions"][:width] for a in arrays]))
        batch = Batch(
            input_ids=input_ids, targets=targets, position_ids=position_ids,
            pixels=torch.from_numpy(np.concatenate([a["pixels"] for a in arrays])),
            layout=PackedLayout.of(input_ids, position_ids, self.image_pad_id, targets),
            samples=sum(a["samples"] for a in arrays), tokens=sum(a["tokens"] for a in arrays),
            tasks=[a["task"] for a in arrays], state=rows[-1][1])
        return batch.pinned() if self.pin_memory else batch


def trimmed_width(longest: int, seq_len: int, multiple: int = 8) -> int:
    """The columns a micro-batch keeps: its longest row's tokens rounded up to a multiple of 8
    (the matmul kernels' tile), at most seq_len. Rows are padded to seq_len, and with one sample
    a row (stages 1 and 3: a caption or a dialogue) most of that can be padding, which the model
    would compute for nothing; the padding is a segment of its own that no token attends to and
    no target reads, so dropping its tail changes no output."""
    return min(seq_len, -(-max(longest, 1) // multiple) * multiple)


def build_loader(manifest: Manifest, tokenizer: TextTokenizer, image_tokens: int, seq_len: int,
                 image_size: int, seed: int, micro_batch_size: int, num_workers: int = 0,
                 prefetch: int = 8, window: int = 256, state: dict[str, Any] | None = None,
                 rank: int = 0, world: int = 1, batches_ahead: int = 0,
                 pin_memory: bool = False, lanes: int | None = None,
                 trim: bool = True) -> Loader:
    """Rank `rank` of `world`'s loader over `lanes` data lanes (default: one per rank), from
    the data position `state` (the run's, all lanes) or the start; `trim=False` keeps every
    row's padding to seq_len (`trimmed_width`)."""
    lanes = data_lanes(manifest, world, lanes, state)
    if state is not None:
        state = lanes_state(state)
    encoder = SampleEncoder(tokenizer, image_tokens, seq_len)
    streams = {lane: PackStream(manifest, encoder, seed, window, lane, lanes)
               for lane in range(rank, lanes, world)}
    rows = 0
    if state is not None:
        for lane, stream in streams.items():
            stream.restore(state["lanes"][str(lane)])
        rows = state["rows"] // world
    return Loader(streams, lanes, micro_batch_size, seq_len, image_size, encoder.pad,
                  encoder.image_pad, num_workers, prefetch, rank, world, rows, batches_ahead,
                  pin_memory, trim)


def data_lanes(manifest: Manifest, world: int, lanes: int | None = None,
               state: dict[str, Any] | None = None) -> int:
    """The data lanes of a run: those of its data position `state` when it resumes, else
    `lanes`, else one per process; a ConfigError when `world` processes cannot share them or a
    task cannot give each lane a sample."""
    if state is not None:
        lanes = len(lanes_state(state)["lanes"])
    lanes = lanes or world
    if lanes % world:
        raise ConfigError(f"{lanes} data lane(s) cannot be shared by {world} processes: the "
                          "number of processes must divide it")
    for source in manifest.sources:
        if len(source.shards) < lanes and source.samples < lanes:
            raise ConfigError(f"task {source.task}: {source.samples} sample(s) for {lanes} data "
                              "lanes; each lane needs one at least")
    return lanes


def shared_shards_note(manifest: Manifest, lanes: int) -> str | None:
    """A note naming the tasks whose every lane goes through all their shards (fewer shards
    than lanes: each lane keeps every lanes-th sample of them, seeking past the others' in a
    seekable file, reading them through in a stream); None when every task has a shard per
    lane."""
    few = [f"{source.task} ({len(source.shards)})" for source in manifest.sources
           if len(source.shards) < lanes]
    if not few:
        return None
    return (f"note: fewer shards than the {lanes} data lanes in {', '.join(few)}: every lane "
            f"goes through all of their shards, passing over the other lanes' samples; write "
            f"each task in {lanes} shards or more (--samples-per-shard) for each lane to read "
            f"only its own")


def lanes_state(state: dict[str, Any]) -> dict[str, Any]:
    """A data position in the lanes' layout; one written before lanes existed is one lane's."""
    if "lanes" in state:
        return state
    return {"rows": state["drawn"], "lanes": {"0": state}}


def merge_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's data position from every rank's (`Loader.state()`)."""
    return {"rows": states[0]["rows"],
            "lanes": {lane: value for state in states for lane, value in state["lanes"].items()}}


def corpus_texts(manifest: Manifest, limit: int = 2000) -> Iterator[str]:
    """Formatted text of up to `limit` samples per task, to train a tokenizer on the corpus."""
    from corpus.formats import render

    for source in manifest.sources:
        count = 0
        for shard in source.shards:
            for sample in read_shard(shard.path):
                yield render(format_sample(sample))
                count += 1
                if count >= limit:
                    break
            if count >= limit:
                break
