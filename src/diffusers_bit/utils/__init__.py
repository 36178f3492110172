from .bit_packing import pack_bits, unpack_bits
from .torch_utils import bernoulli, uniform_bits
