from .binary_latent_tokenizer import (
    BinaryLatentTokenizer,
    BinaryTokenizerDecoderOutput,
    BinaryTokenizerEncoderOutput,
    BinaryTokenizerOutput,
)
from .binary_quantizer import BinaryQuantizer
from .text_conditioning import TextKV, text_layer_indices
from .transformer_bit_ar import BinaryARCache, BinaryARTransformer
from .transformer_bit_dit import BinaryDiT
