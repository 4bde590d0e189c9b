"""`python -m billing_service` is the `billing-service` command."""

from billing_service.cli import main

raise SystemExit(main())
