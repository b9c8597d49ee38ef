from desmpi.cli import main

raise SystemExit(main())
