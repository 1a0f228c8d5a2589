"""timm ViT -> native transformers ViT folders: parity, offline loading, pipelines, thresholds."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from sewer_hf.data.labels import CLASSES, SEWER_MEAN, SEWER_STD
from sewer_hf.errors import ConfigError
from sewer_hf.models.hf_export import (
    load_classifier_thresholds,
    make_image_processor,
    save_backbone,
    save_classifier,
    timm_to_hf_state_dict,
    vit_config_from_timm,
)
from sewer_hf.models.vit import build_classifier, create_backbone

TOL = 1e-4


def perturbed_backbone(arch="vit_tiny", img_size=64, seed=0):
    """Random weights with non-trivial norms and biases, so a swapped mapping cannot hide."""
    torch.manual_seed(seed)
    backbone = create_backbone(arch, img_size=img_size).eval()
    with torch.no_grad():
        for p in backbone.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return backbone


def random_image(seed=0, size=(352, 288)):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize(
    "arch, train_size, export_size",
    [("vit_tiny", 224, 224), ("vit_tiny", 96, 96), ("vit_tiny", 64, 96), ("vit_small", 32, 32)],
)
def test_backbone_parity_whole_sequence(tmp_path, arch, train_size, export_size):
    from transformers import AutoModel, ViTModel

    backbone = perturbed_backbone(arch, train_size)
    out = save_backbone(backbone, tmp_path / "bb", image_size=export_size)
    model, info = AutoModel.from_pretrained(out, local_files_only=True, output_loading_info=True)
    assert type(model) is ViTModel
    # Nothing newly initialised, nothing ignored.
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    x = torch.randn(2, 3, export_size, export_size)
    with torch.no_grad():
        expected = backbone.forward_features(x)  # timm resamples its position grid for other sizes
        got = model.eval()(pixel_values=x).last_hidden_state
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < TOL
    assert (got[:, 0] - backbone(x)).abs().max().item() < TOL


def test_backbone_folder_is_native(tmp_path):
    from transformers import AutoImageProcessor, ViTImageProcessor

    out = save_backbone(perturbed_backbone(), tmp_path / "bb", image_size=64, extra_config={"sewer_arch": "vit_tiny"})
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "vit" and config["architectures"] == ["ViTModel"]
    assert config["layer_norm_eps"] == 1e-6 and config["hidden_act"] == "gelu" and config["image_size"] == 64
    assert config["sewer_arch"] == "vit_tiny"
    assert "auto_map" not in config and "timm" not in json.dumps(config).lower()
    processor = AutoImageProcessor.from_pretrained(out)
    assert isinstance(processor, ViTImageProcessor)
    assert processor.size.height == processor.size.width == 64
    assert tuple(processor.image_mean) == pytest.approx(SEWER_MEAN)
    assert tuple(processor.image_std) == pytest.approx(SEWER_STD)
    assert int(processor.resample) == int(Image.Resampling.BICUBIC)


def test_image_processor_is_plain_resize_and_sewer_normalisation():
    processor = make_image_processor(32)
    image = random_image(1)
    got = processor(image, return_tensors="pt")["pixel_values"][0]
    ref = np.asarray(image.resize((32, 32), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    ref = torch.from_numpy((ref - np.array(SEWER_MEAN)) / np.array(SEWER_STD)).permute(2, 0, 1).float()
    assert got.shape == (3, 32, 32)
    # torchvision's bicubic resize differs from PIL's by rounding only.
    assert (got - ref).abs().mean().item() < 5e-3


def test_feature_extraction_pipeline(tmp_path):
    from transformers import AutoImageProcessor, ViTModel, pipeline

    out = save_backbone(perturbed_backbone(), tmp_path / "bb", image_size=64)
    image = random_image(2)
    features = np.asarray(pipeline("image-feature-extraction", model=str(out))(image))
    model = ViTModel.from_pretrained(out).eval()
    pixels = AutoImageProcessor.from_pretrained(out)(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model(pixel_values=pixels).last_hidden_state.numpy()
    assert features.shape == (1, 1 + 4 * 4, 192)
    np.testing.assert_allclose(features, expected, atol=1e-5)


def test_classifier_parity_pipeline_and_thresholds(tmp_path):
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification, pipeline

    clf = build_classifier(perturbed_backbone(img_size=64, seed=1), num_classes=17).eval()
    with torch.no_grad():
        clf.head.bias.copy_(torch.linspace(-2, 2, 17))
    thresholds = {code: round(0.3 + 0.02 * i, 2) for i, code in enumerate(CLASSES)}
    out = save_classifier(clf.backbone, clf.head, tmp_path / "clf", image_size=64, thresholds=thresholds)

    model, info = AutoModelForImageClassification.from_pretrained(out, output_loading_info=True)
    model.eval()
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.problem_type == "multi_label_classification"
    assert [model.config.id2label[i] for i in range(17)] == list(CLASSES)
    assert model.config.label2id == {c: i for i, c in enumerate(CLASSES)}
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert (model(pixel_values=x).logits - clf(x)).abs().max().item() < TOL

    image = random_image(3)
    results = pipeline("image-classification", model=str(out), top_k=17)(image)
    scores = {r["label"]: r["score"] for r in results}
    assert set(scores) == set(CLASSES)
    pixels = AutoImageProcessor.from_pretrained(out)(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = torch.sigmoid(model(pixel_values=pixels).logits)[0]
    np.testing.assert_allclose([scores[c] for c in CLASSES], expected.numpy(), atol=1e-5)
    assert abs(sum(scores.values()) - 1.0) > 0.5  # independent sigmoids, not a softmax

    np.testing.assert_allclose(load_classifier_thresholds(model), [thresholds[c] for c in CLASSES])
    np.testing.assert_allclose(load_classifier_thresholds(AutoConfig.from_pretrained(out)), [thresholds[c] for c in CLASSES])


def test_thresholds_default_and_validation(tmp_path):
    from transformers import ViTConfig

    clf = build_classifier(create_backbone("vit_tiny", img_size=32), num_classes=17)
    out = save_classifier(clf.backbone, clf.head, tmp_path / "clf", image_size=32)
    saved = json.loads((out / "config.json").read_text())["sewer_thresholds"]
    assert saved == {c: 0.5 for c in CLASSES}
    np.testing.assert_array_equal(load_classifier_thresholds(ViTConfig()), np.full(17, 0.5))
    with pytest.raises(ConfigError, match="FS"):
        save_classifier(clf.backbone, clf.head, tmp_path / "x", image_size=32, thresholds={"RB": 0.5}, verify=False)
    with pytest.raises(ConfigError, match="in \\[0, 1\\]"):
        save_classifier(clf.backbone, clf.head, tmp_path / "x", image_size=32, thresholds=[1.5] * 17, verify=False)
    with pytest.raises(ConfigError, match="17 thresholds"):
        save_classifier(clf.backbone, clf.head, tmp_path / "x", image_size=32, thresholds=[0.5] * 3, verify=False)
    with pytest.raises(ConfigError, match="192 -> 17"):
        save_classifier(clf.backbone, torch.nn.Linear(192, 5), tmp_path / "x", image_size=32)


def test_config_and_state_dict_mapping_details():
    backbone = create_backbone("vit_small", img_size=32)
    config = vit_config_from_timm(backbone, 224)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) == (
        384, 12, 6, 1536)
    assert config.patch_size == 16 and config.qkv_bias and config.image_size == 224
    sd = backbone.state_dict()
    mapped = timm_to_hf_state_dict(sd, 12)
    q, k, v = (mapped[f"vit.encoder.layer.3.attention.attention.{n}.weight"] for n in ("query", "key", "value"))
    assert torch.equal(torch.cat([q, k, v]), sd["blocks.3.attn.qkv.weight"])
    assert mapped["vit.embeddings.position_embeddings"].shape == (1, 5, 384)
    assert timm_to_hf_state_dict(sd, 12, grid_size=(14, 14))["vit.embeddings.position_embeddings"].shape == (1, 197, 384)
    with pytest.raises(ConfigError, match="head.weight"):
        timm_to_hf_state_dict({**sd, "head.weight": torch.zeros(2, 384)}, 12)
    with pytest.raises(ConfigError, match="multiple"):
        vit_config_from_timm(backbone, 100)


def test_backbone_round_trips_to_timm_for_further_training(tmp_path):
    from sewer_hf.models.hf_export import load_timm_backbone, save_backbone
    from sewer_hf.models.vit import create_backbone

    torch.manual_seed(0)
    original = create_backbone("vit_tiny", img_size=64).eval()
    save_backbone(original, tmp_path / "bb", image_size=64, verify=False)
    loaded = load_timm_backbone(tmp_path / "bb").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(original(x), loaded(x), atol=1e-6)
    for key, value in original.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
