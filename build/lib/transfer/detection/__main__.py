from transfer.detection.runner import main

raise SystemExit(main())
