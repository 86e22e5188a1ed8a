"""Training stages: one file each, a Config dataclass and an explicit train(cfg) loop."""
