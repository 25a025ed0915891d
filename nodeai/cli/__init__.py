"""The ``nodeai`` command line: wallets, models, agents, jobs, inference escrow and receipts.

One module per command group, all mounted on the top-level group of
``nodeai.cli.main``::

    main.py      top-level group, error handling and exit codes, ``main()``
    global_options.py  ``--rpc-url``, ``--json``, ...: one table, accepted before and after any subcommand
    context.py   the shared context: network settings, chain, wallet, indexer, IPFS
    config.py    the user's config file (``$NODEAI_HOME/config.toml``)
    output.py    human text or ``--json``, tables, amounts in token units
    wallet.py    ``login``, ``whoami``
    infer.py     ``infer``: one chat completion paid by voucher, its receipt checked and kept
    models.py    ``models deploy|list``
    agents.py    ``agents create|run|list``
    jobs.py      ``jobs list|show|dispute|refund|finalize``
    escrow.py    ``escrow deposit|withdraw|balance``
    receipts.py  ``receipts verify``
    dev.py       ``dev up|down|faucet``: a local marketplace (``scripts/demo.py --keep-running``), test tokens

Exit codes: 0 success, 1 failure (network, chain, a check that did not
pass), 2 user error (bad input, wrong password, a transaction the contract
refuses); see ``nodeai.cli.errors``.
"""
