"""ctlesion: universal lesion detection in CT with the thickness-aware AlignShift detector."""

__version__ = "0.1.0"
