import sys

from jobs.report import main

sys.exit(main())
