"""`python -m pisa_core.train [options]` = `pisa-sr train [options]` (for `accelerate launch -m`)."""

import sys

from ..cli.train import train_main
from ..errors import PiSAError

if __name__ == "__main__":
    try:
        sys.exit(train_main())
    except PiSAError as error:
        print(f"pisa-sr train: error: {error}", file=sys.stderr)
        sys.exit(2)
