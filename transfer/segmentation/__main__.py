import sys

from transfer.segmentation.runner import main

sys.exit(main())
