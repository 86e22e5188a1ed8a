"""Load a causal language model from a local Hugging Face directory, with clear errors.

Any directory written by ``save_pretrained`` of a causal LM (GPT-2, Llama, Mistral, Qwen, ...)
works: ``config.json`` plus ``model.safetensors`` / ``pytorch_model.bin`` or a sharded index.
The hub is never contacted (``local_files_only=True``). Everything cheap (the directory, the
config, the model type, the weight files) is checked before the weights are read, so a wrong
``--model`` fails in milliseconds with a message that names the directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
)
from transformers.utils import (
    ADAPTER_CONFIG_NAME,
    CONFIG_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
)

from rlfm.errors import ConfigError, ModelError
from rlfm.models.attention import use_fast_attention

_WEIGHT_FILES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)


def _has_weights(directory: Path) -> bool:
    return any((directory / name).is_file() for name in _WEIGHT_FILES)


def _read_config(directory: Path) -> dict[str, Any]:
    config_file = directory / CONFIG_NAME
    if not config_file.is_file():
        hint = ""
        if (directory / ADAPTER_CONFIG_NAME).is_file():
            hint = " (it holds a PEFT adapter: load its base model and apply the adapter)"
        raise ModelError(f"model directory {str(directory)!r} has no {CONFIG_NAME}{hint}")
    return read_json_object(config_file)


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in the file ``path``; ModelError naming it when it cannot be read or
    holds something else."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read {str(path)!r}: {e}") from e
    if not isinstance(data, dict):
        raise ModelError(f"{str(path)!r} is not a JSON object")
    return data


def _check_class(directory: Path, config: dict[str, Any], mapping: Any, what: str) -> None:
    """The config's model type is known and in ``mapping`` (else: "holds a ... model, ``what``")."""
    _check_model_type(directory, config)
    model_type = config["model_type"]
    if model_type not in mapping:
        raise ModelError(f"model directory {str(directory)!r} holds a {model_type!r} model, {what}")


def _check_model_type(directory: Path, config: dict[str, Any]) -> None:
    model_type = config.get("model_type")
    if not model_type:
        raise ModelError(f"{str(directory / CONFIG_NAME)!r} has no 'model_type'")
    if model_type not in CONFIG_MAPPING_NAMES:
        raise ModelError(
            f"model directory {str(directory)!r} has model_type {model_type!r}, which this "
            "transformers version does not know (rlfm does not run remote model code)"
        )


def _check_weights(directory: Path) -> None:
    if not _has_weights(directory):
        raise ModelError(
            f"model directory {str(directory)!r} holds no weights "
            f"(looked for {', '.join(_WEIGHT_FILES)})"
        )
    for index_name in (SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_INDEX_NAME):
        index = directory / index_name
        if not index.is_file():
            continue
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise ModelError(f"cannot read the weight index {str(index)!r}: {e}") from e
        missing = sorted(s for s in shards if not (directory / s).is_file())
        if missing:
            raise ModelError(
                f"model directory {str(directory)!r} is missing weight shards: {', '.join(missing)}"
            )


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | str | None:
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ConfigError(f"dtype={dtype!r} is not a torch dtype (e.g. 'float32', 'bfloat16')")
    return resolved


def _checked_directory(path: str | Path) -> tuple[Path, dict[str, Any]]:
    directory = Path(path)
    if not directory.exists():
        raise ModelError(f"model directory {str(directory)!r} does not exist")
    if not directory.is_dir():
        raise ModelError(f"model path {str(directory)!r} is not a directory")
    return directory, _read_config(directory)


def load_causal_lm(path: str | Path, *, dtype: torch.dtype | str | None = None) -> PreTrainedModel:
    """Load the causal LM saved in the local directory ``path`` (on CPU), on rlfm's attention
    where it was on SDPA (:func:`rlfm.models.attention.use_fast_attention`).

    ``dtype``: a ``torch.dtype``, its name (``"bfloat16"``), ``"auto"`` (the dtype recorded in
    the config) or ``None`` (float32). Raises ModelError naming the directory when it is
    missing, is not a directory, lacks or has an unreadable ``config.json``, holds a model that
    is not a causal LM, or lacks weights.
    """
    directory, config = _checked_directory(path)
    causal = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    what = "which is not a causal language model (no AutoModelForCausalLM class for it)"
    _check_class(directory, config, causal, what)
    _check_weights(directory)
    torch_dtype = _resolve_dtype(dtype)
    kwargs: dict[str, Any] = {} if torch_dtype is None else {"dtype": torch_dtype}
    try:
        model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, **kwargs)
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:  # corrupt weights
        raise ModelError(f"cannot load the model in {str(directory)!r}: {e}") from e
    return use_fast_attention(model)


def num_labels(config: dict[str, Any]) -> int:
    """The number of outputs a sequence classifier's ``config.json`` gives it (transformers'
    rule: ``num_labels``, else the size of ``id2label``, else 2)."""
    if isinstance(config.get("num_labels"), int):
        return int(config["num_labels"])
    id2label = config.get("id2label")
    return len(id2label) if isinstance(id2label, dict) and id2label else 2


def load_sequence_classifier(path: str | Path) -> PreTrainedModel:
    """Load the one-label ``AutoModelForSequenceClassification`` saved in the local directory
    ``path`` (on CPU, in the dtype its config records), with the checks of
    :func:`load_causal_lm`; a classifier with more than one label is a ModelError."""
    directory, config = _checked_directory(path)
    classifiers = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    what = "for which transformers has no sequence-classification class"
    _check_class(directory, config, classifiers, what)
    labels = num_labels(config)
    if labels != 1:
        raise ModelError(
            f"model directory {str(directory)!r} holds a sequence classifier with {labels} "
            "labels; a reward model has one (a scalar score)"
        )
    _check_weights(directory)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:  # corrupt weights
        raise ModelError(f"cannot load the model in {str(directory)!r}: {e}") from e
    return use_fast_attention(model)
