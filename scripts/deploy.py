"""Deploy the NodeAI Hub contracts: see nodeai/chain/deploy.py or run with --help."""

import sys

from nodeai.chain.deploy import main

if __name__ == "__main__":
    sys.exit(main())
