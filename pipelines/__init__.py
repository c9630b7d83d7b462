"""The Ray jobs: thin wiring from flags to a config to Ray Data / Ray Train (the work is in ``discohead``)."""
