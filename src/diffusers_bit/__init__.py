"""diffusers-bit: Instella-T2I (text-to-image in a 1D binary latent space) for Hugging Face diffusers."""

# diffusers resolves the load method of a third-party component by looking these names up on its module.
from diffusers import ConfigMixin, DiffusionPipeline, ModelMixin, SchedulerMixin  # noqa: F401

from .models import (
    BinaryARCache,
    BinaryARTransformer,
    BinaryDiT,
    BinaryLatentTokenizer,
    BinaryQuantizer,
    TextKV,
    text_layer_indices,
)
from .pipelines import InstellaARPipeline, InstellaT2IImg2ImgPipeline, InstellaT2IPipeline
from .presets import build_pipeline, load_preset_config
from .schedulers import BernoulliScheduler, BernoulliSchedulerOutput
from .utils import pack_bits, preferred_dtype, unpack_bits

__version__ = "0.1.0"
