import sys

from transfer.detection.runner import main

sys.exit(main())
