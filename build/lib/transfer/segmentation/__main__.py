from transfer.segmentation.runner import main

raise SystemExit(main())
