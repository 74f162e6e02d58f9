"""Packing of samples into fixed-length training sequences."""

from ovpipe.packing.bfd import next_fit, pack_lengths, pack_stats, reference_bfd

__all__ = ["next_fit", "pack_lengths", "pack_stats", "reference_bfd"]
