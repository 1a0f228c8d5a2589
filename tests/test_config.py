from pathlib import Path

import pytest

from sewer_hf.config import FinetuneConfig, PretrainConfig, config_from_argv, load_config, parse_overrides
from sewer_hf.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "configs"


def test_paper_configs_hold_the_paper_values():
    for name, arch in (("vit_tiny_dino.yaml", "vit_tiny"), ("vit_small_dino.yaml", "vit_small")):
        cfg = load_config(PretrainConfig, str(CONFIGS / name))
        assert cfg.arch == arch
        assert (cfg.epochs, cfg.base_lr, cfg.warmup_epochs, cfg.start_warmup_lr, cfg.min_lr) == (35, 5e-5, 10, 3e-5, 1e-6)
        assert (cfg.momentum_teacher, cfg.momentum_teacher_end) == (0.996, 0.999)
        assert (cfg.out_dim, cfg.hidden_dim, cfg.bottleneck_dim) == (32768, 2048, 256)
        assert cfg.n_local_crops == 0 and cfg.global_crop_scale == (0.5, 1.0) and cfg.image_size == 224
    multicrop = load_config(PretrainConfig, str(CONFIGS / "vit_tiny_dino_multicrop.yaml"))
    assert multicrop.n_local_crops > 0
    smoke = load_config(PretrainConfig, str(CONFIGS / "smoke_dino.yaml"))
    assert smoke.image_size < 224 and smoke.data is None


def test_overrides_are_typed_and_win_over_the_file():
    cfg = config_from_argv(PretrainConfig, ["--config", str(CONFIGS / "smoke_dino.yaml"), "--epochs", "2",
                                            "--max_steps=7", "--batch-size", "4", "--hybrid", "--base_lr", "4e-3",
                                            "--global_crop_scale", "0.4,1.0", "--resume_from_checkpoint", "latest",
                                            "--data", "none"])
    assert (cfg.epochs, cfg.max_steps, cfg.batch_size, cfg.hybrid, cfg.base_lr) == (2, 7, 4, True, 4e-3)
    assert cfg.global_crop_scale == (0.4, 1.0)
    assert cfg.resume_from_checkpoint == "latest" and cfg.data is None


def test_milestones_take_any_number_of_epochs():
    cfg = config_from_argv(FinetuneConfig, ["--lr_milestones", "[3, 5, 7]"])
    assert cfg.lr_milestones == (3, 5, 7)
    assert config_from_argv(FinetuneConfig, ["--lr_milestones", "15,35"]).lr_milestones == (15, 35)
    with pytest.raises(ConfigError, match="lr_milestones=.*expected a number"):
        config_from_argv(FinetuneConfig, ["--lr_milestones", "3,x"])
    with pytest.raises(ConfigError, match="in order"):
        config_from_argv(FinetuneConfig, ["--lr_milestones", "7,5,3"])


@pytest.mark.parametrize("argv, message", [
    (["--epoch", "3"], "unknown option --epoch"),
    (["--epochs", "three"], "epochs='three': expected a number"),
    (["--epochs", "2.5"], "expected a whole number"),
    (["--hybrid", "maybe"], "expected true or false"),
    (["--mixed_precision", "fp8"], "expected one of no, fp16, bf16"),
    (["--teacher_temp", "0.1"], "unstable above 0.07"),
    (["--image_size", "100"], "multiple of the patch size"),
    (["--config", "nope.yaml"], "config file not found"),
])
def test_bad_options_name_the_key(argv, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        config_from_argv(PretrainConfig, argv)


def test_unknown_yaml_key_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 3\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'learning_rate'"):
        load_config(PretrainConfig, str(bad))


def test_parse_overrides_rejects_positional():
    with pytest.raises(ConfigError, match="expected --key value"):
        parse_overrides(["epochs", "3"])
