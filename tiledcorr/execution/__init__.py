"""Executes plans: the tile loop, workspace, gather/scatter, sinks, the exact NaN/Inf path and OOM retries."""
