"""Building blocks shared by several models: backbones, audio and text encoders, frozen wrappers, attention, losses."""
