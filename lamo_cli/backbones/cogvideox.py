"""CogVideoX-family backbones (diffusers classes): 2B, 5B, local folders, and a tiny random model.

Every backbone is the same five components a `CogVideoXPipeline` folder holds (vae, text_encoder,
tokenizer, transformer, scheduler). Components load lazily on first use, so a stage that only needs
the VAE never holds the transformer in memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from lamo_cli.backbones.base import VideoFormat
from lamo_cli.errors import LamoError

COMPONENTS = ("vae", "text_encoder", "tokenizer", "transformer", "scheduler")
LAMO_META_FILE = "lamo_backbone.json"

# Hub ids of the published checkpoints; a local folder with the same layout works the same way.
HUB_IDS = {"cogvideox-2b": "THUDM/CogVideoX-2b", "cogvideox-5b": "THUDM/CogVideoX-5b"}

REAL_FORMAT = VideoFormat(num_frames=49, height=480, width=720, fps=8.0, temporal_compression=4, spatial_compression=8)
TINY_RANDOM_FORMAT = VideoFormat(num_frames=17, height=64, width=64, fps=8.0, temporal_compression=4, spatial_compression=8)
# The embedded `tiny` model: physics-world clips, 9 latent frames on a 16x16 grid (3-block VAE, 4x).
TINY_FORMAT = VideoFormat(num_frames=33, height=64, width=64, fps=8.0, temporal_compression=4, spatial_compression=4)
TINY_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "tiny"

# CogVideoX-2B's scheduler (FACTS.md); the tiny model reuses it so its sampling behaves like 2B's.
SCHEDULER_2B = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="v_prediction",
    rescale_betas_zero_snr=True,
    set_alpha_to_one=True,
    clip_sample=False,
    timestep_spacing="trailing",
    snr_shift_scale=3.0,
)


class CogVideoXBackbone:
    """One CogVideoX-class model: encode/decode video, encode text, predict v, build schedulers."""

    def __init__(
        self,
        name: str,
        loader: Callable[[str], Any],
        video_format: VideoFormat,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        source: str | None = None,
    ) -> None:
        self.name = name
        self.source = source or name
        self.video_format = video_format
        self.device = torch.device(device)
        self.dtype = dtype
        self._loader = loader
        self._components: dict[str, Any] = {}

    # ---------------------------------------------------------------- components (lazy)
    def _get(self, component: str) -> Any:
        if component not in self._components:
            module = self._loader(component)
            if isinstance(module, torch.nn.Module):
                module = module.to(self.device)
                if next(module.parameters()).dtype != self.dtype:
                    module = module.to(self.dtype)
                module = module.eval().requires_grad_(False)
            self._components[component] = module
        return self._components[component]

    @property
    def vae(self):
        return self._get("vae")

    @property
    def text_encoder(self):
        return self._get("text_encoder")

    @property
    def tokenizer(self):
        return self._get("tokenizer")

    @property
    def transformer(self):
        return self._get("transformer")

    @property
    def scheduler_config(self) -> dict:
        return dict(self._get("scheduler").config)

    def release(self, *components: str) -> None:
        """Drop components from memory (e.g. the VAE and T5 during training)."""
        for component in components:
            self._components.pop(component, None)

    # ---------------------------------------------------------------- facts
    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def text_length(self) -> int:
        # With sincos positions the prompt length must equal the transformer's max_text_seq_length.
        return int(self.transformer.config.max_text_seq_length)

    @property
    def text_dim(self) -> int:
        return int(self.text_encoder.config.d_model)

    @property
    def uses_rope(self) -> bool:
        return bool(self.transformer.config.use_rotary_positional_embeddings)

    @property
    def sampler(self) -> str:
        cls = self._get("scheduler").__class__.__name__
        return "dpm" if "DPM" in cls else "ddim"

    def alphas_cumprod(self) -> torch.Tensor:
        """The scheduler's own abar_t (never recomputed: snr shift and zero-terminal-SNR live there)."""
        return self.make_scheduler("ddim").alphas_cumprod.clone().float()

    def make_scheduler(self, kind: str | None = None):
        from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

        kind = kind or self.sampler
        classes = {"ddim": CogVideoXDDIMScheduler, "dpm": CogVideoXDPMScheduler}
        if kind not in classes:
            raise LamoError(f"--sampler {kind!r} is not known: use 'ddim' or 'dpm'")
        return classes[kind].from_config(self.scheduler_config)

    # ---------------------------------------------------------------- fingerprints
    def latent_fingerprint(self) -> str:
        """Identity of the latent space (what a cache or prior depends on): the VAE's encoder side,
        its scaling factor and the text encoder. The decoder is left out on purpose: a decoder
        fine-tuned on the same latents must not invalidate caches, priors or runs."""
        vae = self.vae
        encoder_side = [m for m in (vae.encoder, getattr(vae, "quant_conv", None)) if m is not None]
        return _fingerprint(encoder_side + [self.text_encoder], extra=f"scaling_factor={self.scaling_factor!r}")

    # ---------------------------------------------------------------- encoders / decoder
    @torch.no_grad()
    def encode_video(self, frames: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 [B, F, H, W, 3] -> UNSCALED posterior (mean, logvar), each float32 [B, T, C, h, w]."""
        x = torch.as_tensor(np.asarray(frames) if not torch.is_tensor(frames) else frames)
        if x.ndim == 4:
            x = x[None]
        x = x.to(self.device).permute(0, 4, 1, 2, 3).to(self.dtype) / 127.5 - 1.0  # [B, 3, F, H, W]
        batch = x.shape[0]
        posterior = self.vae.encode(self._onednn_batch(x)).latent_dist
        mean = posterior.mean[:batch].permute(0, 2, 1, 3, 4).float()
        logvar = posterior.logvar[:batch].permute(0, 2, 1, 3, 4).float()
        return mean, logvar

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """SCALED latents [B, T, C, h, w] -> uint8 frames [B, F, H, W, 3]."""
        z = latents.to(self.device, self.dtype).permute(0, 2, 1, 3, 4) / self.scaling_factor
        video = self.vae.decode(self._onednn_batch(z)).sample[: z.shape[0]]  # [B, 3, F, H, W] in [-1, 1]
        video = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return video.permute(0, 2, 3, 4, 1).cpu().numpy()

    def _onednn_batch(self, x: torch.Tensor) -> torch.Tensor:
        """A one-clip batch, doubled when `small_vae_runs_one_clip_on_one_thread` (the caller keeps
        the first sample): decoding tiny's clip twice that way is ~1.5x faster than once."""
        if x.shape[0] == 1 and self.clips_per_vae_call() > 1:
            return x.expand(2, *x.shape[1:])
        return x

    def clips_per_vae_call(self) -> int:
        """How many clips callers should hand the VAE at once: 2 where a one-clip batch would run
        single-threaded (two clips then cost about what one does), else 1 (a full-size VAE's memory
        is better spent on one clip)."""
        if (self.device.type == "cpu" and torch.get_num_threads() > 1
                and small_vae_runs_one_clip_on_one_thread(self.vae.config.block_out_channels, self.video_format.height)):
            return 2
        return 1

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> [B, L, D] float32, all L tokens kept (no attention mask, as CogVideoX)."""
        tokens = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.text_length,
            truncation=True,
            add_special_tokens=True,
            return_tensors="pt",
        )
        return self.text_encoder(tokens.input_ids.to(self.device))[0].float()

    # ---------------------------------------------------------------- denoiser
    def rotary_embedding(self, latent_frames: int, latent_height: int, latent_width: int):
        """3D RoPE for 5B-style transformers (the caller must build it); None for sincos models."""
        if not self.uses_rope:
            return None
        from diffusers.models.embeddings import get_3d_rotary_pos_embed

        cfg = self.transformer.config
        p = cfg.patch_size
        grid_h, grid_w = latent_height // p, latent_width // p
        base_h, base_w = cfg.sample_height // p, cfg.sample_width // p
        crops = _resize_crop_region((grid_h, grid_w), base_w, base_h)
        cos, sin = get_3d_rotary_pos_embed(
            embed_dim=cfg.attention_head_dim,
            crops_coords=crops,
            grid_size=(grid_h, grid_w),
            temporal_size=latent_frames,
            device=self.device,
        )
        return cos.to(self.device), sin.to(self.device)

    def predict_v(
        self,
        x_t: torch.Tensor,
        timesteps: torch.Tensor,
        text: torch.Tensor,
        transformer: torch.nn.Module | None = None,
        rotary=None,
    ) -> torch.Tensor:
        """v-prediction for latents [B, T, C, h, w] at integer timesteps [B] given text [B, L, D].

        `transformer` overrides the backbone's own (a LoRA-wrapped or DDP-wrapped copy in training).
        """
        model = transformer if transformer is not None else self.transformer
        if rotary is None and self.uses_rope:
            rotary = self.rotary_embedding(x_t.shape[1], x_t.shape[3], x_t.shape[4])
        out = model(
            hidden_states=x_t,
            encoder_hidden_states=text,
            timestep=timesteps,
            image_rotary_emb=rotary,
            return_dict=False,
        )[0]
        return out

    # ---------------------------------------------------------------- saving
    def pipeline(self):
        """A diffusers CogVideoXPipeline around the loaded components (shares them, no copy)."""
        from diffusers import CogVideoXPipeline

        return CogVideoXPipeline(
            tokenizer=self.tokenizer,
            text_encoder=self.text_encoder,
            vae=self.vae,
            transformer=self.transformer,
            scheduler=self._get("scheduler"),
        )

    def save(self, folder: str | os.PathLike) -> Path:
        """Write a diffusers pipeline folder (loadable by `CogVideoXPipeline.from_pretrained` and
        by `--backbone FOLDER`) plus lamo's video-format record."""
        folder = Path(folder)
        _quiet_library_progress_bars()
        self.pipeline().save_pretrained(folder, safe_serialization=True)
        meta = {"name": self.name, "video_format": self.video_format.__dict__}
        (folder / LAMO_META_FILE).write_text(json.dumps(meta, indent=2))
        return folder

    @property
    def spec(self) -> str:
        """What `load_backbone` needs to load this model again: its registered name, else its folder."""
        return self.name if self.name in registered_backbones() else self.source

    def describe(self) -> dict:
        return {
            "backbone": self.name,
            "source": self.source,
            "video_format": self.video_format.__dict__,
            "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device),
        }


# ==================================================================== loading
DEFAULT_BACKBONE_ENV = "LAMO_DEFAULT_BACKBONE"


def default_backbone() -> str:
    """$LAMO_DEFAULT_BACKBONE if set; else `tiny` (trained on the physics world) when its weights are
    installed; else `tiny-random`."""
    chosen = os.environ.get(DEFAULT_BACKBONE_ENV)
    if chosen:
        return chosen
    return "tiny" if (TINY_WEIGHTS / LAMO_META_FILE).is_file() else "tiny-random"


def registered_backbones() -> list[str]:
    return ["tiny", "tiny-random", *HUB_IDS]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device asked for (default: CUDA when present, else the CPU), or a one-line LamoError."""
    if device is None or str(device) == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise LamoError(f"--device {device!r}: not a device; use cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise LamoError(f"--device {device}: no CUDA device is visible here; use --device cpu")
    if resolved.type == "cuda" and resolved.index is not None and resolved.index >= torch.cuda.device_count():
        raise LamoError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here; use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return resolved


def load_backbone(
    spec: str | os.PathLike = "tiny-random",
    device: str | torch.device | None = None,
    dtype: torch.dtype | str | None = None,
) -> CogVideoXBackbone:
    """Resolve a registered name or a local diffusers folder to a backbone.

    dtype defaults to float32 on CPU (bf16 weights are slow there without AMX) and bf16 on GPU for the real
    models (fp16 turns 5B videos black).
    """
    device = resolve_device(device)
    spec_str = str(spec)
    if spec_str == "tiny-random":
        return CogVideoXBackbone(
            "tiny-random", _tiny_random_loader(), TINY_RANDOM_FORMAT, device, _resolve_dtype(dtype, device, tiny=True)
        )
    if spec_str == "tiny":
        if not (TINY_WEIGHTS / LAMO_META_FILE).is_file():
            raise LamoError(
                "--backbone tiny: its weights are not in this install (lamo_cli/weights/tiny); "
                "build them with `lamo build-tiny --install` or use --backbone tiny-random"
            )
        return _from_folder(TINY_WEIGHTS, device, dtype)
    if Path(spec_str).is_dir():
        return _from_folder(Path(spec_str), device, dtype)
    if spec_str in HUB_IDS:
        return _from_hub(spec_str, device, dtype)
    if Path(spec_str).exists():
        raise LamoError(f"--backbone {spec_str}: not a folder; pass a diffusers CogVideoX folder or one of {registered_backbones()}")
    raise LamoError(
        f"--backbone {spec_str!r}: unknown backbone and no such folder; use one of {registered_backbones()} or a local diffusers CogVideoX folder"
    )


def _resolve_dtype(dtype, device: torch.device, tiny: bool) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str):
        table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
        if dtype not in table:
            raise LamoError(f"--dtype {dtype!r}: use fp32, bf16 or fp16")
        return table[dtype]
    if device.type == "cpu" or tiny:
        return torch.float32
    return torch.bfloat16


def _from_folder(folder: Path, device: torch.device, dtype) -> CogVideoXBackbone:
    missing = [c for c in COMPONENTS if not (folder / c).is_dir()]
    if missing:
        raise LamoError(
            f"--backbone {folder}: not a CogVideoX diffusers folder (missing {', '.join(missing)}); "
            "save one with `CogVideoXPipeline.save_pretrained` or pass a registered name"
        )
    meta_path = folder / LAMO_META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    name = meta.get("name") or _guess_name(folder)
    fmt = VideoFormat(**meta["video_format"]) if "video_format" in meta else _infer_format(folder)
    tiny = name.startswith("tiny")
    return CogVideoXBackbone(name, _folder_loader(str(folder)), fmt, device, _resolve_dtype(dtype, device, tiny), source=str(folder.resolve()))


def _from_hub(name: str, device: torch.device, dtype) -> CogVideoXBackbone:
    repo = HUB_IDS[name]
    loader = _folder_loader(repo)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # huggingface_hub deprecation chatter on the way to the error
            loader("scheduler")  # cheap probe: fails fast when neither the cache nor the network has it
    except Exception:  # noqa: BLE001 - hub errors come in many types
        raise LamoError(
            f"--backbone {name}: weights of {repo} are not in the local Hugging Face cache and cannot be downloaded here; "
            "download them elsewhere and pass the local folder with --backbone PATH"
        ) from None
    return CogVideoXBackbone(name, loader, REAL_FORMAT, device, _resolve_dtype(dtype, device, tiny=False), source=repo)


def _quiet_library_progress_bars() -> None:
    """transformers/diffusers print per-component loading bars; lamo shows its own progress."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def _folder_loader(root: str) -> Callable[[str], Any]:
    _quiet_library_progress_bars()

    def load(component: str):
        from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXDPMScheduler, CogVideoXTransformer3DModel
        from transformers import AutoTokenizer, T5EncoderModel

        try:
            if component == "vae":
                return AutoencoderKLCogVideoX.from_pretrained(root, subfolder="vae")
            if component == "transformer":
                return CogVideoXTransformer3DModel.from_pretrained(root, subfolder="transformer")
            if component == "text_encoder":
                return T5EncoderModel.from_pretrained(root, subfolder="text_encoder")
            if component == "tokenizer":
                return AutoTokenizer.from_pretrained(root, subfolder="tokenizer")
            if component == "scheduler":
                cfg_path = Path(root) / "scheduler" / "scheduler_config.json"
                cls = CogVideoXDPMScheduler if cfg_path.exists() and "DPM" in json.loads(cfg_path.read_text()).get("_class_name", "") else CogVideoXDDIMScheduler
                return cls.from_pretrained(root, subfolder="scheduler")
        except (OSError, ValueError, json.JSONDecodeError) as exc:
            raise LamoError(f"backbone {root}: cannot load its {component} ({str(exc).splitlines()[0][:200]}); check the folder is complete") from None
        raise KeyError(component)

    return load


def _guess_name(folder: Path) -> str:
    cfg = folder / "transformer" / "config.json"
    if cfg.exists():
        conf = json.loads(cfg.read_text())
        if conf.get("num_layers", 0) >= 30:
            return "cogvideox-5b" if conf.get("use_rotary_positional_embeddings") else "cogvideox-2b"
    return f"folder:{folder.name}"


def _infer_format(folder: Path) -> VideoFormat:
    tcfg = json.loads((folder / "transformer" / "config.json").read_text())
    vcfg = json.loads((folder / "vae" / "config.json").read_text())
    spatial = 2 ** (len(vcfg.get("block_out_channels", [0, 0, 0, 0])) - 1)
    temporal = int(vcfg.get("temporal_compression_ratio", 4))
    return VideoFormat(
        num_frames=int(tcfg.get("sample_frames", 49)),
        height=int(tcfg.get("sample_height", 60)) * spatial,
        width=int(tcfg.get("sample_width", 90)) * spatial,
        fps=8.0,
        temporal_compression=temporal,
        spatial_compression=spatial,
    )


def small_vae_runs_one_clip_on_one_thread(block_out_channels: Sequence[int], height: int) -> bool:
    """True when torch would run this VAE's 3-D convolutions on a one-clip batch single-threaded.

    torch sends a one-sample conv3d whose input is small (N*C*T*H <= 20480) to its native kernel,
    which runs on one thread; two samples take oneDNN's, which uses every thread. The VAE works in
    chunks of a few frames, so a layer whose single frame (C*H) is already within a few frames of
    that bound takes the slow kernel: tiny's (32 channels x 64 px = 2048) does, CogVideoX's
    (128 x 480 = 61440) never does.
    """
    return min(block_out_channels) * height <= 20480


# ==================================================================== tiny random model
TINY_RANDOM_TEXT_LEN = 64  # ByT5 is one token per byte: 64 covers short prompts
TINY_RANDOM_SEED = 20260524


def _small_components(fmt: VideoFormat, seed: int, *, vae_blocks: tuple[int, ...], latent_channels: int, text_dim: int,
                      heads: int, head_dim: int, layers: int, time_dim: int, text_length: int, rope: bool,
                      word_level: bool = False) -> dict[str, Any]:
    """Small, seeded instances of the real CogVideoX classes (identical weights in every process).
    `word_level` swaps the byte tokenizer for one token per caption word (`world_word_tokenizer`)."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel
    from transformers import ByT5Tokenizer, T5Config, T5EncoderModel

    tokenizer = world_word_tokenizer() if word_level else ByT5Tokenizer()  # neither needs a download
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLCogVideoX(
            down_block_types=("CogVideoXDownBlock3D",) * len(vae_blocks),
            up_block_types=("CogVideoXUpBlock3D",) * len(vae_blocks),
            block_out_channels=vae_blocks,
            latent_channels=latent_channels,
            layers_per_block=1,
            norm_num_groups=8,
            temporal_compression_ratio=fmt.temporal_compression,
            sample_height=fmt.height,
            sample_width=fmt.width,
        )
        text_encoder = T5EncoderModel(
            T5Config(vocab_size=len(tokenizer) if word_level else 384, d_model=text_dim, d_ff=2 * text_dim, d_kv=text_dim // 2, num_layers=2, num_heads=2, decoder_start_token_id=0)
        )
        transformer = CogVideoXTransformer3DModel(
            num_attention_heads=heads,
            attention_head_dim=head_dim,
            in_channels=latent_channels,
            out_channels=latent_channels,
            time_embed_dim=time_dim,
            text_embed_dim=text_dim,
            num_layers=layers,
            sample_width=fmt.latent_width,
            sample_height=fmt.latent_height,
            sample_frames=fmt.num_frames,
            patch_size=2,
            temporal_compression_ratio=fmt.temporal_compression,
            max_text_seq_length=text_length,
            use_rotary_positional_embeddings=rope,
        )
    return {
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "transformer": transformer,
        "scheduler": CogVideoXDDIMScheduler(**SCHEDULER_2B),
    }


def tiny_random_components(rope: bool = False) -> dict[str, Any]:
    """`tiny-random`: 4-block VAE (8x spatial), 2-layer transformer; `rope=True` gives a 5B-style one."""
    return _small_components(TINY_RANDOM_FORMAT, TINY_RANDOM_SEED, vae_blocks=(32, 32, 64, 64), latent_channels=16, text_dim=32,
                             heads=2, head_dim=32, layers=2, time_dim=64, text_length=TINY_RANDOM_TEXT_LEN, rope=rope)


TINY_TEXT_LEN = 32  # word tokens: the longest world caption is 22 words and a comma


TINY_TEMPORAL_CHOICES = (2, 4)  # 33 frames -> 17 or 9 latent frames (the drift needs >= 8)
TINY_MIN_LATENT_FRAMES = 8  # the drift compares pairs of latent frames; the physics-world spec asks for 8


def tiny_format(temporal_compression: int = 4, num_frames: int = TINY_FORMAT.num_frames) -> VideoFormat:
    """The `tiny` clip format with 4x (shipped) or 2x temporal compression, at `num_frames` frames
    (8k+1, so that the VAE decodes the same count back; at least 8 latent frames)."""
    from lamo_cli.errors import LamoError

    if temporal_compression not in TINY_TEMPORAL_CHOICES:
        raise LamoError(f"--temporal-compression {temporal_compression}: use 4 (as the shipped tiny) or 2")
    latent_frames = (num_frames - 1) // temporal_compression + 1
    if num_frames < 9 or (num_frames - 1) % 8 or latent_frames < TINY_MIN_LATENT_FRAMES:
        shortest = (TINY_MIN_LATENT_FRAMES - 1) * temporal_compression + 1
        shortest += -(shortest - 1) % 8  # up to the next 8k+1
        raise LamoError(f"--frames {num_frames}: use 8k+1 frames, at least {shortest} with --temporal-compression "
                        f"{temporal_compression} (so that a clip has >= {TINY_MIN_LATENT_FRAMES} latent frames)")
    return dataclasses.replace(TINY_FORMAT, temporal_compression=temporal_compression, num_frames=num_frames)


def tiny_untrained_components(text_length: int = TINY_TEXT_LEN, temporal_compression: int = 4,
                               num_frames: int = TINY_FORMAT.num_frames) -> dict[str, Any]:
    """The `tiny` architecture before training: a 3-block VAE (4x spatial, 4x or 2x temporal, 8 latent
    channels), a small frozen random T5 over caption words, and a 4-layer transformer (2B-style sincos).
    No weight depends on the clip length or the temporal compression, so one set loads into any of them."""
    return _small_components(tiny_format(temporal_compression, num_frames), TINY_RANDOM_SEED + 1, vae_blocks=(32, 32, 64), latent_channels=8,
                             text_dim=64, heads=4, head_dim=48, layers=4, time_dim=128, text_length=text_length, rope=False,
                             word_level=True)


def world_word_tokenizer():
    """A T5-style tokenizer with one token per word of the physics world's captions (lower-cased,
    punctuation split off; other words map to <unk>). A frozen random T5 over bytes spreads "red"
    over three tokens mixed with their neighbours; one token per word lets a model trained from
    scratch on a CPU tie colour, direction and speed words to what it draws."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    from lamo_cli.data.world import caption_vocabulary

    specials = ["<pad>", "</s>", "<unk>"]  # T5's order: pad 0, eos 1, unk 2
    vocab = {word: i for i, word in enumerate(specials + caption_vocabulary())}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def _tiny_random_loader() -> Callable[[str], Any]:
    built: dict[str, Any] = {}

    def load(component: str):
        if not built:
            built.update(tiny_random_components())
        return built[component]

    return load


# ==================================================================== helpers
def _resize_crop_region(src: tuple[int, int], target_width: int, target_height: int):
    """Where a (h, w) grid sits inside the base grid when resized to fit it (CogVideoX RoPE)."""
    h, w = src
    if h / w > target_height / target_width:
        resize_h, resize_w = target_height, int(round(target_height / h * w))
    else:
        resize_w, resize_h = target_width, int(round(target_width / w * h))
    top = int(round((target_height - resize_h) / 2.0))
    left = int(round((target_width - resize_w) / 2.0))
    return (top, left), (top + resize_h, left + resize_w)


def _fingerprint(modules: list[torch.nn.Module], extra: str = "") -> str:
    """Every weight's name and shape plus a sample of the values: cheap even for 5B, stable across
    save/load (configs gain bookkeeping fields on save, weights do not), different for any retrain."""
    digest = hashlib.sha256(extra.encode())
    for module in modules:
        params = list(module.state_dict().items())
        for key, tensor in params:
            digest.update(f"{key}:{tuple(tensor.shape)};".encode())
        for key, tensor in params[:2] + params[-2:]:
            # Rounded to bf16 so an fp32 load and a bf16 load of the same weights agree.
            sample = tensor.detach().flatten()[:4096].cpu().to(torch.bfloat16).float()
            digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]
