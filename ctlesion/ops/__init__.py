"""Parameter-free slice-shift operators (AlignShift, TSM)."""

from ctlesion.ops.shift import align_shift, temporal_shift

__all__ = ["align_shift", "temporal_shift"]
