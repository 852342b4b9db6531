"""Recipe files: strict schema, dotted errors naming the file, --set overrides before validation."""

from __future__ import annotations

import pytest

from detbin import config
from detbin.core.errors import ConfigError
from fake_recipes import Good


def write(tmp_path, text: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_typo_names_file_and_dotted_key(tmp_path):
    path = write(tmp_path, "train:\n  optimizer:\n    lerning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=rf"{path}: train\.optimizer\.lerning_rate: unknown key"):
        config.load(path)


def test_typo_gets_a_suggestion(tmp_path):
    path = write(tmp_path, "train:\n  batch_sise: 4\n")
    with pytest.raises(ConfigError, match=r"train\.batch_sise: unknown key \(did you mean: batch_size\?\)"):
        config.load(path)


def test_wrong_value_names_the_key(tmp_path):
    path = write(tmp_path, "train:\n  batch_size: 0\n")
    with pytest.raises(ConfigError, match=r"train\.batch_size: Input should be greater than or equal to 1 \(got 0\)"):
        config.load(path)


def test_set_overrides_apply_before_validation(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 12\n")
    loaded, raw = config.load(path, ["train.epochs=2", "binarize.keep_real=[rpn.*]", "eval.metric=voc12"])
    assert loaded.train.epochs == 2 and raw["train"]["epochs"] == 2
    assert loaded.binarize.keep_real == ("rpn.*",) and loaded.eval.metric == "voc12"
    with pytest.raises(ConfigError, match=r"train\.epoks: unknown key"):
        config.load(path, ["train.epoks=2"])


def test_bad_set_syntax():
    with pytest.raises(ConfigError, match="expected KEY.PATH=VALUE"):
        config.parse_overrides(["train.epochs"])


def test_invalid_yaml_says_where(tmp_path):
    path = write(tmp_path, "train:\n  epochs: [1, 2\n")
    with pytest.raises(ConfigError, match=rf"{path}: invalid YAML at line"):
        config.load(path)


def test_recipe_params_validated_by_the_recipe(tmp_path):
    assert config.validate_params(Good.Params, {"weight": 2}, "x.yaml").weight == 2.0
    with pytest.raises(ConfigError, match=r"x\.yaml: params\.wieght: unknown key \(did you mean: weight\?\)"):
        config.validate_params(Good.Params, {"wieght": 2}, "x.yaml")


def test_shipped_recipe_files_validate_with_their_recipes_params():
    from detbin.training import plugins

    files = sorted(config.recipes_dir().rglob("*.yaml"))
    assert len(files) >= 12
    for path in files:
        loaded, _ = config.load(path)
        if loaded.recipe is not None:
            config.validate_params(plugins.load(loaded.recipe).Params, loaded.params, str(path))


def test_find_recipe_file_by_variant_name():
    assert config.find_recipe_file("tiny_synthetic", "reactnet").name == "tiny_synthetic.yaml"
    with pytest.raises(ConfigError, match="no recipe file 'tiny_synthetc' for 'reactnet' \\(did you mean: tiny_synthetic"):
        config.find_recipe_file("tiny_synthetc", "reactnet")


def test_checkpoint_sections_reject_unknown_keys_by_name():
    from detbin.models.config import DetectorConfig
    from detbin.models.layout import BinarizeSpec

    with pytest.raises(ConfigError, match=r"detector: unknown key\(s\) \['widht_mult'\]"):
        DetectorConfig.from_dict({"arch": "fasterrcnn_resnet18_fpn", "widht_mult": 0.25})
    with pytest.raises(ConfigError, match=r"binarize: unknown key\(s\) \['fomr'\]"):
        BinarizeSpec.from_dict({"fomr": "reactnet"})


def test_without_config_a_run_uses_the_file_that_suits_the_device():
    cpu, why = config.default_recipe_file("reactnet", cuda=False)
    assert cpu.name == "tiny_synthetic.yaml" and "no CUDA device" in why and "fasterrcnn_r18_fpn_voc" in why
    gpu, why = config.default_recipe_file("reactnet", cuda=True)
    assert gpu.name == "fasterrcnn_r18_fpn_voc.yaml" and "paper" in why
    assert config.default_recipe_file("bidet", cuda=False)[0].name == "tiny_synthetic_frcnn.yaml"  # first tiny file
    assert config.default_recipe_file("bidet", cuda=True)[0].name == "fasterrcnn_r18_c4_voc.yaml"  # first paper file
    assert config.default_recipe_file("teacher", cuda=False)[0].name == "tiny_synthetic.yaml"
