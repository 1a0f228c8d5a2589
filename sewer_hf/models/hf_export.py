"""Export a timm ViT (the DINO backbone, or backbone + linear head) as a native transformers
``ViTModel`` / ``ViTForImageClassification`` folder: no timm, no remote code needed to load it.

transformers 5 renamed the in-memory ViT parameters (``layers.i.attention.q_proj``, ...), but
``from_pretrained`` still reads the classic names (``encoder.layer.i.attention.attention.query``,
...) — the layout of HF's own DINO checkpoints — so we write classic-name safetensors plus
``config.json`` and ``preprocessor_config.json``, then check the written folder by loading it
back with ``from_pretrained`` and comparing outputs with the timm model.

Image processor: ``ViTImageProcessor`` is the torchvision-backed class in transformers 5 and is
what ``AutoImageProcessor``/``pipeline`` load by default from ``"image_processor_type":
"ViTImageProcessor"``. Its bicubic resize differs from PIL's by rounding only (mean |diff| ~1e-4
after normalisation); pass ``backend="pil"`` to ``AutoImageProcessor.from_pretrained`` for
PIL's resize.

Classifier configs carry the per-class decision thresholds under ``sewer_thresholds``
(class code -> float, default 0.5; a score >= threshold is a positive).
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from sewer_hf.data.labels import CLASSES, NUM_CLASSES, SEWER_MEAN, SEWER_STD, id2label, label2id
from sewer_hf.errors import ConfigError
from sewer_hf.models.vit import IMAGE_SIZE, build_classifier, create_backbone

THRESHOLDS_KEY = "sewer_thresholds"
DEFAULT_THRESHOLD = 0.5
PARITY_TOLERANCE = 1e-4
WEIGHTS_NAME = "model.safetensors"


def make_image_processor(image_size: int = IMAGE_SIZE):
    """Plain resize to ``image_size`` (bicubic, no crop), rescale 1/255, Sewer-ML mean/std."""
    from transformers import ViTImageProcessor
    from transformers.image_utils import PILImageResampling

    return ViTImageProcessor(
        do_resize=True,
        size={"height": image_size, "width": image_size},
        resample=PILImageResampling.BICUBIC,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(SEWER_MEAN),
        image_std=list(SEWER_STD),
    )


def _check_exportable(backbone: nn.Module) -> None:
    """Refuse timm ViT variants that a classic HF ViT cannot represent."""
    problems = []
    if getattr(backbone, "reg_token", None) is not None:
        problems.append("register tokens")
    if getattr(backbone, "no_embed_class", False) or getattr(backbone, "cls_token", None) is None:
        problems.append("no class-token position embedding")
    if getattr(backbone, "global_pool", "token") != "token":
        problems.append(f"global_pool={backbone.global_pool!r} (need 'token')")
    for name in ("norm_pre", "fc_norm", "head"):
        if not isinstance(getattr(backbone, name, nn.Identity()), nn.Identity):
            problems.append(f"a non-identity {name}")
    block = backbone.blocks[0]
    for name in ("ls1", "ls2"):
        if not isinstance(getattr(block, name, nn.Identity()), nn.Identity):
            problems.append("layer scale")
    for name in ("q_norm", "k_norm", "norm"):
        if not isinstance(getattr(block.attn, name, nn.Identity()), nn.Identity):
            problems.append(f"attention {name}")
    act = block.mlp.act
    if not isinstance(act, nn.GELU) or act.approximate != "none":
        problems.append(f"activation {act} (need exact GELU)")
    if problems:
        raise ConfigError("cannot export this timm ViT to transformers ViT: " + ", ".join(sorted(set(problems))))


def vit_config_from_timm(backbone: nn.Module, image_size: int):
    """``ViTConfig`` matching a timm ``VisionTransformer`` at input size ``image_size``."""
    from transformers import ViTConfig

    _check_exportable(backbone)
    patch = backbone.patch_embed.patch_size
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    if image_size <= 0 or image_size % patch:
        raise ConfigError(f"image size {image_size} must be a positive multiple of the patch size {patch}")
    block = backbone.blocks[0]
    return ViTConfig(
        hidden_size=backbone.embed_dim,
        num_hidden_layers=len(backbone.blocks),
        num_attention_heads=block.attn.num_heads,
        intermediate_size=block.mlp.fc1.out_features,
        hidden_act="gelu",
        layer_norm_eps=backbone.norm.eps,  # timm ViT: 1e-6
        image_size=image_size,
        patch_size=patch,
        num_channels=backbone.patch_embed.proj.in_channels,
        qkv_bias=block.attn.qkv.bias is not None,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        dtype="float32",
    )


def timm_to_hf_state_dict(
    timm_state_dict: Mapping[str, torch.Tensor],
    num_layers: int,
    prefix: str = "vit.",
    grid_size: tuple[int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """timm ViT keys -> classic HF ViT keys (``prefix`` "vit." inside a classification model,
    "" for a bare ``ViTModel``). ``grid_size`` resamples the position embeddings to another
    patch grid exactly as timm's ``dynamic_img_size`` forward does. Unknown keys are an error."""
    from timm.layers import resample_abs_pos_embed

    sd = {k: v.detach().to("cpu", torch.float32) for k, v in timm_state_dict.items()}
    pos_embed = sd.pop("pos_embed")
    if grid_size is not None:
        pos_embed = resample_abs_pos_embed(pos_embed, new_size=list(grid_size), num_prefix_tokens=1)
    out = {
        "embeddings.cls_token": sd.pop("cls_token"),
        "embeddings.position_embeddings": pos_embed,
        "embeddings.patch_embeddings.projection.weight": sd.pop("patch_embed.proj.weight"),
        "embeddings.patch_embeddings.projection.bias": sd.pop("patch_embed.proj.bias"),
        "layernorm.weight": sd.pop("norm.weight"),
        "layernorm.bias": sd.pop("norm.bias"),
    }
    renames = {
        "norm1": "layernorm_before",
        "attn.proj": "attention.output.dense",
        "norm2": "layernorm_after",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
    }
    for i in range(num_layers):
        src, dst = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            # timm's fused qkv rows are [query; key; value].
            query, key, value = sd.pop(f"{src}attn.qkv.{kind}").chunk(3, dim=0)
            for name, tensor in (("query", query), ("key", key), ("value", value)):
                out[f"{dst}attention.attention.{name}.{kind}"] = tensor
            for timm_name, hf_name in renames.items():
                out[f"{dst}{hf_name}.{kind}"] = sd.pop(f"{src}{timm_name}.{kind}")
    if sd:
        raise ConfigError(f"timm state dict has keys with no transformers ViT counterpart: {sorted(sd)[:8]}")
    return {prefix + k: v.contiguous() for k, v in out.items()}


def _grid_for(backbone: nn.Module, image_size: int) -> tuple[int, int] | None:
    """New patch grid when exporting at a size other than the one the backbone was built for."""
    patch = backbone.patch_embed.patch_size
    grid = (image_size // patch[0], image_size // patch[1])
    return None if tuple(backbone.patch_embed.grid_size) == grid else grid


def _write(out_dir, state: dict, config, image_size: int) -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    make_image_processor(image_size).save_pretrained(out)
    return out


def _apply_extra(config, extra_config: Mapping | None) -> None:
    for key, value in (extra_config or {}).items():
        setattr(config, key, value)


@torch.no_grad()
def _verify(out: Path, model_class, reference: nn.Module, image_size: int, output_of) -> None:
    """Reload the folder and compare with the timm model on CPU, fp32 (no TF32 noise)."""
    hf_model = model_class.from_pretrained(out).eval()
    reference = copy.deepcopy(reference).to("cpu", torch.float32).eval()
    x = torch.randn(2, hf_model.config.num_channels, image_size, image_size, generator=torch.Generator().manual_seed(0))
    expected = reference(x)
    got = output_of(hf_model(pixel_values=x))
    diff = (expected - got).abs().max().item()
    if not diff <= PARITY_TOLERANCE:
        raise RuntimeError(f"exported model in {out} differs from the timm model by {diff:.3g} (> {PARITY_TOLERANCE})")


def save_backbone(
    backbone: nn.Module, out_dir, image_size: int = IMAGE_SIZE, extra_config: Mapping | None = None, verify: bool = True
) -> Path:
    """Write a ``ViTModel`` folder (``AutoModel``, ``pipeline("image-feature-extraction")``).

    The DINO feature is ``last_hidden_state[:, 0]`` (the CLS token after the final norm).
    ``AutoModel`` builds ViT's pooler, so the folder stores an identity pooler (weight = I,
    bias = 0: ``pooler_output = tanh(CLS)``) rather than leaving it randomly initialised.
    If ``image_size`` differs from the backbone's own size, the position embeddings are
    resampled as timm does for that input size.
    """
    from transformers import ViTModel

    config = vit_config_from_timm(backbone, image_size)
    config.architectures = ["ViTModel"]
    _apply_extra(config, extra_config)
    state = timm_to_hf_state_dict(
        backbone.state_dict(), config.num_hidden_layers, prefix="", grid_size=_grid_for(backbone, image_size)
    )
    state["pooler.dense.weight"] = torch.eye(config.hidden_size)
    state["pooler.dense.bias"] = torch.zeros(config.hidden_size)
    out = _write(out_dir, state, config, image_size)
    if verify:
        _verify(out, ViTModel, backbone, image_size, lambda o: o.last_hidden_state[:, 0])
    return out


def _threshold_dict(thresholds) -> dict[str, float]:
    if thresholds is None:
        return {code: DEFAULT_THRESHOLD for code in CLASSES}
    if isinstance(thresholds, Mapping):
        missing = [c for c in CLASSES if c not in thresholds]
        unknown = [c for c in thresholds if c not in CLASSES]
        if missing or unknown:
            raise ConfigError(f"thresholds need exactly the 17 class codes; missing {missing}, unknown {unknown}")
        values = [thresholds[c] for c in CLASSES]
    else:
        values = list(np.asarray(thresholds, dtype=np.float64).reshape(-1))
        if len(values) != NUM_CLASSES:
            raise ConfigError(f"expected {NUM_CLASSES} thresholds (one per class, in {CLASSES} order), got {len(values)}")
    out = {}
    for code, value in zip(CLASSES, values):
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"threshold for {code} is {value}; expected a probability in [0, 1]")
        out[code] = value
    return out


def save_classifier(
    backbone: nn.Module,
    head: nn.Linear,
    out_dir,
    image_size: int = IMAGE_SIZE,
    thresholds: Mapping[str, float] | Sequence[float] | None = None,
    extra_config: Mapping | None = None,
    verify: bool = True,
) -> Path:
    """Write a multi-label ``ViTForImageClassification`` folder for the 17 Sewer-ML classes:
    ``pipeline("image-classification", model=DIR, top_k=17)`` gives independent sigmoid scores;
    ``load_classifier_thresholds`` reads the per-class thresholds back."""
    from transformers import ViTForImageClassification

    if head.out_features != NUM_CLASSES or head.in_features != backbone.num_features:
        raise ConfigError(
            f"classifier head maps {head.in_features} -> {head.out_features}; "
            f"expected {backbone.num_features} -> {NUM_CLASSES}"
        )
    config = vit_config_from_timm(backbone, image_size)
    config.architectures = ["ViTForImageClassification"]
    config.id2label = id2label()
    config.label2id = label2id()
    config.problem_type = "multi_label_classification"
    setattr(config, THRESHOLDS_KEY, _threshold_dict(thresholds))
    _apply_extra(config, extra_config)
    state = timm_to_hf_state_dict(
        backbone.state_dict(), config.num_hidden_layers, prefix="vit.", grid_size=_grid_for(backbone, image_size)
    )
    bias = head.bias if head.bias is not None else torch.zeros(NUM_CLASSES)
    state["classifier.weight"] = head.weight.detach().to("cpu", torch.float32).contiguous()
    state["classifier.bias"] = bias.detach().to("cpu", torch.float32).contiguous()
    out = _write(out_dir, state, config, image_size)
    if verify:
        _verify(out, ViTForImageClassification, nn.Sequential(backbone, head), image_size, lambda o: o.logits)
    return out


def load_classifier_thresholds(model_or_config) -> np.ndarray:
    """Per-class thresholds (float64, ``CLASSES`` order) from an exported classifier's config;
    0.5 for every class when the config has none."""
    config = getattr(model_or_config, "config", model_or_config)
    stored = getattr(config, THRESHOLDS_KEY, None)
    return np.array(list(_threshold_dict(stored).values()), dtype=np.float64)


def hf_to_timm_state_dict(hf_state_dict: Mapping[str, torch.Tensor], num_layers: int) -> dict[str, torch.Tensor]:
    """The inverse of :func:`timm_to_hf_state_dict` (classic HF names, any ``vit.`` prefix);
    pooler and classifier weights are dropped."""
    sd = {k.removeprefix("vit."): v for k, v in hf_state_dict.items()
          if not k.startswith(("pooler.", "vit.pooler.", "classifier."))}
    out = {
        "cls_token": sd.pop("embeddings.cls_token"),
        "pos_embed": sd.pop("embeddings.position_embeddings"),
        "patch_embed.proj.weight": sd.pop("embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": sd.pop("embeddings.patch_embeddings.projection.bias"),
        "norm.weight": sd.pop("layernorm.weight"),
        "norm.bias": sd.pop("layernorm.bias"),
    }
    renames = {"norm1": "layernorm_before", "attn.proj": "attention.output.dense", "norm2": "layernorm_after",
               "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    for i in range(num_layers):
        src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.qkv.{kind}"] = torch.cat(
                [sd.pop(f"{src}attention.attention.{n}.{kind}") for n in ("query", "key", "value")], dim=0)
            for timm_name, hf_name in renames.items():
                out[f"{dst}{timm_name}.{kind}"] = sd.pop(f"{src}{hf_name}.{kind}")
    if sd:
        raise ConfigError(f"transformers ViT weights with no timm counterpart: {sorted(sd)[:8]}")
    return out


def load_timm_backbone(model_dir, drop_path_rate: float = 0.0) -> nn.Module:
    """A timm backbone (for further training) from an exported ``backbone/`` or ``classifier/``
    folder; the architecture and image size come from its ``config.json``."""
    from safetensors.torch import load_file
    from transformers import ViTConfig

    folder = Path(model_dir)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise ConfigError(f"{folder}: no {WEIGHTS_NAME}; expected an exported backbone/ or classifier/ folder")
    config = ViTConfig.from_pretrained(folder)
    arch = {192: "vit_tiny", 384: "vit_small"}.get(config.hidden_size)
    if arch is None or config.num_hidden_layers != 12 or config.patch_size != 16:
        raise ConfigError(f"{folder}: hidden_size={config.hidden_size}, layers={config.num_hidden_layers}, "
                          f"patch={config.patch_size}; expected ViT-T/16 (192) or ViT-S/16 (384) with 12 layers")
    backbone = create_backbone(arch, img_size=config.image_size, drop_path_rate=drop_path_rate)
    backbone.load_state_dict(hf_to_timm_state_dict(load_file(str(weights)), config.num_hidden_layers))
    return backbone


def load_classifier_module(model_dir, device: torch.device | str = "cpu") -> nn.Module:
    """The package's backbone + linear head (``LinearClassifier``, eval mode) from an exported
    ``classifier/`` folder: what the run ships, scored the way training scores."""
    from safetensors.torch import load_file

    weights = load_file(str(Path(model_dir) / WEIGHTS_NAME))
    if "classifier.weight" not in weights:
        raise ConfigError(f"{model_dir}: no classifier head in {WEIGHTS_NAME}; expected an exported classifier/ folder")
    model = build_classifier(load_timm_backbone(model_dir), num_classes=weights["classifier.weight"].shape[0])
    model.head.load_state_dict({"weight": weights["classifier.weight"], "bias": weights["classifier.bias"]})
    return model.to(device).eval()
