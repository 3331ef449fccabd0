from mosare.cli import main

raise SystemExit(main())
