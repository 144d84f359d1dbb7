import sys

from jobs.demo import main

sys.exit(main())
