"""`finetune` on the tiny-random backbone: the objective's terms, LoRA / full outputs that diffusers
loads, exact resume, NaN guard, wrong-backbone refusal, and a 2-process torchrun run."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from lamo_cli.backbones import load_backbone
from lamo_cli.backbones.cogvideox import tiny_random_components
from lamo_cli.cli import app
from lamo_cli.errors import LamoError
from lamo_cli.stages import finetune as finetune_module
from lamo_cli.stages.finetune import add_noise, finetune, load_run_into, transformer_signature
from lamo_cli.training import latest_checkpoint, list_checkpoints, read_metrics

runner = CliRunner()
LORA = dict(lora_rank=4, lora_alpha=2.0)  # scale alpha/rank = 0.5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A real cache from `encode`: 4 clips, tiny-random latents [5, 16, 8, 8], text [64, 32]."""
    from conftest import write_clips

    from lamo_cli.stages.encode import encode

    root = tmp_path_factory.mktemp("finetune")
    encode(write_clips(root, n=4, frames=17, size=64), backbone="tiny-random", out=root / "cache", progress=False)
    return root / "cache"


def _train(cache, out, **overrides):
    settings = dict(steps=3, lr=1e-3, warmup=1, batch_size=2, save_every=3, progress=False, **LORA)
    settings.update(overrides)
    return finetune(cache, out=out, **settings)


def _probe_inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(1, 5, 16, 8, 8, generator=gen),
        encoder_hidden_states=torch.randn(1, 64, 32, generator=gen),
        timestep=torch.tensor([400]),
        return_dict=False,
    )


def _one_line_error(result, *needles: str) -> str:
    """Exit 2, no traceback, exactly one `error:` line holding every needle (loaders may print progress bars)."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[0], result.output
    return lines[0]


# ---------------------------------------------------------------- objective
def test_add_noise_matches_the_scheduler():
    backbone = load_backbone("tiny-random", device="cpu")
    scheduler = backbone.make_scheduler("ddim")
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 5, 16, 8, 8, generator=gen), torch.randn(3, 5, 16, 8, 8, generator=gen)
    t = torch.tensor([0, 500, 999])
    ours = add_noise(x0, eps, backbone.alphas_cumprod()[t])
    theirs = scheduler.add_noise(x0, eps, t)
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert torch.allclose(ours[2], eps[2], atol=1e-6)  # zero terminal SNR: pure noise at t = 999


def test_drift_weight_zero_and_default_both_run_and_log_each_term(cache, tmp_path):
    _train(cache, tmp_path / "lamo", drift_weight=0.4)
    _train(cache, tmp_path / "plain", drift_weight=0.0)
    lamo = read_metrics(tmp_path / "lamo" / "metrics.jsonl")
    plain = read_metrics(tmp_path / "plain" / "metrics.jsonl")
    assert len(lamo) == len(plain) == 3
    for record in lamo:
        assert record["drift"] > 0 and record["diffusion"] > 0
        # L = L_diff + 0.4 * w * L_drift, each term logged by name
        assert record["loss"] == pytest.approx(record["diffusion"] + 0.4 * record["drift_weight_w"] * record["drift"], rel=1e-5)
        assert {"time_data", "time_forward", "time_backward", "time_optimizer", "lr", "grad_norm"} <= set(record)
    for record in plain:
        assert record["drift"] is None and record["loss"] == pytest.approx(record["diffusion"])  # drift never computed
    # same seed, same data and noise: the first step's diffusion term is the same in both runs
    assert plain[0]["diffusion"] == pytest.approx(lamo[0]["diffusion"], rel=1e-6)
    run = json.loads((tmp_path / "lamo" / "run.json").read_text())
    assert run["status"] == "finished" and run["effective_batch_size"] == 2 and run["world_size"] == 1
    assert run["backbone"]["name"] == "tiny-random" and run["settings"]["drift_weight"] == 0.4
    assert "torch" in run["library_versions"] and (tmp_path / "lamo" / "loss.png").is_file()
    # peak memory on a CPU: this process's peak resident set, which the test process reads too (kB on Linux)
    import resource

    peak = run["results"]["peak_memory"]
    assert peak["what"] == "process resident set"
    assert 0.05 < peak["gb"] <= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20 + 1e-9


# ---------------------------------------------------------------- outputs
def test_lora_file_loads_in_diffusers_changes_output_and_records_scale(cache, tmp_path):
    from diffusers import CogVideoXPipeline

    out = tmp_path / "run"
    _train(cache, out, lr=1e-2)
    assert json.loads((out / "lora.json").read_text())["scale"] == 0.5

    pipe = CogVideoXPipeline(**tiny_random_components())
    probe = _probe_inputs()
    with torch.no_grad():
        before = pipe.transformer(**probe)[0]
    pipe.load_lora_weights(out)
    with torch.no_grad():
        after = pipe.transformer(**probe)[0]
    assert (after - before).abs().max() > 1e-4
    scalings = {v for m in pipe.transformer.modules() if hasattr(m, "scaling") and isinstance(m.scaling, dict) for v in m.scaling.values()}
    assert scalings == {0.5}  # alpha / rank from the file's metadata

    # the saved LoRA holds the weights of the final checkpoint
    from safetensors.torch import load_file

    final = load_file(str(latest_checkpoint(out) / "weights.safetensors"))
    saved = load_file(str(out / "pytorch_lora_weights.safetensors"))
    assert len(saved) == len(final) == 2 * 4 * 2  # A and B, 4 targets, 2 layers
    for key, value in final.items():
        match = "transformer." + key.replace(".default", "")
        assert torch.equal(saved[match], value), key

    # load_run_into: same output as diffusers at the trained scale; scale 0 is the base model
    backbone = load_backbone("tiny-random", device="cpu")
    applied = load_run_into(backbone, out)
    assert applied["kind"] == "lora" and applied["scale"] == 0.5 and applied["adapter_weight"] == 1.0
    with torch.no_grad():
        assert torch.allclose(backbone.transformer(**probe)[0], after, atol=1e-6)
    load_run_into(backbone, out, scale=0.0)
    with torch.no_grad():
        assert torch.allclose(backbone.transformer(**probe)[0], before, atol=1e-6)
    # scale is the multiplier of B @ A: check one LoRA layer by hand at the trained and a doubled scale
    layer = next(m for m in backbone.transformer.modules() if hasattr(m, "lora_A") and "lamo" in m.lora_A)
    x = torch.randn(3, layer.in_features)
    a, b = layer.lora_A["lamo"].weight, layer.lora_B["lamo"].weight
    for scale in (0.5, 1.0):
        load_run_into(backbone, out, scale=scale)
        layer = next(m for m in backbone.transformer.modules() if hasattr(m, "lora_A") and "lamo" in m.lora_A)
        with torch.no_grad():
            delta = layer(x) - layer.base_layer(x)
            assert torch.allclose(delta, scale * (x @ a.T @ b.T), atol=1e-6)


def test_full_finetune_saves_a_loadable_transformer(cache, tmp_path):
    from diffusers import CogVideoXTransformer3DModel

    out = tmp_path / "full"
    summary = _train(cache, out, full=True, steps=2, save_every=2, lr=1e-3)
    assert summary.kind == "full" and (out / "transformer" / "config.json").is_file()
    assert not (out / "pytorch_lora_weights.safetensors").exists()
    loaded = CogVideoXTransformer3DModel.from_pretrained(out / "transformer")
    base = tiny_random_components()["transformer"]
    changed = [k for k, v in base.state_dict().items() if not torch.equal(v, loaded.state_dict()[k])]
    assert changed and transformer_signature(loaded) == transformer_signature(base)
    backbone = load_backbone("tiny-random", device="cpu")
    assert load_run_into(backbone, out)["kind"] == "full"
    for key, value in loaded.state_dict().items():
        assert torch.equal(backbone.transformer.state_dict()[key], value), key
    with pytest.raises(LamoError, match="LoRA runs only"):
        load_run_into(backbone, out, scale=0.5)


def test_a_lora_checkpoint_applies_its_own_weights_even_before_the_run_ends(cache, tmp_path):
    """RUN/checkpoints/step-N is a valid `load_run_into` source: the last one gives the finished
    run's output, an earlier one its own B @ A (checked by hand on one layer), and an unfinished
    run folder is refused with a pointer to its checkpoints."""
    from safetensors.torch import load_file

    out = tmp_path / "run"
    _train(cache, out, lr=1e-2, save_every=1, keep_checkpoints=10)
    probe = _probe_inputs()
    backbone = load_backbone("tiny-random", device="cpu")
    load_run_into(backbone, out)
    with torch.no_grad():
        finished = backbone.transformer(**probe)[0]
    last = load_run_into(backbone, out / "checkpoints" / "step-000003")
    assert last["kind"] == "lora" and last["step"] == 3 and last["weights"] == "raw" and last["scale"] == 0.5
    assert last["run"] == str(out) and last["checkpoint"] == str(out / "checkpoints" / "step-000003")
    with torch.no_grad():
        torch.testing.assert_close(backbone.transformer(**probe)[0], finished, atol=1e-6, rtol=0)
    first = load_run_into(backbone, out / "checkpoints" / "step-000001", scale=1.0)
    assert first["step"] == 1 and first["adapter_weight"] == 2.0
    with torch.no_grad():
        assert (backbone.transformer(**probe)[0] - finished).abs().max() > 1e-5
    raw = load_file(str(out / "checkpoints" / "step-000001" / "weights.safetensors"))
    name = next(k for k in raw if k.endswith("lora_A.default.weight"))
    module_name = name.removesuffix(".lora_A.default.weight")
    layer = dict(backbone.transformer.named_modules())[module_name]
    x = torch.randn(3, layer.in_features)
    a, b = raw[name], raw[module_name + ".lora_B.default.weight"]
    with torch.no_grad():
        torch.testing.assert_close(layer(x) - layer.base_layer(x), 1.0 * (x @ a.T @ b.T), atol=1e-6, rtol=0)
    run = json.loads((out / "run.json").read_text())
    (out / "run.json").write_text(json.dumps({**run, "status": "running"}))
    with pytest.raises(LamoError, match="checkpoints/step-N"):
        load_run_into(backbone, out)
    assert load_run_into(backbone, out / "checkpoints" / "step-000002")["step"] == 2  # still fine mid-run


# ---------------------------------------------------------------- resume
def test_resume_gives_the_same_losses_and_weights(cache, tmp_path):
    settings = dict(steps=6, save_every=3, grad_accum=2, batch_size=1, caption_dropout=0.3, lr=5e-3)
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    _train(cache, straight, **settings)
    _train(cache, interrupted, **settings)
    # as if killed after step 3: only the step-3 checkpoint survives
    shutil.rmtree(interrupted / "checkpoints" / "step-000006")
    (interrupted / "pytorch_lora_weights.safetensors").unlink()
    with pytest.raises(LamoError, match="--resume"):
        _train(cache, interrupted, **settings)  # refuses to start over on top of checkpoints
    summary = _train(cache, interrupted, resume=True, **settings)
    assert summary.start_step == 3
    a, b = read_metrics(straight / "metrics.jsonl"), read_metrics(interrupted / "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(1, 7))
    for ra, rb in zip(a, b):
        for key in ("loss", "diffusion", "drift", "lr", "samples_seen"):
            assert rb[key] == pytest.approx(ra[key], abs=1e-6), (ra["step"], key)
    from safetensors.torch import load_file

    wa = load_file(str(straight / "pytorch_lora_weights.safetensors"))
    wb = load_file(str(interrupted / "pytorch_lora_weights.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(LamoError, match="drift_weight"):
        _train(cache, interrupted, resume=True, **{**settings, "drift_weight": 0.1})


def test_8bit_adamw_keeps_8bit_moments_in_its_checkpoints_and_resumes_exactly(cache, tmp_path):
    """--optimizer adamw8bit (bitsandbytes): the moments of the large weights are uint8 in the
    checkpoint, a resumed run gives the straight run's losses and weights, a changed optimizer is
    refused on --resume, and the dry run counts 2 bytes of moments a weight."""
    from safetensors.torch import load_file

    settings = dict(full=True, steps=4, save_every=2, lr=1e-3, warmup=1, optimizer_kind="adamw8bit")
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    _train(cache, straight, **settings)
    state = load_file(str(straight / "checkpoints" / "step-000004" / "optimizer.safetensors"))
    eight_bit = [k for k, v in state.items() if v.dtype == torch.uint8]
    assert eight_bit and all("__bnb_optimizer_quant_state__/state" in k for k in eight_bit)
    _train(cache, interrupted, **settings)
    shutil.rmtree(interrupted / "checkpoints" / "step-000004")
    shutil.rmtree(interrupted / "transformer")
    _train(cache, interrupted, resume=True, **settings)
    a, b = read_metrics(straight / "metrics.jsonl"), read_metrics(interrupted / "metrics.jsonl")
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    wa = load_file(str(straight / "transformer" / "diffusion_pytorch_model.safetensors"))
    wb = load_file(str(interrupted / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    with pytest.raises(LamoError, match="optimizer_kind"):
        _train(cache, interrupted, resume=True, **{**settings, "optimizer_kind": "adamw", "steps": 6})
    plan = _train(cache, tmp_path / "plan", dry_run=True, **settings)
    assert plan.state_bytes == plan.run["trainable_parameters"] * (4 + 4 + 2)


def test_8bit_adamw_without_bitsandbytes_is_one_line(cache, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    result = runner.invoke(app, ["finetune", str(cache), "--out", str(tmp_path / "run"), "--optimizer", "adamw8bit", "--no-progress"])
    _one_line_error(result, "--optimizer adamw8bit needs bitsandbytes", "pip install")
    _one_line_error(runner.invoke(app, ["finetune", str(cache), "--out", str(tmp_path / "run"), "--optimizer", "sgd"]), "--optimizer 'sgd'")
    assert not (tmp_path / "run").exists()


def test_ema_and_cosine_schedule_resume_exactly_and_the_average_is_what_is_saved(cache, tmp_path):
    """With --ema-decay the saved transformer is the moving average, which an independent float64
    recomputation from the raw weights of every step reproduces; a resumed run saves the same bytes."""
    from diffusers import CogVideoXTransformer3DModel
    from safetensors.torch import load_file

    decay = 0.6
    settings = dict(full=True, steps=4, save_every=1, lr=2e-3, warmup=1, lr_schedule="cosine", ema_decay=decay, keep_checkpoints=10)
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    summary = _train(cache, straight, **settings)
    lrs = [r["lr"] for r in read_metrics(straight / "metrics.jsonl")]
    assert lrs[1] == pytest.approx(2e-3) and lrs[3] < lrs[2] < lrs[1]  # warm-up 1, then cosine down
    # the moving average by hand: diffusers' warm-up decay min(decay, 1 - (1 + k)^-3/4), k = step - 1
    raw = [load_file(str(c / "weights.safetensors")) for c in list_checkpoints(straight)]
    shadow = {k: v.double() for k, v in tiny_random_components()["transformer"].state_dict().items() if k in raw[0]}
    for step, weights in enumerate(raw, start=1):
        k = step - 1
        d = 0.0 if k <= 0 else min(decay, 1 - (1 + k) ** -0.75)
        shadow = {name: d * shadow[name] + (1 - d) * weights[name].double() for name in shadow}
        if step == 2:
            shadow_at_2 = shadow
    saved = CogVideoXTransformer3DModel.from_pretrained(straight / "transformer").state_dict()
    for name, expected in shadow.items():
        assert torch.allclose(saved[name].double(), expected, atol=1e-6), name
    # a checkpoint applies its moving average: the last one is the saved transformer, step 2 its own
    backbone = load_backbone("tiny-random", device="cpu")
    applied = load_run_into(backbone, straight / "checkpoints" / "step-000004")
    assert applied["kind"] == "full" and applied["weights"] == "moving average" and applied["step"] == 4
    assert all(torch.equal(backbone.transformer.state_dict()[k], v) for k, v in saved.items())
    load_run_into(backbone, straight / "checkpoints" / "step-000002")
    for name, expected in shadow_at_2.items():
        assert torch.allclose(backbone.transformer.state_dict()[name].double(), expected, atol=1e-6), name
    assert any(not torch.equal(saved[n], raw[-1][n]) for n in shadow)  # not simply the last raw weights
    _train(cache, interrupted, **settings)
    for late in ("step-000003", "step-000004"):
        shutil.rmtree(interrupted / "checkpoints" / late)
    shutil.rmtree(interrupted / "transformer")
    _train(cache, interrupted, resume=True, **settings)
    resumed = CogVideoXTransformer3DModel.from_pretrained(interrupted / "transformer").state_dict()
    assert all(torch.equal(resumed[k], saved[k]) for k in saved) and summary.steps == 4
    with pytest.raises(LamoError, match="--ema-decay"):
        _train(cache, tmp_path / "bad", ema_decay=1.0)


def test_logit_normal_timesteps_reach_the_loss_and_are_kept_on_resume(cache, tmp_path, monkeypatch):
    """The loop trains at the timesteps the chosen density draws, and --resume refuses another density."""
    seen = []
    real = finetune_module.sample_timesteps

    def spy(kind, count, n, generator, logit_mean, logit_std):
        t = real(kind, count, n, generator, logit_mean, logit_std)
        seen.append((kind, logit_mean, logit_std, t.clone()))
        return t

    monkeypatch.setattr(finetune_module, "sample_timesteps", spy)
    run = tmp_path / "ln"
    _train(cache, run, steps=2, save_every=1, timestep_sampling="logit-normal", logit_mean=-1.0, logit_std=0.5)
    assert [s[:3] for s in seen] == [("logit-normal", -1.0, 0.5)] * 2
    assert all(((t >= 0) & (t < 1000)).all() for *_, t in seen)
    settings = json.loads((run / "run.json").read_text())["settings"]
    assert settings["timestep_sampling"] == "logit-normal" and settings["logit_mean"] == -1.0
    with pytest.raises(LamoError, match="timestep_sampling"):
        _train(cache, run, steps=3, save_every=1, resume=True, timestep_sampling="uniform", logit_mean=-1.0, logit_std=0.5)
    for bad, match in ((dict(timestep_sampling="cosine"), "--timestep-sampling"), (dict(logit_std=0.0), "--logit-std"),
                       (dict(logit_mean=float("nan")), "--logit-mean")):
        with pytest.raises(LamoError, match=match):
            _train(cache, tmp_path / "bad", **bad)


def test_moving_weight_reaches_the_diffusion_term_and_is_kept_on_resume(cache, tmp_path, monkeypatch):
    """--moving-weight hands the loss `moving_cell_weights` of the batch's clean latents (none when 0),
    is recorded, and --resume refuses another value."""
    from lamo_cli.motion.drift import moving_cell_weights

    seen = []
    real = finetune_module.lamo_objective

    def spy(x0_hat, x0, *args, cell_weight=None, **kwargs):
        seen.append((x0.detach().clone(), None if cell_weight is None else cell_weight.clone()))
        return real(x0_hat, x0, *args, cell_weight=cell_weight, **kwargs)

    monkeypatch.setattr(finetune_module, "lamo_objective", spy)
    _train(cache, tmp_path / "plain", steps=1, save_every=1)
    assert seen and seen[-1][1] is None
    run = tmp_path / "moving"
    _train(cache, run, steps=2, save_every=1, moving_weight=4.0, moving_threshold=0.5)
    x0, weights = seen[-1]
    assert torch.allclose(weights, moving_cell_weights(x0, 4.0, 0.5))
    settings = json.loads((run / "run.json").read_text())["settings"]
    assert (settings["moving_weight"], settings["moving_threshold"]) == (4.0, 0.5)
    with pytest.raises(LamoError, match="moving_weight"):
        _train(cache, run, steps=3, save_every=1, resume=True, moving_weight=2.0, moving_threshold=0.5)
    for bad, match in ((dict(moving_weight=-1.0), "--moving-weight"), (dict(moving_threshold=0.0), "--moving-threshold")):
        with pytest.raises(LamoError, match=match):
            _train(cache, tmp_path / "bad", **bad)


# ---------------------------------------------------------------- failures through the CLI
def test_nan_loss_stops_with_one_line_and_keeps_the_last_checkpoint(cache, tmp_path, monkeypatch):
    real = finetune_module.lamo_objective
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        loss, terms = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:  # the 4th step
            return loss * float("nan"), {**terms, "loss": float("nan")}
        return loss, terms

    monkeypatch.setattr(finetune_module, "lamo_objective", poisoned)
    out = tmp_path / "run"
    result = runner.invoke(app, ["finetune", str(cache), "--out", str(out), "--steps", "6", "--save-every", "3",
                                 "--lora-rank", "4", "--lora-alpha", "2", "--warmup", "1", "--no-progress"])
    line = _one_line_error(result, "loss became nan at step 4", "last good checkpoint")
    assert str(out / "checkpoints" / "step-000003") in line
    assert [p.name for p in list_checkpoints(out)] == ["step-000003"]
    assert not (out / "pytorch_lora_weights.safetensors").exists()


def test_cache_from_another_backbone_is_refused(cache, tmp_path):
    other = load_backbone("tiny-random", device="cpu")
    with torch.no_grad():
        next(other.vae.parameters()).add_(0.5)  # another VAE = another latent space
    folder = other.save(tmp_path / "other-backbone")
    result = runner.invoke(app, ["finetune", str(cache), "--backbone", str(folder), "--out", str(tmp_path / "run"), "--steps", "1", "--no-progress"])
    _one_line_error(result, "fingerprint", "tiny-random")
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("option, fragment", [
    (["--steps", "0"], "--steps 0: must be at least 1"),
    (["--lr", "0"], "--lr 0.0: must be positive"),
    (["--lr", "inf"], "--lr inf: must be positive"),
    (["--tau", "0"], "--tau 0: must be a positive frame lag"),
    (["--drift-weight", "-1"], "--drift-weight -1.0: must be >= 0"),
    (["--caption-dropout", "1.5"], "--caption-dropout 1.5: must be a probability"),
    (["--lr-schedule", "linear"], "--lr-schedule 'linear': use 'constant' or 'cosine'"),
    (["--timestep-sampling", "cubic"], "--timestep-sampling 'cubic': use uniform or logit-normal"),
    (["--mixed-precision", "fp8"], "--mixed-precision 'fp8': use auto, no, bf16, fp16"),
])
def test_bad_training_options_are_one_line_before_any_work(cache, tmp_path, option, fragment):
    result = CliRunner().invoke(app, ["finetune", str(cache), "--out", str(tmp_path / "run"), *option, "--no-progress"])
    assert result.exit_code != 0
    assert fragment in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def test_dry_run_says_what_would_be_trained_and_writes_nothing(cache, tmp_path):
    from lamo_cli.data.cache import LatentCache
    from lamo_cli.training import EpochStream

    out = tmp_path / "run"
    plan = _train(cache, out, steps=6, save_every=4, dry_run=True)
    assert not out.exists()
    assert plan.start_step == 0 and plan.epochs == pytest.approx(6 * 2 / 4)  # 6 steps of 2 clips over 4 clips
    assert plan.checkpoints == 2  # steps 4 and 6
    # LoRA rank 4 on to_q/k/v/out of every layer, all of them width x width: r * (in + out) each
    base = tiny_random_components()["transformer"]
    width = base.config.num_attention_heads * base.config.attention_head_dim
    assert plan.run["trainable_parameters"] == base.config.num_layers * 4 * 4 * (width + width)
    assert plan.state_bytes == plan.run["trainable_parameters"] * 4 * 4  # weight, gradient, two AdamW moments
    assert plan.frozen_bytes == sum(p.numel() * 4 for p in base.parameters())
    indices = EpochStream(4, 42).rank_batch(0, 2)  # the run's seed and data order
    lat = LatentCache(cache)
    assert plan.first_batch == [(lat.record(i).source_path, lat.caption(i)) for i in indices]
    assert 400 < plan.timestep_quantiles["50%"] < 600 and plan.timestep_quantiles["10%"] < 150  # uniform over 0..999
    # with --resume it starts from the checkpoint and checks its settings, as a run would
    _train(cache, out, steps=3)
    plan = _train(cache, out, steps=6, save_every=4, resume=True, dry_run=True)
    assert plan.start_step == 3 and plan.checkpoints == 2 and plan.epochs == pytest.approx(3 * 2 / 4)
    assert sorted(p.name for p in out.iterdir()) == sorted(["checkpoints", "loss.png", "metrics.jsonl", "pytorch_lora_weights.safetensors",
                                                             "lora.json", "run.json"])
    with pytest.raises(LamoError, match="drift_weight"):
        _train(cache, out, steps=6, resume=True, dry_run=True, drift_weight=0.1)
    result = runner.invoke(app, ["finetune", str(cache), "--out", str(tmp_path / "cli"), "--steps", "6", "--batch-size", "2",
                                 "--lora-rank", "4", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "nothing trained or written" in result.output and "3.00 epochs" in result.output
    assert "first batch" in result.output and not (tmp_path / "cli").exists()


def test_validation_prompts_sample_the_saved_weights_and_leave_training_alone(cache, tmp_path):
    """--val-prompts: videos at step 0 and every --val-every steps, each the one `sample` draws from
    that step's weights with seed 42 + prompt index; the training losses are those of a run without."""
    from lamo_cli.sampling import sample
    from lamo_cli.stages.evaluate import evaluate
    from safetensors.torch import load_file

    prompts = tmp_path / "val.txt"
    prompts.write_text("a ball falls\n# a comment\na red ball rolls\na red ball drops from the upper left and bounces\n")
    settings = dict(steps=2, save_every=1, lr=1e-2, keep_checkpoints=10)
    with_videos = tmp_path / "with"
    summary = _train(cache, with_videos, val_prompts=prompts, val_sample_steps=2, **settings)
    _train(cache, tmp_path / "without", **settings)
    a, b = read_metrics(with_videos / "metrics.jsonl"), read_metrics(tmp_path / "without" / "metrics.jsonl")
    assert [r["loss"] for r in a if "loss" in r] == [r["loss"] for r in b]
    assert [r["step"] for r in a if "val_videos" in r] == [0, 1, 2]
    assert summary.outputs["validation_videos"] == str(with_videos / "validation")
    for step in (0, 1, 2):
        folder = with_videos / "validation" / f"step-{step:06d}"
        assert sorted(p.name for p in folder.glob("*.mp4")) == ["000-a-ball-falls.mp4", "001-a-red-ball-rolls.mp4",
                                                                "002-a-red-ball-drops-from-the-upper-left-and.mp4"]
        record = json.loads((folder / "001-a-red-ball-rolls.json").read_text())
        assert record == {**record, "prompt": "a red ball rolls", "seed": 43, "step": step, "weights": "raw"}
        # the one physics-world caption is scored, as `lamo eval` scores the folder
        logged = next(r for r in a if r["step"] == step and "val_videos" in r)
        overall = evaluate([folder], out=None, progress=False).overall
        assert logged["val_scored"] == overall["n"] == 1
        assert (logged["val_SA"], logged["val_PC"], logged["val_dynamic"]) == (overall["SA"], overall["PC"], overall["dynamic"])
    # independent: the base model (step 0) and the finished run (step 2) sampled here
    backbone = load_backbone("tiny-random", device="cpu")
    for step, apply in ((0, False), (2, True)):
        if apply:
            load_run_into(backbone, with_videos)
        expected, _ = sample(backbone, backbone.encode_text(["a red ball rolls"]), backbone.encode_text([""]), num_steps=2, seed=43)
        latent = load_file(str(with_videos / "validation" / f"step-{step:06d}" / "001-a-red-ball-rolls.latent.safetensors"))["latent"]
        torch.testing.assert_close(latent, expected[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("content, fragment", [("", "no prompts"), ('{"text": 1}\n', "prompt")])
def test_bad_validation_prompts_are_one_line_before_any_work(cache, tmp_path, content, fragment):
    bad = tmp_path / ("val.jsonl" if content.startswith("{") else "val.txt")
    bad.write_text(content)
    result = runner.invoke(app, ["finetune", str(cache), "--out", str(tmp_path / "run"), "--val-prompts", str(bad), "--no-progress"])
    _one_line_error(result, "--val-prompts", fragment)
    assert not (tmp_path / "run").exists()
    _one_line_error(runner.invoke(app, ["finetune", str(cache), "--out", str(tmp_path / "run"), "--val-prompts",
                                        str(tmp_path / "absent.txt"), "--no-progress"]), "--val-prompts", "no such file")


def test_run_folder_errors_are_one_line(cache, tmp_path):
    backbone = load_backbone("tiny-random", device="cpu")
    with pytest.raises(LamoError, match="no such folder"):
        load_run_into(backbone, tmp_path / "absent")
    out = tmp_path / "run"
    _train(cache, out, steps=1, save_every=1)
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "pytorch_lora_weights.safetensors").write_bytes(b"\x07\x00\x00\x00\x00\x00\x00\x00garbage" + b"\x00" * 32)
    with pytest.raises(LamoError) as info:
        load_run_into(backbone, broken)
    assert "pytorch_lora_weights.safetensors" in str(info.value) and "\n" not in str(info.value)
    record = json.loads((out / "run.json").read_text())
    record["backbone"]["latent_fingerprint"] = "0123456789abcdef"
    (out / "run.json").write_text(json.dumps(record))
    with pytest.raises(LamoError, match="fingerprint"):
        load_run_into(backbone, out)


def test_cli_full_excludes_lora_rank_and_recipe_keys_apply(cache, tmp_path):
    _one_line_error(runner.invoke(app, ["finetune", str(cache), "--full", "--lora-rank", "8", "--out", str(tmp_path / "x")]), "--full")
    recipe = tmp_path / "r.toml"
    recipe.write_text("[finetune]\nsteps = 2\ndrift_weight = 0.0\nlora_rank = 4\nlora_alpha = 4.0\nwarmup = 0\nsave_every = 2\n")
    result = runner.invoke(app, ["finetune", str(cache), "--out", str(tmp_path / "run"), "--recipe", str(recipe), "--steps", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    settings = json.loads((tmp_path / "run" / "run.json").read_text())["settings"]
    assert settings["steps"] == 1 and settings["drift_weight"] == 0.0 and settings["lora_rank"] == 4  # CLI beats recipe
    assert "wrote lora" in result.output and "peak memory" in result.output and "process resident set" in result.output


def test_cli_resume_at_the_last_step_rewrites_the_weights_and_says_so(cache, tmp_path):
    args = ["finetune", str(cache), "--out", str(tmp_path / "run"), "--steps", "2", "--save-every", "2", "--lora-rank", "4",
            "--lora-alpha", "2", "--warmup", "1", "--no-progress"]
    assert runner.invoke(app, args).exit_code == 0
    (tmp_path / "run" / "pytorch_lora_weights.safetensors").unlink()
    result = runner.invoke(app, args + ["--resume"])
    assert result.exit_code == 0, result.output
    assert "no steps left to train" in result.output and "nan" not in result.output
    assert (tmp_path / "run" / "pytorch_lora_weights.safetensors").is_file()


def test_max_minutes_stops_with_weights_and_checkpoint_and_resume_matches_a_straight_run(cache, tmp_path):
    """--max-minutes: the run stops at the first step past the limit, writes a checkpoint and its
    final weights there, says so in run.json and the CLI; --resume then ends exactly where an
    uninterrupted run ends."""
    settings = dict(steps=4, save_every=10, lr=5e-3)
    straight = tmp_path / "straight"
    _train(cache, straight, **settings)
    args = ["finetune", str(cache), "--out", str(tmp_path / "run"), "--steps", "4", "--save-every", "10", "--lora-rank", "4",
            "--lora-alpha", "2", "--warmup", "1", "--lr", "5e-3", "--batch-size", "2", "--no-progress"]
    result = runner.invoke(app, args + ["--max-minutes", "1e-9"])  # past the limit after the first step
    assert result.exit_code == 0, result.output
    assert "stopped at step 1 by --max-minutes" in result.output
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "finished" and run["results"]["stopped_at_step"] == 1
    assert [c.name for c in list_checkpoints(tmp_path / "run")] == ["step-000001"]
    assert (tmp_path / "run" / "pytorch_lora_weights.safetensors").is_file()
    resumed = runner.invoke(app, args + ["--resume"])
    assert resumed.exit_code == 0, resumed.output
    a, b = read_metrics(straight / "metrics.jsonl"), read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], abs=1e-6)
    bad = runner.invoke(app, args + ["--max-minutes", "-1"])
    _one_line_error(bad, "--max-minutes -1")


def test_bf16_is_honoured_on_the_cpu_and_fp16_is_not(cache, tmp_path):
    cpu = torch.device("cpu")
    assert finetune_module.resolve_mixed_precision("auto", cpu) == ("no", None)
    assert finetune_module.resolve_mixed_precision("bf16", cpu) == ("bf16", None)
    mode, note = finetune_module.resolve_mixed_precision("fp16", cpu)
    assert mode == "no" and "fp16 ignored on CPU" in note
    summary = _train(cache, tmp_path / "bf16", steps=2, save_every=2, mixed_precision="bf16")
    assert summary.mixed_precision == "bf16" and torch.isfinite(torch.tensor(summary.final_loss))
    settings = json.loads((tmp_path / "bf16" / "run.json").read_text())["settings"]
    assert settings["mixed_precision_used"] == "bf16"
    _train(cache, tmp_path / "fp32", steps=2, save_every=2, mixed_precision="no")
    first = [read_metrics(tmp_path / run / "metrics.jsonl")[0]["loss"] for run in ("bf16", "fp32")]
    assert first[0] != first[1] and first[0] == pytest.approx(first[1], rel=0.05)  # same batch, bf16 matmuls

# ---------------------------------------------------------------- two processes
def test_two_process_torchrun_finetune(cache, tmp_path):
    """Two processes train one run (rank 0 writes), and share the held-out loss's pairs and the
    validation prompts."""
    out = tmp_path / "ddp"
    prompts = tmp_path / "val.txt"
    prompts.write_text("one\ntwo\nthree\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with socket.socket() as probe:  # a free port, so a parallel torchrun elsewhere cannot collide
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port,
           "-m", "lamo_cli.cli", "finetune", str(cache), "--out", str(out), "--steps", "3", "--save-every", "2",
           "--lora-rank", "4", "--lora-alpha", "2", "--warmup", "1", "--batch-size", "1", "--no-progress",
           "--val-cache", str(cache), "--val-clips", "3", "--val-timesteps", "100,600", "--val-every", "3",
           "--val-prompts", str(prompts), "--val-sample-steps", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("wrote lora:") == 1, done.stdout  # rank 0 alone reports and writes
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2 and run["effective_batch_size"] == 2 and run["status"] == "finished"
    assert (out / "pytorch_lora_weights.safetensors").is_file()
    assert sorted(p.name for p in (out / "checkpoints" / "step-000003").glob("rng-rank*")) == ["rng-rank0.safetensors", "rng-rank1.safetensors"]
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2, 3] and records[-1]["samples_seen"] == 6
    # the held-out loss, its pairs split over the two ranks and summed: at step 0 (a LoRA starts as a
    # no-op) it is the base model's, computed here in one process
    backbone, held = _held_out(cache)
    expected = _heldout_by_hand(backbone.transformer, held, backbone.alphas_cumprod())
    assert records[0]["val_loss_by_t"]["600"] == pytest.approx(expected[600], rel=1e-4)
    assert "val_loss" in records[3] and "val_loss" not in records[2]
    for step in ("step-000000", "step-000003"):  # prompts 0 and 2 on rank 0, prompt 1 on rank 1: all three
        assert sorted(p.name for p in (out / "validation" / step).glob("*.mp4")) == ["000-one.mp4", "001-two.mp4", "002-three.mp4"]


# ---------------------------------------------------------------- held-out loss
def _held_out(cache, timesteps=(100, 600), seed=0):
    backbone = load_backbone("tiny-random", device="cpu")
    held = finetune_module.load_heldout_set(cache, 3, timesteps, backbone.latent_fingerprint(), backbone.scaling_factor, "tiny-random", seed=seed)
    return backbone, held


def _heldout_by_hand(transformer, held, alphas):
    """Per-timestep mean of mean((x0_hat - x0)^2) / (1 - abar), in float64, one clip at a time."""
    out = {}
    for t in held.timesteps:
        losses = []
        for i in range(len(held.x0)):
            x0 = held.x0[i:i + 1].double()
            abar = float(alphas[t])
            x_t = abar ** 0.5 * x0 + (1 - abar) ** 0.5 * held.noise(i, t)[None].double()
            with torch.no_grad():
                v = transformer(hidden_states=x_t.float(), encoder_hidden_states=held.text[i:i + 1], timestep=torch.tensor([t]),
                                return_dict=False)[0].double()
            x0_hat = abar ** 0.5 * x_t - (1 - abar) ** 0.5 * v
            losses.append(float(((x0_hat - x0) ** 2).mean() / (1 - abar)))
        out[t] = sum(losses) / len(losses)
    return out


def test_heldout_loss_is_the_training_loss_on_fixed_noise_and_splits_over_ranks(cache):
    backbone, held = _held_out(cache)
    alphas = backbone.alphas_cumprod()
    predict = lambda x, t, c: backbone.predict_v(x, t, c)  # noqa: E731
    totals = finetune_module.heldout_loss(predict, held, alphas, batch_size=4)
    assert totals[:, 1].tolist() == [3.0, 3.0]
    expected = _heldout_by_hand(backbone.transformer, held, alphas)
    for k, t in enumerate(held.timesteps):
        assert float(totals[k, 0] / totals[k, 1]) == pytest.approx(expected[t], rel=1e-4)
    # the same numbers again (fixed noise), and two ranks' shares add up to one process's
    assert torch.allclose(finetune_module.heldout_loss(predict, held, alphas, batch_size=2), totals, rtol=1e-6)
    shares = sum(finetune_module.heldout_loss(predict, held, alphas, batch_size=4, rank=r, world_size=2) for r in range(2))
    assert torch.allclose(shares, totals, rtol=1e-6)
    other = finetune_module.HeldOutSet(held.x0, held.text, held.timesteps, seed=4)
    assert not torch.allclose(finetune_module.heldout_loss(predict, other, alphas, batch_size=4), totals)


def test_val_cache_logs_step_zero_and_every_n_and_the_last_is_the_saved_weights(cache, tmp_path):
    from diffusers import CogVideoXTransformer3DModel

    run = tmp_path / "run"
    summary = _train(cache, run, full=True, steps=4, save_every=4, ema_decay=0.5, val_cache=cache, val_clips=3, val_every=2,
                     val_timesteps="600,100", seed=7)
    rows = [r for r in read_metrics(run / "metrics.jsonl") if "val_loss" in r]
    assert [r["step"] for r in rows] == [0, 2, 4]
    assert list(rows[0]["val_loss_by_t"]) == ["100", "600"]
    backbone, held = _held_out(cache)  # the same noise whatever the run's --seed
    alphas = backbone.alphas_cumprod()
    start = _heldout_by_hand(backbone.transformer, held, alphas)
    assert rows[0]["val_loss_by_t"]["100"] == pytest.approx(start[100], rel=1e-4)
    saved = CogVideoXTransformer3DModel.from_pretrained(run / "transformer")  # the moving average
    end = _heldout_by_hand(saved, held, alphas)
    assert rows[-1]["val_loss_by_t"]["600"] == pytest.approx(end[600], rel=1e-4)
    assert rows[-1]["val_loss"] == pytest.approx((end[100] + end[600]) / 2, rel=1e-4)
    assert rows[-1]["val_loss"] != rows[0]["val_loss"]
    results = json.loads((run / "run.json").read_text())["results"]["val_loss"]
    assert results["first_step"] == 0 and results["last_step"] == 4 and results["clips"] == 3
    assert summary.val_loss["last"] == pytest.approx(rows[-1]["val_loss"])
    assert (run / "loss.png").is_file()


@pytest.mark.parametrize("option, fragment", [
    (["--val-cache", "absent-cache"], "--val-cache"),
    (["--val-timesteps", "100,abc"], "--val-timesteps '100,abc'"),
    (["--val-timesteps", "1000"], "--val-timesteps '1000'"),
    (["--val-clips", "0"], "--val-clips 0: must be at least 1"),
])
def test_bad_held_out_options_are_one_line(cache, tmp_path, option, fragment):
    result = runner.invoke(app, ["finetune", str(cache), "--out", str(tmp_path / "run"), "--steps", "1", "--lora-rank", "4",
                                 *[str(tmp_path / o) if o == "absent-cache" else o for o in option], "--no-progress"])
    _one_line_error(result, fragment)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_val_cache_of_another_backbone_is_refused(cache, tmp_path):
    other = load_backbone("tiny-random", device="cpu")
    with torch.no_grad():
        next(other.vae.parameters()).add_(0.5)
    with pytest.raises(LamoError, match="fingerprint"):
        finetune_module.load_heldout_set(cache, 2, (100,), other.latent_fingerprint(), other.scaling_factor, "other")
