"""Packing of samples into fixed-length training sequences."""

from ovpipe.packing.bfd import next_fit, pack_lengths, reference_bfd
from ovpipe.packing.multidim import pack_multidim
from ovpipe.packing.multidim_bound import multidim_lower_bound
from ovpipe.packing.multidim_reference import reference_multidim
from ovpipe.packing.stats import pack_stats

__all__ = ["multidim_lower_bound", "next_fit", "pack_lengths", "pack_multidim", "pack_stats", "reference_bfd",
           "reference_multidim"]
