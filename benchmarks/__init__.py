"""Speed and memory benchmarks of diffusers-bit. Run `python benchmarks/run_benchmarks.py --help`."""
