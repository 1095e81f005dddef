"""The physics world: simulation against closed-form physics, rendering, captions, splits, files."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lamo_cli.data import world as W


def _clip(family: str, seed: int = 0, split: str = "train", **kwargs) -> W.Clip:
    return W.simulate_clip(family, np.random.default_rng(seed), split, **kwargs)


# ==================================================================== simulation vs closed form
def test_drop_follows_free_fall_and_restitution():
    clip = _clip("drop", 3, choices={"bounciness": "bouncy"})
    x0, y0 = clip.params["bodies"][0]["pos"]
    r, e = clip.params["radii"][0], clip.params["e"]
    t_hit = math.sqrt(2 * (y0 - W.FLOOR_Y - r) / W.G)  # y0 - g t^2 / 2 = floor + r
    first = clip.events[0]
    assert first["kind"] == "floor"
    assert first["t"] == pytest.approx(t_hit, abs=1e-6)
    for frame in range(int(t_hit / W.DT) + 1):
        t = frame * W.DT
        assert clip.positions[frame, 0, 1] == pytest.approx(y0 - 0.5 * W.G * t * t, abs=1e-9)
        assert clip.positions[frame, 0, 0] == pytest.approx(x0, abs=1e-12)
    v_in = -W.G * t_hit
    assert first["v_before"][0][1] == pytest.approx(v_in, abs=1e-5)
    assert first["v_after"][0][1] == pytest.approx(-e * v_in, abs=1e-5)  # energy ratio e^2 < 1
    # never below the floor, and it comes to rest once a rebound is too small to see
    assert np.all(clip.positions[:, 0, 1] - r >= W.FLOOR_Y - 1e-9)


def test_projectile_keeps_horizontal_speed_and_parabola():
    clip = _clip("projectile", 5)
    vx = clip.params["bodies"][0]["vel"][0]
    assert np.allclose(np.abs(clip.velocities[:, 0, 0]), abs(vx), atol=1e-9)  # elastic walls, frictionless floor
    # between contacts the vertical second difference is -g dt^2 exactly
    contact_frames = [e["frame"] for e in clip.events]
    for k in range(1, clip.num_frames - 1):
        if all(abs(k - f) > 1.0 for f in contact_frames) and clip.positions[k, 0, 1] - clip.params["radii"][0] > W.FLOOR_Y + 1e-6:
            second = clip.positions[k + 1, 0, 1] - 2 * clip.positions[k, 0, 1] + clip.positions[k - 1, 0, 1]
            assert second == pytest.approx(-W.G * W.DT**2, abs=1e-9)


def test_uniform_has_constant_speed_and_stays_inside():
    clip = _clip("uniform", 2, choices={"speed": "fast"})
    speeds = np.linalg.norm(clip.velocities[:, 0], axis=1)
    assert np.allclose(speeds, speeds[0], atol=1e-9)
    r = clip.params["radii"][0]
    assert np.all(clip.positions[:, 0] >= r - 1e-9) and np.all(clip.positions[:, 0] <= 1 - r + 1e-9)
    assert any(e["kind"].startswith("wall") for e in clip.events)


@pytest.mark.parametrize("bounciness,e", [("elastic", 1.0), ("soft", 0.5)])
def test_collision_conserves_momentum_with_restitution(bounciness, e):
    clip = _clip("collide", 4, choices={"bounciness": bounciness})
    disc = [ev for ev in clip.events if ev["kind"] == "disc"]
    assert disc, "a collide clip has a disc-disc contact"
    i, j = disc[0]["objects"]
    m = [clip.params["radii"][i] ** 2, clip.params["radii"][j] ** 2]  # mass ~ r^2
    (u1, _), (u2, _) = disc[0]["v_before"]
    (v1, _), (v2, _) = disc[0]["v_after"]
    assert m[0] * v1 + m[1] * v2 == pytest.approx(m[0] * u1 + m[1] * u2, abs=1e-6)
    assert (v2 - v1) == pytest.approx(-e * (u2 - u1), abs=1e-6)


def test_ramp_accelerates_with_g_sin_theta():
    clip = _clip("ramp", 1)
    theta = math.radians(clip.params["theta_deg"])
    first_contact = clip.events[0]["frame"] if clip.events else clip.num_frames
    along = np.linalg.norm(np.diff(clip.positions[:, 0], axis=0), axis=1)  # distance per frame
    k = int(first_contact) - 2
    assert k > 2
    accel = (along[k] - along[k - 1]) / W.DT**2
    assert accel == pytest.approx(W.G * math.sin(theta), rel=1e-6)


def test_occluder_hides_the_disc_in_the_render():
    clip = _clip("occlude", 0)
    frames = W.render_clip(clip)
    colour = np.array(W.PALETTE[clip.attributes["colours"][0]])
    visible_px = (np.abs(frames.astype(int) - colour).sum(axis=-1) < 30).sum(axis=(1, 2))
    assert visible_px.min() == 0 and visible_px.max() > 10  # fully hidden at some frame, seen at others


# ==================================================================== rendering
def test_render_is_antialiased_with_exact_area():
    clip = _clip("uniform", 7)
    frames = W.render_clip(clip).astype(np.float64)
    bg = np.array(W.BACKGROUND, dtype=np.float64)
    colour = np.array(W.PALETTE[clip.attributes["colours"][0]], dtype=np.float64)
    # coverage per pixel by projecting onto the background -> colour line
    direction = colour - bg
    coverage = np.clip(((frames - bg) @ direction) / (direction @ direction), 0, 1)
    area = coverage.sum(axis=(1, 2))
    expected = math.pi * (clip.params["radii"][0] * clip.size) ** 2
    assert np.allclose(area, expected, rtol=0.01)
    partial = ((coverage > 0.05) & (coverage < 0.95)).sum(axis=(1, 2))
    assert partial.min() > 4  # soft edges, not a hard threshold


def test_render_and_simulation_are_deterministic():
    a, b = _clip("collide", 11), _clip("collide", 11)
    assert a.caption == b.caption
    assert np.array_equal(a.positions, b.positions)
    assert np.array_equal(W.render_clip(a), W.render_clip(b))
    assert not np.array_equal(a.positions, _clip("collide", 12).positions)


def test_render_size_is_configurable():
    clip = _clip("drop", 0, num_frames=17, size=32)
    frames = W.render_clip(clip)
    assert frames.shape == (17, 32, 32, 3) and frames.dtype == np.uint8


# ==================================================================== captions
def test_example_caption_is_producible_and_parses():
    clip = _clip("drop", 0, choices={"colours": ["red"], "horizontal": "left"}, mention="none")
    assert clip.caption == "a red ball drops from the upper left and bounces"
    assert W.parse_caption(clip.caption) == {"family": "drop", "colours": ["red"], "count": 1, "region": "upper left"}


@pytest.mark.parametrize("split", W.SPLITS)
def test_caption_round_trip_all_families(split):
    for index in range(24):
        family = W.FAMILIES[index % len(W.FAMILIES)]
        clip = W.simulate_clip(family, W.clip_rng(9, split, index), split)
        parsed = W.parse_caption(clip.caption)
        assert parsed == clip.caption_attributes, clip.caption
        for key, value in parsed.items():  # everything stated is true of the scene
            if key == "sizes":
                assert all(s is None or s == t for s, t in zip(value, clip.attributes["sizes"]))
            else:
                assert clip.attributes[key] == value


def test_full_captions_state_every_attribute():
    clip = _clip("projectile", 2, mention="all")
    parsed = W.parse_caption(clip.caption)
    assert set(parsed) == {"family", "colours", "count", "sizes", "region", "direction", "speed", "bounciness"}


def test_non_world_captions_do_not_parse():
    assert W.parse_caption("a cat playing the piano") is None
    assert W.parse_caption("a purple ball drops from the upper left and bounces") is None


# ==================================================================== splits
def test_ood_ranges_are_disjoint_from_train():
    for key, (lo, hi) in W.RANGES["train"].items():
        olo, ohi = W.RANGES["ood"][key]
        assert ohi < lo or olo > hi, key


def test_splits_use_their_ranges_and_colours():
    for split in ("train", "ood"):
        ranges = W.RANGES[split]
        for index in range(30):
            family = W.FAMILIES[index % len(W.FAMILIES)]
            clip = W.simulate_clip(family, W.clip_rng(1, split, index), split)
            held_out = W.OOD_COLOUR[family]
            if split == "ood":
                assert clip.attributes["colours"][0] == held_out
            else:
                assert held_out not in clip.attributes["colours"]
            prefix = "occlude_" if family == "occlude" else ""
            for size, r in zip(clip.attributes["sizes"], clip.params["radii"]):
                lo, hi = ranges[f"{prefix}radius_{size}"]
                assert lo <= r <= hi
            if family in ("drop", "projectile"):
                lo, hi = ranges[f"e_{clip.attributes['bounciness']}"]
                assert lo <= clip.params["e"] <= hi
            if family == "ramp":
                lo, hi = ranges[f"ramp_{clip.attributes['steepness']}"]
                assert lo <= clip.params["theta_deg"] <= hi


def test_clip_rng_is_per_index_and_split():
    a = W.simulate_clip("drop", W.clip_rng(0, "train", 5), "train")
    b = W.simulate_clip("drop", W.clip_rng(0, "train", 5), "train")
    c = W.simulate_clip("drop", W.clip_rng(0, "test", 5), "test")
    assert np.array_equal(a.positions, b.positions) and not np.array_equal(a.positions, c.positions)


# ==================================================================== twins
@pytest.mark.parametrize("kind", W.TWIN_KINDS)
def test_impossible_twin_keeps_start_and_changes_later(kind):
    for family in W.FAMILIES:
        clip = _clip(family, 21)
        possible, twin = W.possible_counterpart(clip, kind), W.impossible_twin(clip, kind)
        assert twin.caption == possible.caption == clip.caption and twin.corruption == kind
        a, b = W.render_clip(possible), W.render_clip(twin)
        assert np.array_equal(a[:2], b[:2]), (family, kind)  # same start
        assert not np.array_equal(a, b), (family, kind)


def test_voe_pairs_rotate_kinds_and_families():
    pairs = W.voe_pairs(12, seed=0, num_frames=17, size=32)
    assert [p[0].family for p in pairs[:6]] == list(W.FAMILIES)
    assert [kind for _, _, kind in pairs[:6]] == list(W.TWIN_KINDS)  # any 6 in a row cover every kind
    assert [kind for _, _, kind in pairs[6:12]] == list(W.TWIN_KINDS[1:]) + [W.TWIN_KINDS[0]]  # shifted next round
    assert len({(possible.family, kind) for possible, _, kind in pairs}) == 12


def test_unknown_twin_kind_is_rejected():
    with pytest.raises(ValueError):
        W.impossible_twin(_clip("drop"), "levitate")


# ==================================================================== files
def test_write_world_files(tmp_path):
    import decord

    summary = W.write_world(tmp_path / "w", n=6, split="test", seed=3, families="drop,collide", num_frames=17, size=32)
    assert summary.per_family == {"drop": 3, "collide": 3}
    lines = [json.loads(line) for line in (tmp_path / "w" / "metadata.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and all(set(line) == {"path", "caption"} for line in lines)
    for line in lines:
        stem = line["path"][: -len(".mp4")]
        caption = (tmp_path / "w" / f"{stem}.txt").read_text().strip()
        assert caption == line["caption"]
        state = json.loads((tmp_path / "w" / f"{stem}.state.json").read_text())
        for key in ("family", "attributes", "g", "e", "dt", "px_per_unit", "positions", "velocities", "radii", "events"):
            assert key in state
        assert state["px_per_unit"] == 32 and state["dt"] == W.DT and np.array(state["positions"]).shape[:1] == (17,)
        frames = decord.VideoReader(str(tmp_path / "w" / line["path"])).get_batch(list(range(17))).asnumpy()
        rendered = W.render_clip(W.clip_from_state(state))
        assert frames.shape == rendered.shape
        assert np.abs(frames.astype(int) - rendered).mean() < 2.0
    # the same folder again, written by 2 processes: the same files byte for byte, metadata in index order
    again = W.write_world(tmp_path / "w2", n=6, split="test", seed=3, families="drop,collide", num_frames=17, size=32, workers=2)
    assert again.files == summary.files and again.per_family == summary.per_family
    assert sorted(p.name for p in (tmp_path / "w2").iterdir()) == sorted(p.name for p in (tmp_path / "w").iterdir())
    for path in (tmp_path / "w").iterdir():
        assert (tmp_path / "w2" / path.name).read_bytes() == path.read_bytes(), path.name


def test_bad_families_are_rejected():
    with pytest.raises(ValueError):
        W.parse_families("drop,flying")


def test_word_tokenizer_covers_every_caption_of_every_split():
    """The `tiny` tokenizer maps no word of any caption the world writes to <unk>, and it
    round-trips through save_pretrained / AutoTokenizer (how a model folder loads it)."""
    import tempfile

    from transformers import AutoTokenizer

    from lamo_cli.backbones.cogvideox import world_word_tokenizer
    from lamo_cli.data.world import FAMILIES, SPLITS, make_caption, sample_params

    tokenizer = world_word_tokenizer()
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        reloaded = AutoTokenizer.from_pretrained(folder)
    rng = np.random.default_rng(0)
    captions = [make_caption(sample_params(family, rng, split)["attributes"], rng, mention)[0]
                for split in SPLITS for family in FAMILIES for mention in ("all", "none", None) for _ in range(30)]
    unk = tokenizer.unk_token_id
    for caption in captions:
        ids = reloaded(caption).input_ids
        assert unk not in ids, caption
        assert ids == tokenizer(caption).input_ids
        assert len(ids) <= 32  # TINY_TEXT_LEN: no caption is truncated
    assert tokenizer("a Red ball").input_ids == tokenizer("a red ball").input_ids
    assert tokenizer("an apple").input_ids[:2] == [unk, unk]  # words outside the world are unknown, not an error


def test_cli_rejects_zero_workers_without_writing(tmp_path):
    from typer.testing import CliRunner

    from lamo_cli.cli import app

    result = CliRunner().invoke(app, ["world", "--out", str(tmp_path / "w"), "--n", "2", "--workers", "0", "--no-progress"])
    assert result.exit_code == 2 and "--workers" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "w").exists()
