"""Shared training plumbing: LR schedules by hand, data stream, safetensors checkpoints, logs, guards."""

import json
import math
import random

import numpy as np
import pytest
import torch

from lamo_cli.errors import LamoError
from lamo_cli.training import (
    EpochStream,
    LRSchedule,
    MetricsLog,
    PhaseTimer,
    begin_checkpoint,
    check_resume_settings,
    ensure_finite,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_safetensors_checked,
    lr_factor,
    plot_loss_curve,
    read_metrics,
    restore_rng_state,
    rng_state_tensors,
    sample_timesteps,
    save_checkpoint,
)


# ---------------------------------------------------------------- training timesteps
def test_uniform_timesteps_are_cogvideox_randint():
    got = sample_timesteps("uniform", 64, 1000, torch.Generator().manual_seed(3))
    want = torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(got, want)


def test_logit_normal_timesteps_by_hand():
    # t = floor(N * sigmoid(u)), u ~ N(mean, std), from the same generator state
    got = sample_timesteps("logit-normal", 256, 1000, torch.Generator().manual_seed(5), logit_mean=-0.5, logit_std=0.8)
    u = torch.normal(-0.5, 0.8, size=(256,), generator=torch.Generator().manual_seed(5)).double()
    want = torch.floor(1000 / (1 + torch.exp(-u))).long()
    assert torch.equal(got, want)
    assert got.min() >= 0 and got.max() <= 999


def test_logit_normal_median_and_spread():
    t = sample_timesteps("logit-normal", 20000, 1000, torch.Generator().manual_seed(0), logit_mean=-0.5, logit_std=1.0).double()
    assert abs(t.median().item() - 1000 / (1 + math.exp(0.5))) < 10  # median of sigmoid(u) is sigmoid(mean)
    mid = ((t >= 100) & (t < 600)).double().mean().item()
    assert mid > 0.6  # uniform would put 50% there


def test_unknown_timestep_sampling_is_refused():
    with pytest.raises(ValueError, match="logit-normal"):
        sample_timesteps("cosine", 4, 1000, torch.Generator())


# ---------------------------------------------------------------- LR schedules
def test_warmup_is_linear_from_the_first_step_then_constant():
    assert [lr_factor(s, warmup=4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor(0, warmup=0) == 1.0


def test_cosine_after_warmup_by_hand():
    # warmup 2, total 10: cosine runs over steps 2..9 with p = (step - 2) / 8
    assert lr_factor(0, 2, "cosine", 10) == 0.5
    assert lr_factor(1, 2, "cosine", 10) == 1.0
    assert lr_factor(2, 2, "cosine", 10) == 1.0
    assert lr_factor(6, 2, "cosine", 10) == pytest.approx(0.5, abs=1e-15)
    assert lr_factor(9, 2, "cosine", 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert lr_factor(6, 2, "cosine", 10, min_ratio=0.1) == pytest.approx(0.55)
    assert lr_factor(50, 2, "cosine", 10) == 0.0  # clamps past the end


def test_schedule_writes_lr_into_every_group():
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))]
    opt = torch.optim.AdamW([{"params": params[:1]}, {"params": params[1:]}], lr=1.0)
    schedule = LRSchedule(base_lr=5e-4, warmup=200, kind="cosine", total_steps=1000)
    assert schedule.apply(opt, 99) == pytest.approx(5e-4 * 100 / 200)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(2.5e-4)] * 2
    with pytest.raises(ValueError):
        lr_factor(5, 0, "linear")


# ---------------------------------------------------------------- data stream
def test_epoch_stream_permutes_each_epoch_and_shards_by_rank():
    stream = EpochStream(5, seed=3)
    first_two_epochs = stream.take(0, 10)
    assert sorted(first_two_epochs[:5]) == list(range(5)) and sorted(first_two_epochs[5:]) == list(range(5))
    assert first_two_epochs[:5] != first_two_epochs[5:]  # a new permutation per epoch (seeded: fixed)
    # two ranks, batch 2: the global batch at position 4 is stream[4:8], split in order
    global_batch = stream.take(4, 4)
    assert stream.rank_batch(4, 2, world_size=2, rank=0) == global_batch[:2]
    assert stream.rank_batch(4, 2, world_size=2, rank=1) == global_batch[2:]
    # a fresh stream (a resumed process) gives the same indices from a position
    assert EpochStream(5, seed=3).take(7, 3) == first_two_epochs[7:10]
    assert EpochStream(5, seed=4).take(0, 5) != first_two_epochs[:5] or EpochStream(5, seed=5).take(0, 5) != first_two_epochs[:5]


# ---------------------------------------------------------------- checkpoints
def _trained_model(steps: int = 3):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.99), weight_decay=1e-4)
    x = torch.randn(16, 4)
    for _ in range(steps):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    return model, opt, x


def test_checkpoint_round_trip_restores_optimizer_state_exactly(tmp_path):
    model, opt, x = _trained_model()
    gen = torch.Generator().manual_seed(11)
    folder = save_checkpoint(
        tmp_path, 3, weights=dict(model.state_dict()), optimizer=opt, state={"samples_seen": 48}, generators={"noise": gen}
    )
    assert folder == tmp_path / "checkpoints" / "step-000003"
    ckpt = load_checkpoint(folder)
    assert ckpt.step == 3 and ckpt.state["samples_seen"] == 48

    torch.manual_seed(99)
    model2 = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
    model2.load_state_dict(ckpt.weights)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.5)
    ckpt.load_optimizer(opt2)

    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]  # lr, betas (tuple), eps, weight_decay ...
    assert isinstance(b["param_groups"][0]["betas"], tuple)
    assert a["state"].keys() == b["state"].keys()
    for index in a["state"]:
        for name, value in a["state"][index].items():
            assert torch.equal(value, b["state"][index][name]), (index, name)
    # one more identical step from both gives identical weights
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).pow(2).mean().backward()
        o.step()
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)


def test_checkpoint_files_are_safetensors_and_json_only(tmp_path):
    model, opt, _ = _trained_model(1)
    folder = save_checkpoint(tmp_path, 1, weights=dict(model.state_dict()), optimizer=opt, state={})
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["optimizer.json", "optimizer.safetensors", "rng-rank0.safetensors", "trainer_state.json", "weights.safetensors"]
    json.loads((folder / "optimizer.json").read_text())


def test_keeps_the_last_two_and_ignores_unfinished_temp_folders(tmp_path):
    model, opt, _ = _trained_model(1)
    for step in (2, 4, 6):
        save_checkpoint(tmp_path, step, weights=dict(model.state_dict()), optimizer=opt, state={}, keep=2)
    begin_checkpoint(tmp_path, 8)  # a crash mid-write leaves only a temp folder
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000004", "step-000006"]
    assert latest_checkpoint(tmp_path).name == "step-000006"
    assert latest_checkpoint(tmp_path / "nothing-here") is None


def test_rng_state_round_trip():
    gen = torch.Generator().manual_seed(5)
    tensors = rng_state_tensors({"noise": gen})
    first = (torch.rand(3), np.random.rand(2), random.random(), torch.randn(2, generator=gen))
    restore_rng_state(tensors, {"noise": gen})
    second = (torch.rand(3), np.random.rand(2), random.random(), torch.randn(2, generator=gen))
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert first[2] == second[2] and torch.equal(first[3], second[3])


def test_corrupt_safetensors_gives_one_line_error(tmp_path):
    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(LamoError) as info:
        load_safetensors_checked(bad)
    assert "\n" not in str(info.value) and str(bad) in str(info.value)
    with pytest.raises(LamoError, match="missing"):
        load_safetensors_checked(tmp_path / "absent.safetensors")


def test_resume_settings_check():
    check_resume_settings({"lr": 5e-4, "tau": 1}, {"lr": 5e-4, "tau": 1, "other": 3}, ["lr", "tau"], where=None)
    with pytest.raises(LamoError, match="tau=1"):
        check_resume_settings({"lr": 5e-4, "tau": 1}, {"lr": 5e-4, "tau": 2}, ["lr", "tau"], where=None)


# ---------------------------------------------------------------- logs and guards
def test_metrics_log_nulls_nan_and_truncates_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    for step in range(1, 6):
        log.write({"step": step, "loss": float(step), "drift": math.nan})
    assert [r["drift"] for r in read_metrics(path)] == [None] * 5
    MetricsLog(path, resume_step=3)
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    MetricsLog(path)  # a fresh run starts an empty log
    assert read_metrics(path) == []


def test_loss_plot_is_a_png(tmp_path):
    records = [{"step": s, "loss": 1.0 / s, "drift": None if s % 2 else 0.5} for s in range(1, 50)]
    out = plot_loss_curve(records, tmp_path / "loss.png", keys=["loss", "drift", "absent"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_loss_curve(records, tmp_path / "none.png", keys=["absent"]) is None


def test_nan_guard_names_step_and_checkpoint(tmp_path):
    ensure_finite(1.0, 3, None)
    with pytest.raises(LamoError) as info:
        ensure_finite(float("nan"), 7, tmp_path / "checkpoints" / "step-000005")
    msg = str(info.value)
    assert "loss became nan at step 7" in msg and "step-000005" in msg and "\n" not in msg
    with pytest.raises(LamoError, match="none"):
        ensure_finite(float("inf"), 1, None)


def test_phase_timer_times_every_cpu_step_and_samples_cuda_steps(monkeypatch):
    """On the CPU every step is timed; on CUDA (its synchronisation stubbed here) the first 5 steps
    and then every `every`-th, and an untimed step neither synchronises nor reports phases."""
    syncs = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: syncs.append(1))
    cpu = PhaseTimer("cpu", every=10)
    assert all(cpu.start_step(step) for step in range(30))
    timer = PhaseTimer("cpu", every=10)
    timer.cuda = True  # as PhaseTimer("cuda") on a GPU machine
    timed = []
    for step in range(25):
        if timer.start_step(step):
            timed.append(step)
        with timer.phase("data"):
            pass
        with timer.phase("forward"):
            pass
        phases = timer.pop()
        assert set(phases) == ({"data", "forward"} if step in timed else set())
    assert timed == [0, 1, 2, 3, 4, 10, 20]
    assert len(syncs) == 2 * 2 * len(timed)  # before and after each phase of a timed step only


def test_step_progress_redraws_rarely_into_a_log_file(monkeypatch):
    import io
    import sys

    from lamo_cli.training import step_progress

    assert step_progress(10, 0, False, "off") is None
    log = io.StringIO()  # not a terminal
    monkeypatch.setattr(sys, "stderr", log)
    bar = step_progress(10, 0, True, "steps")
    assert bar.mininterval == 30.0
    for step in range(10):
        bar.set_postfix(loss=f"{1 / (step + 1):.3f}")  # as the stages do: must not force a redraw
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and 2 <= len(lines) <= 3  # start, end (and at most one redraw), one line each
    assert all(line.startswith("steps:") for line in lines)
    assert lines[0].startswith("steps:   0%") and "10/10" in lines[-1]
    assert "loss=0.100" in lines[-1]  # the last postfix is in the final line
