"""Reward implementations, one file per family. Importing this package is cheap; families import torch."""
