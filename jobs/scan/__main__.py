import sys

from jobs.scan import main

sys.exit(main())
