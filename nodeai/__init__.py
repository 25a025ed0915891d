"""NodeAI Hub: an on-chain-first marketplace for AI model hosting and agent jobs.

Subpackages (each a top-level folder of the repository):

* ``nodeai.chain``   - contracts from Python: compile, deploy, job structs, vouchers, receipts
* ``nodeai.node``    - provider daemon            (``node/``)
* ``nodeai.indexer`` - chain view and job feed    (``indexer/``)
* ``nodeai.serving`` - inference engines, gateway (``serving/``)
* ``nodeai.agents``  - agent runtime              (``agents/``)
"""

__version__ = "0.1.0"
