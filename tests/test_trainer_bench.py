"""The GPU benchmark runs end to end in its tiny CPU form; the example configs load."""
import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def test_bench_frozen_tiny_runs_both_ways_on_two_ranks(capfd):
    import bench_frozen

    results = bench_frozen.main(["--tiny", "--passes", "1"])
    whole, sharded = results["held whole"], results["sharded"]
    assert whole["held_whole"] > 0 and whole["gathered_per_pass"] < sharded["gathered_per_pass"]
    assert "gathered, sharded / held whole:" in capfd.readouterr().out


def test_bench_padding_tiny_times_trimmed_and_padded_rows(capsys):
    import bench_padding

    results = bench_padding.main(["--tiny"])
    for stage, seq_len in (("stage 1", 512), ("stage 3", 2048)):
        assert results[stage]["padded"]["columns"] == seq_len
        assert results[stage]["trimmed"]["columns"] < seq_len
    assert "stage 3: trimmed / padded tokens/s" in capsys.readouterr().out


def test_bench_checkpoint_tiny_saves_and_reads_both_ways_on_two_ranks(capfd):
    import bench_checkpoint

    bench_checkpoint.main(["--tiny"])
    out = capfd.readouterr().out
    for way in ("own part", "gathered"):
        assert re.search(rf"{way}: rank 0 [\d.]+ s, \+[\d.]+ GiB; rank 1 ", out), out
    assert "rank 0, gathered vs own part" in out
    for way in ("own part", "whole"):
        assert re.search(rf"{way}: rank 0 [\d.]+ s, [\d.]+ GiB read; rank 1 ", out), out
    assert re.search(r"in the background .*: rank 0 [\d.]+ then [\d.]+ vs [\d.]+ s", out), out
    for save in ("written before the step", "in the background, a run's first",
                 "in the background, a later one"):
        assert re.search(rf"  {save}: [+-][\d.]+ s", out), out


def test_bench_checkpoint_tiny_copies_the_whole_state_and_a_share_on_ddp_ranks(capfd):
    import bench_checkpoint

    bench_checkpoint.main(["--tiny", "--ddp"])
    out = capfd.readouterr().out
    for rank in (0, 1):
        assert re.search(rf"rank {rank}: the whole state [\d.]+ s, \+[\d.]+ GiB; its share "
                         rf"[\d.]+ s, \+[\d.]+ GiB", out), out


def test_bench_hybrid_tiny_counts_what_crosses_nodes(capfd):
    import bench_hybrid

    results = bench_hybrid.main(["--tiny", "--accumulation", "2"])
    per_node = results["a copy per node"]["counts"]
    over_all = results["one copy over all"]["counts"]
    # a copy per node gathers and reduce-scatters within its node, all-reduces across once
    assert set(per_node) == {"all_gather within nodes", "reduce_scatter within nodes",
                             "all_reduce across nodes"}
    assert set(over_all) == {"all_gather across nodes", "reduce_scatter across nodes"}
    # the same weights gathered (each unit padded to a multiple of the ranks sharing it)
    assert per_node["all_gather within nodes"] == pytest.approx(
        over_all["all_gather across nodes"], rel=0.01)
    assert "across nodes, one copy over all / a copy per node" in capfd.readouterr().out


def test_bench_trainer_tiny_runs(capsys):
    import bench_trainer

    results = bench_trainer.main(["--tiny", "--workers", "0", "--steps", "1", "--variants",
                                  "sdpa", "sdpa+ac"])
    assert set(results) == {"plain HF Qwen2, LLM only", "trainer, sdpa", "trainer, sdpa+ac"}
    assert results["trainer, sdpa"]["tokens_per_s"] > 0
    # recomputing the blocks changes the cost, not the step
    assert results["trainer, sdpa+ac"]["first_loss"] == results["trainer, sdpa"]["first_loss"]
    assert "tokens/s" in capsys.readouterr().out


def test_bench_trainer_profiles_both_llm_bodies(tmp_path, capsys):
    import bench_trainer

    results = bench_trainer.main(["--tiny", "--workers", "0", "--steps", "1", "--profile",
                                  str(tmp_path)])
    traces = results["profile_traces"]
    assert set(traces) == {"plain HF Qwen2", "trainer LLM body, sdpa"}
    assert all(os.path.getsize(path) > 0 for path in traces.values())
    out = capsys.readouterr().out
    assert "profile: plain HF Qwen2" in out and "profile: trainer LLM body, sdpa" in out
    assert "Self CPU" in out  # the profiler's operator table


def test_bench_trainer_measures_the_loader_stall_both_ways(capsys):
    import bench_trainer

    results = bench_trainer.main(["--tiny", "--loader-only", "--workers", "0", "--steps", "2",
                                  "--step-seconds", "0.01", "--launch", "0.005"])
    stalls = ["loader, batches_ahead 0", "loader, batches_ahead 8",
              "loader, batches_ahead 8, a step read first"]
    assert set(results) == {*stalls, "data per rank, 2 ranks", "shared shard, 16 lanes"}
    assert all(0 <= results[name]["data_wait"] < 1 for name in stalls)
    assert all(seconds > 0 for seconds in results["data per rank, 2 ranks"].values())
    shared = results["shared shard, 16 lanes"]
    assert (shared["kept"], shared["samples"]) == (1, 16)  # of the 16 captions
    out = capsys.readouterr().out
    assert "loader stall, batches_ahead 8:" in out and "data per rank, 2 ranks" in out
    assert re.search(r"batches_ahead 8, \d+ micro-batches a step: [\d.]+% read whole before", out)
    assert "a task in one shard of 16 samples, 16 lanes: a lane's 1 in" in out


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "trainer/configs/*.yaml"))))
def test_example_configs_load(path):
    from trainer.stages import stage_config

    for stage in (1, 2, 3):
        config = stage_config(stage, path)
        assert config.model.adapter.queries in (64, 256)
        assert config.accumulation(1) >= 1  # every example reaches its global batch on one GPU


def test_bench_trainer_prints_each_goal_with_the_best_setting(capsys):
    import bench_trainer

    # the figures the goals were set against, and a setting that meets them
    results = {"plain HF Qwen2, LLM only": {"mfu": 0.345, "tokens_per_s": 1, "data_wait": 0},
               "trainer, varlen": {"mfu": 0.185, "data_wait": 0.039},
               "trainer, varlen+compile": {"mfu": 0.266, "data_wait": 0.051},
               "components_mfu": {"LLM body, varlen": 0.198}}
    bench_trainer.print_goals(results)
    assert capsys.readouterr().out.splitlines() == [
        "goal: trainer MFU / plain HF MFU >= 1.0 (trainer, varlen+compile): 0.77 NOT met",
        "goal: trainer MFU >= 45 % (trainer, varlen+compile): 26.6% NOT met",
        "goal: loader stall < 2 % (trainer, varlen+compile): 5.1% NOT met",
        "goal: LLM body MFU, varlen >= plain HF whole-model MFU: 19.8% NOT met"]
    results["trainer, varlen+compile+ac"] = {"mfu": 0.46, "data_wait": 0.01}
    bench_trainer.print_goals(results)
    lines = capsys.readouterr().out.splitlines()
    assert [line.endswith("NOT met") for line in lines] == [False, False, False, True]
    bench_trainer.print_goals({"plain HF Qwen2, LLM only": {"tokens_per_s": 1, "data_wait": 0},
                               "trainer, sdpa": {"tokens_per_s": 1, "data_wait": 0}})
    assert capsys.readouterr().out == ""  # no MFU without a GPU


def test_the_gpu_run_takes_each_step_in_its_tiny_form_and_keeps_their_output(tmp_path):
    # TINY=1: the script's steps, in the forms that run on a CPU; each ends well and leaves its
    # log, and a step the budget cannot hold is named as skipped
    script = os.path.join(ROOT, "benchmarks", "trainer_on_gpu.sh")
    env = dict(os.environ, TINY="1", PYTHON=sys.executable)
    printed = subprocess.run(["bash", script, str(tmp_path / "out"), "600"], env=env,
                             capture_output=True, text=True, timeout=900).stdout
    steps = ("environment", "bench_trainer", "cuda_checks", "bench_padding")
    for step in steps:
        assert re.search(rf"== {step}: exit 0 after \d+ s", printed), printed[-3000:]
        assert (tmp_path / "out" / f"{step}.log").stat().st_size > 0
    assert (tmp_path / "out" / "bench_trainer.json").exists()
    assert list((tmp_path / "out" / "traces").glob("*.json"))
    printed = subprocess.run(["bash", script, str(tmp_path / "late"), "0"], env=env,
                             capture_output=True, text=True, timeout=60).stdout
    assert all(f"== {step}: skipped" in printed for step in steps)
