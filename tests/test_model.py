"""The model family: backbones, DINO head, multi-crop wrapper, student/teacher, classifier."""
import pytest
import torch
from timm.layers import DropPath

from sewer_hf.errors import ConfigError
from sewer_hf.models.vit import (
    ARCHS,
    DINOHead,
    LinearClassifier,
    MultiCropWrapper,
    build_classifier,
    build_student_teacher,
    create_backbone,
)

K = 64  # small prototype count keeps the tests fast


def small_pair(**kwargs):
    return build_student_teacher("vit_tiny", img_size=64, out_dim=K, hidden_dim=32, bottleneck_dim=16, **kwargs)


@pytest.mark.parametrize("arch", ["vit_tiny", ARCHS["vit_tiny"]])
def test_backbone_takes_any_input_size(arch):
    backbone = create_backbone(arch, img_size=64).eval()
    assert backbone.num_features == 192
    for h, w in [(64, 64), (96, 80), (32, 48)]:
        assert backbone(torch.randn(2, 3, h, w)).shape == (2, 192)


def test_backbone_small_and_bad_names():
    assert create_backbone("vit_small", img_size=32).num_features == 384
    with pytest.raises(ConfigError, match="vit_huge"):
        create_backbone("vit_huge")
    with pytest.raises(ConfigError, match="multiple"):
        create_backbone("vit_tiny", img_size=100)


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_dino_head_shapes_and_normalised_prototypes(norm_last_layer):
    torch.manual_seed(0)
    head = DINOHead(48, out_dim=K, hidden_dim=32, bottleneck_dim=16, norm_last_layer=norm_last_layer)
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(48, 32), (32, 32), (32, 16)]
    x = torch.randn(5, 48) * 10
    out = head(x)
    assert out.shape == (5, K)
    # Unit-norm bottleneck times unit-norm prototypes: every logit is a cosine in [-1, 1].
    assert out.abs().max() <= 1.0 + 1e-5
    assert torch.allclose(head.last_layer.weight.norm(dim=1), torch.ones(K), atol=1e-5)
    z = torch.nn.functional.normalize(head.mlp(x), dim=-1)
    assert torch.allclose(out, z @ head.last_layer.weight.T, atol=1e-6)

    g = head.last_layer.parametrizations.weight.original0
    assert g.requires_grad is (not norm_last_layer)
    opt = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=1.0)
    head(x).pow(2).sum().backward()
    opt.step()
    assert torch.equal(g, torch.ones_like(g)) is norm_last_layer


def test_student_teacher_identical_teacher_frozen_without_drop_path():
    student, teacher = small_pair()
    s_sd, t_sd = student.state_dict(), teacher.state_dict()
    assert s_sd.keys() == t_sd.keys()
    assert all(torch.equal(s_sd[k], t_sd[k]) for k in s_sd)
    assert not any(p.requires_grad for p in teacher.parameters())
    assert any(p.requires_grad for p in student.parameters())
    assert not any(isinstance(m, DropPath) for m in teacher.modules())
    assert any(isinstance(m, DropPath) for m in student.modules())
    # Keys stay stable after a forward (weight-norm parametrisation), so reloading works.
    student(torch.randn(2, 3, 64, 64))
    teacher.load_state_dict(student.state_dict())


def test_multicrop_two_global_two_local_grouped_by_resolution():
    torch.manual_seed(0)
    student, _ = small_pair()
    student.eval()
    calls = []
    student.backbone.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    B = 3
    crops = [torch.randn(B, 3, 64, 64) for _ in range(2)] + [torch.randn(B, 3, 32, 32) for _ in range(2)]
    out, feats = student(crops, return_features=True)
    assert out.shape == (4 * B, K) and feats.shape == (4 * B, 192)
    assert calls == [2 * B, 2 * B]  # one backbone pass per resolution group
    with torch.no_grad():
        per_crop = torch.cat([student.head(student.forward_features(c)) for c in crops])
    assert torch.allclose(out, per_crop, atol=1e-5)
    assert student(crops[0]).shape == (B, K)


def test_wrapper_accepts_custom_modules():
    wrapper = MultiCropWrapper(torch.nn.Flatten(), torch.nn.Identity())
    crops = [torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 1, 1)]
    out = wrapper(crops[:2])
    assert out.shape == (4, 4) and out[:2].eq(1).all() and out[2:].eq(0).all()


@pytest.mark.parametrize("freeze", [False, True])
def test_linear_classifier(freeze):
    backbone = create_backbone("vit_tiny", img_size=32, drop_path_rate=0.1)
    clf = build_classifier(backbone, num_classes=17, freeze_backbone=freeze)
    assert isinstance(clf, LinearClassifier) and clf.backbone is backbone
    clf.train()
    assert backbone.training is (not freeze)
    logits = clf(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 17)
    logits.sum().backward()
    assert clf.head.weight.grad is not None
    backbone_grads = [p.grad is not None for p in backbone.parameters()]
    assert all(backbone_grads) if not freeze else not any(backbone_grads)
