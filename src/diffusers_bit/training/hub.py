# Copyright 2026 The diffusers-bit authors. Licensed under the Apache License, Version 2.0.
r"""Model cards and Hub uploads at the end of a training run.

The upload goes through `huggingface_hub.create_repo` and `huggingface_hub.upload_folder`, looked up on the module at
call time (tests replace exactly those two functions). Checkpoint folders and temp files are never uploaded.
"""

import os
from pathlib import Path
from typing import Optional, Union

import huggingface_hub

from .. import model_card
from ..model_card import render_model_card
from .tokenizer_stages import STAGES

# what never leaves the machine: resumable checkpoints, their temp/trash folders, temp files of atomic writes
UPLOAD_IGNORE_PATTERNS = [
    "checkpoint-*",
    "checkpoint-*/**",
    ".tmp-*",
    ".tmp-*/**",
    ".trash-*",
    ".trash-*/**",
    "*.tmp-*",
]


def create_hub_repo(repo_id: str, token: Optional[str] = None, private: Optional[bool] = None) -> str:
    """Create (or reuse) a model repo; returns its full id (`namespace/name`)."""
    url = huggingface_hub.create_repo(repo_id, exist_ok=True, token=token, private=private, repo_type="model")
    return getattr(url, "repo_id", None) or repo_id


def write_model_card(
    pipeline,
    folder: Union[str, os.PathLike],
    repo_id: str,
    training: dict,
    base_model: Optional[str] = None,
    description: str = "",
) -> Path:
    r"""Render the card from the `model_cards/` templates (with the training section: `data`, `steps`,
    `hyperparameters`, `metrics`, `script`) and write it to `<folder>/README.md`."""
    card = render_model_card(pipeline, repo_id, description=description, training=training, base_model=base_model)
    path = Path(folder) / "README.md"
    path.write_text(card, encoding="utf-8")
    return path


def upload_training_folder(
    folder: Union[str, os.PathLike],
    repo_id: str,
    token: Optional[str] = None,
    commit_message: str = "End of training",
    ignore_patterns: Optional[list[str]] = None,
) -> str:
    r"""Upload the final pipeline folder (model card included) to `repo_id`, without checkpoints.

    Args:
        ignore_patterns (`list[str]`, *optional*): Extra patterns to leave out, added to `UPLOAD_IGNORE_PATTERNS`.
    """
    patterns = UPLOAD_IGNORE_PATTERNS + list(ignore_patterns or [])
    return huggingface_hub.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        commit_message=commit_message,
        ignore_patterns=patterns,
        token=token,
        repo_type="model",
    )


def render_tokenizer_card(tokenizer, repo_id: str, stage: int, training: Optional[dict] = None, **kwargs) -> str:
    """[`~diffusers_bit.model_card.render_tokenizer_card`] with the summary of `stage`."""
    return model_card.render_tokenizer_card(
        tokenizer, repo_id, stage=stage, stage_summary=STAGES[stage].summary, training=training, **kwargs
    )
