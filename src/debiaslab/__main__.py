from debiaslab.cli import main

raise SystemExit(main())
