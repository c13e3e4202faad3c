"""Planning from shapes alone: tilings, the strategy registry, cost models and the plan."""
