"""Names of the self-supervised methods and augmentations (pure data: read by the config without torch)."""

AUGMENTATIONS = ("flip", "rot90", "crop", "noise", "band_drop")
SSL_METHODS = ("vicreg",)
