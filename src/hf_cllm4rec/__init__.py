"""CLLM4Rec: collaborative large language models for recommendation, the transformers way."""

__version__ = "0.1.0"
