from gaffer.cli import main

raise SystemExit(main())
