"""Trainer internals behind train_minimal.py: cache, sampling, model, loop, export, out-of-fold scoring."""
