import sys

from jobs.train import main

sys.exit(main())
