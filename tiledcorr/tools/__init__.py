"""Tools built on the public API: the command line, the demo, profiling, measurement and plots."""
