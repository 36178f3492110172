"""Helpers shared by the tests: analytic images, tiny component builders."""

from pathlib import Path

import torch

FIXTURES = Path(__file__).parent / "fixtures"
PARITY = FIXTURES / "official_parity"


def analytic_images(batch: int, size: int) -> torch.Tensor:
    """Deterministic smooth images in [-1, 1], `(batch, 3, size, size)`, computed in float64 (the parity fixtures were
    made from exactly these)."""
    y = torch.linspace(-1, 1, size, dtype=torch.float64)
    yy, xx = torch.meshgrid(y, y, indexing="ij")
    imgs = []
    for b in range(batch):
        chans = [
            torch.sin((3 + b + c) * xx + (2 - c) * (1 + b) * yy) * torch.cos((1 + c) * 4 * xx * yy) for c in range(3)
        ]
        imgs.append(torch.stack(chans))
    return torch.stack(imgs).float()


def tiny_bert_text_components():
    """`(tokenizer, BertModel)`: a 2-layer BERT (width 32) with a word-piece tokenizer built with `tokenizers`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + list("abcdefghijklmnopqrstuvwxyz") + ["red", "cat", "dog"]
    core = Tokenizer(models.WordPiece({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer()
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        model_max_length=128,
    )
    torch.manual_seed(0)
    bert = BertModel(
        BertConfig(
            vocab_size=len(vocab),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        )
    ).eval()
    return tokenizer, bert
