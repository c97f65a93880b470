"""The one exception type users see: a clear, one-line message naming the input at fault."""


class PiSAError(ValueError):
    """Bad input (file, image, option) for PiSA-SR. The message names it and says what was expected."""
