"""Helpers several transfer methods share: text data loaders, dataset sources, the bundled language models."""
