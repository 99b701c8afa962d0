import sys

from diffmas.cli import main

sys.exit(main())
