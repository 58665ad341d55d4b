import sys

from dense.bench.cli import main

sys.exit(main())
