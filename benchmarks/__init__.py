"""Benchmarks of the CLLM4Rec package against classic recommenders."""
