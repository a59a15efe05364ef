from pushguard.cli import main

raise SystemExit(main())
