"""The demo's last act: a tiny model trained a few steps through stages 1 -> 2 -> 3 on the CPU,
each stage starting from the previous stage's checkpoint, on the demo's own shards."""
from __future__ import annotations

import os
import time

from trainer.train import train

# A few steps of each stage: Table 8's freeze plans, lr shapes and image sizes (224 -> 448), with
# the warm-up shortened to fit, one row per step, 64 queries per image and rows of 512 tokens so
# a CPU keeps up.
DEMO_STEPS = 3
DEMO_OVERRIDES = {
    "steps": DEMO_STEPS, "warmup_steps": 1, "micro_batch_size": 1, "global_batch": 1,
    "seq_len": 512, "num_workers": 0, "pack_window": 16, "log_every": 1,
    "save_every": DEMO_STEPS, "keep_checkpoints": 1, "model": {"adapter": {"queries": 64}},
}


def train_demo(output_dir: str, manifests: dict[int, str]) -> dict[int, str]:
    """Train stages 1, 2, 3 (those given) into OUTPUT/train/stageN; returns their checkpoints."""
    checkpoints: dict[int, str] = {}
    previous = None
    for stage in sorted(manifests):
        started = time.time()
        result = train(manifests[stage], stage, os.path.join(output_dir, "train", f"stage{stage}"),
                       init=previous, overrides=DEMO_OVERRIDES, device="cpu", progress=False)
        checkpoints[stage] = previous = result.checkpoint
        print(f"   stage {stage}: {result.steps} steps, loss {result.losses[0]:.3f} -> "
              f"{result.losses[-1]:.3f}, checkpoint {result.checkpoint} "
              f"({time.time() - started:.1f} s)")
    return checkpoints
