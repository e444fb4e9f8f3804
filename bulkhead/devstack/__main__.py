import sys

from bulkhead.devstack.cli import main

sys.exit(main())
