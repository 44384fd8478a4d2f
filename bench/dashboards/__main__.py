from bench.dashboards.generate import main

raise SystemExit(main())
