from lumbar.cli import main

raise SystemExit(main())
