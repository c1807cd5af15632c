from transfer.classification.runner import main

raise SystemExit(main())
