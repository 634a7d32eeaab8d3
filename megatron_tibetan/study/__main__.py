"""``python -m megatron_tibetan.study``: see :mod:`megatron_tibetan.study.cli`."""

from megatron_tibetan.study.cli import main

raise SystemExit(main())
