"""Loading a local HF causal-LM directory, and the error for each way a directory can be wrong."""

import json
import shutil

import pytest
import torch

from rlfm.errors import ConfigError, ModelError
from rlfm.models.loading import load_causal_lm
from rlfm.models.presets import build_model, model_config


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny GPT-2 saved with save_pretrained, and the model itself."""
    model = build_model(model_config("tiny", context=32), seed=0).eval()
    directory = tmp_path_factory.mktemp("tiny_model")
    model.save_pretrained(directory)
    return directory, model


def _copy(saved, tmp_path):
    directory = tmp_path / "model"
    shutil.copytree(saved[0], directory)
    return directory


def test_load_saved_model_gives_same_logits(saved):
    """A model saved with save_pretrained loads back with identical logits."""
    directory, model = saved
    loaded = load_causal_lm(directory).eval()
    tokens = torch.randint(0, model.config.vocab_size, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(loaded(tokens).logits, model(tokens).logits)


def test_load_llama_with_dtype(tmp_path):
    """A Llama directory loads too, in the dtype asked for by name."""
    build_model(model_config("llama-tiny", context=32), seed=0).save_pretrained(tmp_path)
    loaded = load_causal_lm(tmp_path, dtype="bfloat16")
    assert loaded.dtype == torch.bfloat16
    assert type(loaded).__name__ == "LlamaForCausalLM"


def test_bad_dtype_names_field(saved):
    """An unknown dtype name raises ConfigError naming dtype."""
    with pytest.raises(ConfigError, match="dtype"):
        load_causal_lm(saved[0], dtype="float33")


def test_missing_directory(tmp_path):
    """A path that does not exist raises ModelError naming it."""
    path = tmp_path / "nope"
    with pytest.raises(ModelError, match="does not exist") as err:
        load_causal_lm(path)
    assert str(path) in str(err.value)


def test_not_a_directory(saved):
    """A file instead of a directory raises ModelError naming it."""
    path = saved[0] / "config.json"
    with pytest.raises(ModelError, match="not a directory") as err:
        load_causal_lm(path)
    assert str(path) in str(err.value)


def test_no_config(saved, tmp_path):
    """A directory without config.json raises ModelError naming the directory."""
    directory = _copy(saved, tmp_path)
    (directory / "config.json").unlink()
    with pytest.raises(ModelError, match="no config.json") as err:
        load_causal_lm(directory)
    assert str(directory) in str(err.value)


def test_unreadable_config(saved, tmp_path):
    """A config.json that is not valid JSON raises ModelError naming the file."""
    directory = _copy(saved, tmp_path)
    (directory / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot read") as err:
        load_causal_lm(directory)
    assert str(directory / "config.json") in str(err.value)


def test_not_a_causal_lm(saved, tmp_path):
    """A config whose model type has no causal-LM class (ViT) raises ModelError naming the dir."""
    directory = _copy(saved, tmp_path)
    (directory / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(ModelError, match="not a causal language model") as err:
        load_causal_lm(directory)
    assert str(directory) in str(err.value)


def test_unknown_model_type(saved, tmp_path):
    """A model type transformers does not know raises ModelError naming the dir."""
    directory = _copy(saved, tmp_path)
    (directory / "config.json").write_text(json.dumps({"model_type": "my-own-gpt"}))
    with pytest.raises(ModelError, match="does not know") as err:
        load_causal_lm(directory)
    assert str(directory) in str(err.value)


def test_weights_missing(saved, tmp_path):
    """A directory with config.json but no weight file raises ModelError naming the dir."""
    directory = _copy(saved, tmp_path)
    (directory / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="holds no weights") as err:
        load_causal_lm(directory)
    assert str(directory) in str(err.value)


def test_missing_shard(saved, tmp_path):
    """A sharded index that lists a missing shard raises ModelError naming the shard."""
    directory = _copy(saved, tmp_path)
    (directory / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00001-of-00002.safetensors"}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelError, match="model-00001-of-00002.safetensors") as err:
        load_causal_lm(directory)
    assert str(directory) in str(err.value)


def test_corrupt_weights(saved, tmp_path):
    """A weights file that is not safetensors raises ModelError naming the dir."""
    directory = _copy(saved, tmp_path)
    (directory / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="cannot load the model") as err:
        load_causal_lm(directory)
    assert str(directory) in str(err.value)
