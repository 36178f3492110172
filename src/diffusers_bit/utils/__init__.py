from .bit_packing import pack_bits, unpack_bits
from .torch_utils import bernoulli, sample_bits, tempered_sigmoid, uniform_bits
