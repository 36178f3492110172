from .bit_packing import pack_bits, unpack_bits
from .hardware import preferred_dtype
from .torch_utils import bernoulli, sample_bits, tempered_sigmoid, uniform_bits
