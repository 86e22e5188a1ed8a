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
from transformers import AutoModelForCausalLM, PreTrainedModel
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
from transformers.utils import (
    ADAPTER_CONFIG_NAME,
    CONFIG_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
)

from rlfm.errors import ConfigError, ModelError

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
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"cannot read {str(config_file)!r}: {e}") from e
    if not isinstance(config, dict):
        raise ModelError(f"{str(config_file)!r} is not a JSON object")
    return config


def _check_causal_lm(directory: Path, config: dict[str, Any]) -> None:
    model_type = config.get("model_type")
    if not model_type:
        raise ModelError(f"{str(directory / CONFIG_NAME)!r} has no 'model_type'")
    if model_type not in CONFIG_MAPPING_NAMES:
        raise ModelError(
            f"model directory {str(directory)!r} has model_type {model_type!r}, which this "
            "transformers version does not know (rlfm does not run remote model code)"
        )
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelError(
            f"model directory {str(directory)!r} holds a {model_type!r} model, which is not a "
            "causal language model (no AutoModelForCausalLM class for it)"
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


def load_causal_lm(path: str | Path, *, dtype: torch.dtype | str | None = None) -> PreTrainedModel:
    """Load the causal LM saved in the local directory ``path`` (on CPU).

    ``dtype``: a ``torch.dtype``, its name (``"bfloat16"``), ``"auto"`` (the dtype recorded in
    the config) or ``None`` (float32). Raises ModelError naming the directory when it is
    missing, is not a directory, lacks or has an unreadable ``config.json``, holds a model that
    is not a causal LM, or lacks weights.
    """
    directory = Path(path)
    if not directory.exists():
        raise ModelError(f"model directory {str(directory)!r} does not exist")
    if not directory.is_dir():
        raise ModelError(f"model path {str(directory)!r} is not a directory")
    config = _read_config(directory)
    _check_causal_lm(directory, config)
    _check_weights(directory)
    torch_dtype = _resolve_dtype(dtype)
    kwargs: dict[str, Any] = {} if torch_dtype is None else {"dtype": torch_dtype}
    try:
        return AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, **kwargs)
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:  # corrupt weights
        raise ModelError(f"cannot load the model in {str(directory)!r}: {e}") from e
