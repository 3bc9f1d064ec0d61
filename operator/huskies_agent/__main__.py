from huskies_agent.cli import main

raise SystemExit(main())
