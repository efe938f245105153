"""`python -m agentcg.cli.doctor [--json] [--root PATH]`."""

import sys

from agentcg.cli.doctor.report import main

sys.exit(main())
