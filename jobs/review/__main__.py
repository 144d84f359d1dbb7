import sys

from jobs.review import main

sys.exit(main())
