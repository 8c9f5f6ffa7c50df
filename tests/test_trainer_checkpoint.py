"""Checkpoints written behind the training (trainer/checkpoint.py: CheckpointWriter): what is
saved is the state at the save, whatever the loop changes while the thread writes; a failed
write fails the run at its next save or its end; the folders appear whole and the oldest go."""
import json
import os
import threading

import pytest
import torch

import trainer.checkpoint
from corpus.tokens import TextTokenizer
from trainer.checkpoint import CheckpointWriter, read_state, resolve_checkpoint
from trainer.distributed import World
from trainer.weights import read_weights


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))]


def model_and_optimizer(device="cpu"):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return model, optimizer, scheduler


def writes_held_back(monkeypatch) -> threading.Event:
    """The checkpoint thread's writing waits (after its copy) until the event is set: the loop
    moves on meanwhile."""
    loop_moved_on, real_save = threading.Event(), trainer.checkpoint.dcp.save

    def save_later(*args, **kwargs):
        assert loop_moved_on.wait(10)
        return real_save(*args, **kwargs)

    monkeypatch.setattr(trainer.checkpoint.dcp, "save", save_later)
    return loop_moved_on


def train_step(model, optimizer, scheduler, writer=None):
    model(torch.ones(4, 8, device=model[0].weight.device)).sum().backward()
    if writer is not None:  # as the trainer's loop does
        writer.wait_for_copy()
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("device", DEVICES)
def test_a_save_in_the_background_holds_the_state_at_the_save(tmp_path, monkeypatch, device):
    # the thread writes only once the loop has taken two more steps: what it writes must be the
    # copy taken at the save, not the weights as they are by then (on CUDA: copied to pinned
    # memory without blocking, on the rank's own GPU)
    model, optimizer, scheduler = model_and_optimizer(device)
    train_step(model, optimizer, scheduler)
    at_save = {name: value.to("cpu", copy=True) for name, value in model.state_dict().items()}
    moments = optimizer.state[model[0].weight]["exp_avg"].to("cpu", copy=True)
    loop_moved_on = writes_held_back(monkeypatch)
    writer = CheckpointWriter(str(tmp_path), keep=2, world=World(), device=torch.device(device))
    counters = {"tokens": 10}
    folder = writer.save(1, model, optimizer, scheduler, TextTokenizer.default(),
                         {"counters": counters})
    assert not os.path.exists(folder)  # still being written
    train_step(model, optimizer, scheduler, writer)
    train_step(model, optimizer, scheduler, writer)
    counters["tokens"] = 30
    loop_moved_on.set()
    writer.close()

    saved = read_weights(folder)
    assert saved.keys() == at_save.keys()
    assert all(torch.equal(saved[name], at_save[name]) for name in at_save)
    assert not torch.equal(model[0].weight.cpu(), at_save["0.weight"])  # the case under test
    state = read_state(folder)
    assert state["step"] == 1 and state["counters"] == {"tokens": 10}
    assert state["scheduler"]["last_epoch"] == 1
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    dcp_to_torch_save(os.path.join(folder, "optimizer"), str(tmp_path / "optimizer.pt"))
    saved_moments = torch.load(tmp_path / "optimizer.pt")["state"]["0.weight"]["exp_avg"]
    assert torch.equal(saved_moments, moments)
    assert resolve_checkpoint(str(tmp_path)) == folder


def test_the_loop_waits_for_the_copy_before_its_optimizer_step(tmp_path, monkeypatch):
    # the copy is held back 0.2 s: the step that follows the save must not change the weights
    # before it is made
    model, optimizer, scheduler = model_and_optimizer()
    at_save = {name: value.clone() for name, value in model.state_dict().items()}
    writer = CheckpointWriter(str(tmp_path), keep=2, world=World())
    may_copy, real_stage = threading.Event(), writer.stager.stage
    monkeypatch.setattr(writer.stager, "stage",
                        lambda state_dict: may_copy.wait(10) and real_stage(state_dict))
    folder = writer.save(1, model, optimizer, scheduler, TextTokenizer.default(), {})
    threading.Timer(0.2, may_copy.set).start()
    train_step(model, optimizer, scheduler, writer)
    writer.close()
    saved = read_weights(folder)
    assert all(torch.equal(saved[name], at_save[name]) for name in at_save)
    assert not torch.equal(model[0].weight, at_save["0.weight"])


def test_saves_in_the_background_come_in_order_whole_and_the_oldest_go(tmp_path):
    model, optimizer, scheduler = model_and_optimizer()
    writer = CheckpointWriter(str(tmp_path), keep=2, world=World())
    for step in range(1, 5):
        train_step(model, optimizer, scheduler, writer)
        writer.save(step, model, optimizer, scheduler, TextTokenizer.default(), {})
    writer.close()
    root = tmp_path / "checkpoints"
    assert sorted(os.listdir(root)) == ["latest", "step-00000003", "step-00000004"]
    assert (root / "latest").read_text() == "step-00000004"
    saved = read_weights(str(root / "step-00000004"))
    assert all(torch.equal(saved[name], value) for name, value in model.state_dict().items())


def test_a_write_that_fails_in_the_background_fails_the_run(tmp_path):
    model, optimizer, scheduler = model_and_optimizer()
    output = tmp_path / "output"
    output.write_text("a file where the output folder should be")
    writer = CheckpointWriter(str(output), keep=2, world=World())
    writer.save(1, model, optimizer, scheduler, TextTokenizer.default(), {})
    with pytest.raises(RuntimeError, match="writing a checkpoint under .* failed") as failure:
        writer.save(2, model, optimizer, scheduler, TextTokenizer.default(), {})
    assert isinstance(failure.value.__cause__, (FileExistsError, NotADirectoryError))
    writer.close()  # the failure was raised once; the second save never began
    assert output.read_text() == "a file where the output folder should be"


def test_a_save_written_before_the_loop_goes_on_is_in_place_at_once(tmp_path):
    model, optimizer, scheduler = model_and_optimizer()
    writer = CheckpointWriter(str(tmp_path), keep=2, world=World(), background=False)
    folder = writer.save(7, model, optimizer, scheduler, TextTokenizer.default(), {"a": 1})
    assert json.loads(open(os.path.join(folder, "state.json")).read())["a"] == 1
    assert writer.writing is None


def test_frozen_weights_are_written_from_the_model_not_copied(tmp_path, monkeypatch):
    # no step changes a frozen weight: the save copies only what trains (the frozen LLM of
    # stage 1 would double a GPU's host memory). Changed here by hand after the save, the frozen
    # weight is written as it is at the write, the trained one as it was at the save
    model, optimizer, scheduler = model_and_optimizer()
    model[1].requires_grad_(False)
    loop_moved_on = writes_held_back(monkeypatch)
    writer = CheckpointWriter(str(tmp_path), keep=2, world=World())
    folder = writer.save(1, model, optimizer, scheduler, TextTokenizer.default(), {})
    trained_at_save = model[0].weight.detach().clone()
    writer.wait_for_copy()
    with torch.no_grad():
        model[0].weight.add_(1)
        model[1].weight.add_(1)
    loop_moved_on.set()
    writer.close()
    saved = read_weights(folder)
    assert torch.equal(saved["0.weight"], trained_at_save)
    assert torch.equal(saved["1.weight"], model[1].weight)


def test_a_new_writer_removes_what_a_stopped_run_left_half_written(tmp_path):
    model, optimizer, scheduler = model_and_optimizer()
    CheckpointWriter(str(tmp_path), keep=2, world=World(), background=False).save(
        1, model, optimizer, scheduler, TextTokenizer.default(), {})
    left = tmp_path / "checkpoints" / ".step-00000002.tmp" / "model"
    left.mkdir(parents=True)
    (left / "__0_0.distcp").write_bytes(b"half")
    CheckpointWriter(str(tmp_path), keep=2, world=World())
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["latest", "step-00000001"]
